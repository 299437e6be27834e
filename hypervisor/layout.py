"""Where everything lives in the physical-memory segment (pure arithmetic, no I/O).

Segment layout, all offsets page-aligned:

    [0, control_size)            control area, owned by the hypervisor, never part of any region:
                                 one RING_CONTROL_SIZE block per partition (the destination's ring
                                 state, guarded by that destination's lock), then the per-pair
                                 sequence table (last sequence number committed, adapter-written),
                                 then the per-pair delivered table (last sequence number consumed,
                                 receiver-written before it frees the space).
    [base_i, base_i + size_i)    partition i's region (its "real storage"); the last
                                 receive_size bytes of it are its receive area (a ring of records).

Invariant: regions never overlap each other or the control area, and every region starts on a
page boundary. The adapter's translation table and the drivers' view of peers are both built
from the `PartitionLayout` list computed here, so there is exactly one source of truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hypervisor.config import DEFAULT_RECEIVE_WINDOW, PAGE_SIZE, MachineConfig

CACHE_LINE = 64
# One control block per destination ring: two cache lines, one written under the destination's
# lock, one by the receiver (so producer and consumer do not false-share). What each word of
# the block means is the commit protocol's business and is defined where it is used
# (adapter/receive_area.py); the platform only carves the space.
RING_CONTROL_SIZE = 2 * CACHE_LINE
SEQ_ENTRY_SIZE = 8


def page_align(n: int) -> int:
    """Round `n` up to a whole number of pages."""
    return -(-n // PAGE_SIZE) * PAGE_SIZE


@dataclass(frozen=True)
class PartitionLayout:
    """One partition's place in the segment: everything a translation needs."""

    index: int
    name: str
    network_id: int
    base: int
    size: int
    receive_base: int  # physical address of the receive area (inside the region)
    receive_size: int
    control: int  # physical address of this partition's ring control block
    window: int = DEFAULT_RECEIVE_WINDOW  # its ring's records start over past this (ring.py)

    @property
    def receive_offset(self) -> int:
        """Offset of the receive area within the partition's own region."""
        return self.receive_base - self.base

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PartitionLayout:
        return cls(**data)


@dataclass(frozen=True)
class SegmentLayout:
    partitions: tuple[PartitionLayout, ...]
    control_size: int
    seq_table: int  # physical address of the n*n per-pair sequence table
    total_size: int

    def seq_address(self, src_index: int, dst_index: int) -> int:
        """Address of the u64 'last committed sequence number' for the pair src -> dst."""
        n = len(self.partitions)
        return self.seq_table + (src_index * n + dst_index) * SEQ_ENTRY_SIZE

    def delivered_address(self, src_index: int, dst_index: int) -> int:
        """Address of the u64 'last sequence number consumed by dst from src'."""
        n = len(self.partitions)
        return self.seq_table + (n * n + src_index * n + dst_index) * SEQ_ENTRY_SIZE

    def by_id(self) -> dict[int, PartitionLayout]:
        return {p.network_id: p for p in self.partitions}

    def to_dict(self) -> dict:
        return {
            "partitions": [p.to_dict() for p in self.partitions],
            "control_size": self.control_size,
            "seq_table": self.seq_table,
            "total_size": self.total_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SegmentLayout:
        return cls(
            partitions=tuple(PartitionLayout.from_dict(p) for p in data["partitions"]),
            control_size=int(data["control_size"]),
            seq_table=int(data["seq_table"]),
            total_size=int(data["total_size"]),
        )


def plan_segment(config: MachineConfig) -> SegmentLayout:
    """Carve the segment: control area first, then each partition's page-aligned region."""
    n = len(config.partitions)
    seq_table = n * RING_CONTROL_SIZE
    control_size = page_align(seq_table + 2 * n * n * SEQ_ENTRY_SIZE)
    cursor = control_size
    parts = []
    for index, p in enumerate(config.partitions):
        base = cursor
        parts.append(
            PartitionLayout(
                index=index,
                name=p.name,
                network_id=p.network_id,
                base=base,
                size=p.memory_size,
                receive_base=base + p.memory_size - p.receive_size,
                receive_size=p.receive_size,
                control=index * RING_CONTROL_SIZE,
                window=p.receive_window,
            )
        )
        cursor = base + page_align(p.memory_size)
    return SegmentLayout(tuple(parts), control_size, seq_table, cursor)
