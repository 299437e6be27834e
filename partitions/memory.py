"""A partition's user view of memory: its own region and nothing else (Invariant 1).

User code gets a `PartitionView`, never the segment. Every access is checked with explicit
arithmetic (adapter.moves.check_range) before any slice is taken, because a memoryview slice
past the end clamps silently instead of failing.
"""

from __future__ import annotations

from adapter.moves import check_range, mvcl
from hypervisor.layout import PartitionLayout


class PartitionView:
    def __init__(self, physical: memoryview, layout: PartitionLayout):
        if layout.base < 0 or layout.base + layout.size > len(physical):
            raise ValueError(f"region [{layout.base}, {layout.base + layout.size}) "
                             f"is outside the segment of {len(physical)} bytes")
        self.layout = layout
        self.size = layout.size
        self._region = physical[layout.base:layout.base + layout.size]

    def buffer(self, offset: int, count: int) -> memoryview:
        """A writable window [offset, offset + count) of the region, checked."""
        check_range(offset, count, self.size, f"partition {self.layout.network_id}")
        return self._region[offset:offset + count]

    def read(self, offset: int, count: int) -> bytes:
        return bytes(self.buffer(offset, count))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.buffer(offset, len(data))[:] = data

    def mvcl(self, destination: int, source: int, count: int) -> None:
        """MVCL: move between two of this partition's own virtual addresses."""
        mvcl(self._region, destination, source, count)

    def release(self) -> None:
        self._region.release()
