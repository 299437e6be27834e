"""The adapter's translation table: network ID -> physical base, size, receive area, state.

Pure code (Fig 11 step 1103 / Fig 12 step 1203): it turns (source ID, source offset, count,
destination ID) into physical addresses, checking every bound with explicit integer
arithmetic *before* any copy. Python slicing clamps silently, so nothing here relies on it.
The destination's own bound (room in its receive area) is checked under its lock by
`adapter.ring.reserve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from adapter.errors import (
    BadCount,
    BadOffset,
    DestinationDown,
    DestinationGone,
    OutOfBounds,
    OwnNetworkId,
    TooLarge,
    UnknownNetworkId,
)
from adapter.ring import max_payload
from hypervisor.layout import PartitionLayout


class PartitionState(Enum):
    ACTIVE = "active"
    DEAD = "dead"  # not running; a restart may bring it back (DestinationDown, retryable)
    GONE = "gone"  # ended for good: the hypervisor will not restart it (DestinationGone)


@dataclass
class TranslationEntry:
    layout: PartitionLayout
    state: PartitionState = PartitionState.ACTIVE


class Translation(NamedTuple):
    """A checked move: physical source address plus both table entries."""

    src: PartitionLayout
    dst: PartitionLayout
    src_address: int
    count: int  # type: ignore[assignment]  # a field named like tuple.count, on purpose


class TranslationTable:
    def __init__(self, layouts: list[PartitionLayout] | tuple[PartitionLayout, ...]):
        self._entries = {p.network_id: TranslationEntry(p) for p in layouts}

    def __contains__(self, network_id: int) -> bool:
        return network_id in self._entries

    def entry(self, network_id: int) -> TranslationEntry:
        try:
            return self._entries[network_id]
        except KeyError:
            raise UnknownNetworkId(f"unknown network ID {network_id}") from None

    def entries(self) -> list[TranslationEntry]:
        return list(self._entries.values())

    def set_state(self, network_id: int, state: PartitionState) -> None:
        self.entry(network_id).state = state

    def translate(self, src_id: int, dst_id: int, offset: int, count: int) -> Translation:
        """Look up both partitions and check the source range; raise a typed error if bad."""
        src = self.entry(src_id).layout
        if dst_id not in self._entries:
            raise UnknownNetworkId(f"unknown destination network ID {dst_id}")
        if dst_id == src_id:
            raise OwnNetworkId(f"destination network ID {dst_id} is the sender's own")
        if count <= 0:
            raise BadCount(f"count {count} must be > 0")
        if offset < 0:
            raise BadOffset(f"source offset {offset} must be >= 0")
        if offset + count > src.size:
            raise OutOfBounds(
                f"source range [{offset}, {offset + count}) exceeds region size {src.size}"
            )
        dst_entry = self._entries[dst_id]
        if count > max_payload(dst_entry.layout.receive_size):
            raise TooLarge(
                f"count {count} exceeds receive area payload limit "
                f"{max_payload(dst_entry.layout.receive_size)}"
            )
        if dst_entry.state is PartitionState.GONE:
            raise DestinationGone(f"destination network ID {dst_id} has ended and will not be "
                                  f"restarted")
        if dst_entry.state is not PartitionState.ACTIVE:
            raise DestinationDown(f"destination network ID {dst_id} is {dst_entry.state.value}")
        return Translation(src, dst_entry.layout, src.base + offset, count)
