"""What the driver's parts (partitions/lending.py, leasing.py, requesting.py) use of
`Driver`: its state, declared once for the type checker. Annotations only: `Driver.__init__`
sets every one, and `Requesting` defines the round trip they all make."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adapter.protocol import Move, Result
    from adapter.receive_area import RingWords
    from hypervisor.layout import PartitionLayout
    from partitions.posting import Posted


class DriverParts:
    network_id: int
    physical: memoryview  # the segment
    words: memoryview  # the segment as 8-byte words (receive_area.words)
    by_id: dict[int, PartitionLayout]
    rings: dict[int, RingWords]
    _mutex: threading.Lock  # the driver's one request slot

    if TYPE_CHECKING:
        def _survive_restart(self, op: int, moves: Sequence[Move], reply_by: float | None = None,
                             posted: Posted | None = None) -> tuple[Result, ...]: ...
