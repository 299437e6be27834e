"""What the driver's parts (partitions/lending.py, leasing.py) use of `Driver`: its state,
declared once for the type checker. Annotations only: `Driver.__init__` sets every one."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapter.receive_area import RingWords
    from hypervisor.layout import PartitionLayout


class DriverParts:
    network_id: int
    physical: memoryview  # the segment
    words: memoryview  # the segment as 8-byte words (receive_area.words)
    by_id: dict[int, PartitionLayout]
    rings: dict[int, RingWords]
    _mutex: threading.Lock  # the driver's one request slot
