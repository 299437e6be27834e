"""Segment layout (hypervisor/layout.py): page-aligned, non-overlapping, after the control area."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.receive_area import HEAD_OFFSET, SLEEPING_OFFSET, TAIL_OFFSET
from hypervisor.config import MIN_MEMORY, MIN_RECEIVE, PAGE_SIZE, MachineConfig, PartitionConfig
from hypervisor.layout import (
    RING_CONTROL_SIZE,
    SEQ_ENTRY_SIZE,
    PartitionLayout,
    SegmentLayout,
    page_align,
    plan_segment,
)

KiB = 1024
MiB = 1024 * KiB


@st.composite
def partition(draw, index: int) -> PartitionConfig:
    pages = draw(st.integers(MIN_MEMORY // PAGE_SIZE, 64))
    receive_pages = draw(st.integers(MIN_RECEIVE // PAGE_SIZE, pages - 1))
    return PartitionConfig(f"p{index}", index + 1, pages * PAGE_SIZE,
                           receive_pages * PAGE_SIZE)


@st.composite
def configs(draw, max_partitions: int = 12) -> MachineConfig:
    n = draw(st.integers(1, max_partitions))
    parts = [draw(partition(i)) for i in range(n)]
    ids = draw(st.lists(st.integers(1, 65535), min_size=n, max_size=n, unique=True))
    parts = [PartitionConfig(p.name, nid, p.memory_size, p.receive_size)
             for p, nid in zip(parts, ids, strict=True)]
    return MachineConfig(partitions=tuple(parts))


def test_page_align():
    assert [page_align(n) for n in (0, 1, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 1)] == [
        0, PAGE_SIZE, PAGE_SIZE, PAGE_SIZE, 2 * PAGE_SIZE]


def test_a_known_layout():
    config = MachineConfig(partitions=(PartitionConfig("a", 5, 1 * MiB, 256 * KiB),
                                       PartitionConfig("b", 9, 2 * MiB, 64 * KiB)))
    layout = plan_segment(config)
    a, b = layout.partitions
    assert layout.seq_table == 2 * RING_CONTROL_SIZE
    assert layout.control_size == PAGE_SIZE
    assert (a.index, a.network_id, a.base, a.size) == (0, 5, PAGE_SIZE, MiB)
    assert (a.receive_base, a.receive_size, a.receive_offset) == (
        PAGE_SIZE + MiB - 256 * KiB, 256 * KiB, MiB - 256 * KiB)
    assert (b.index, b.base, b.control) == (1, PAGE_SIZE + MiB, RING_CONTROL_SIZE)
    assert layout.total_size == PAGE_SIZE + 3 * MiB
    assert layout.seq_address(1, 0) == layout.seq_table + 2 * SEQ_ENTRY_SIZE
    assert layout.by_id() == {5: a, 9: b}


def test_head_and_tail_sit_on_different_cache_lines():
    # the block's words are receive_area's (the commit protocol); the space is the layout's
    assert TAIL_OFFSET - HEAD_OFFSET >= 64
    assert SLEEPING_OFFSET + 8 <= RING_CONTROL_SIZE


@given(configs())
def test_layout_invariants(config):
    layout = plan_segment(config)
    n = len(config.partitions)
    parts = layout.partitions
    assert [p.network_id for p in parts] == [c.network_id for c in config.partitions]
    assert [p.index for p in parts] == list(range(n))
    # the control area: ring blocks, then the n*n sequence table, page-aligned, at 0
    assert layout.control_size % PAGE_SIZE == 0
    assert layout.seq_table >= n * RING_CONTROL_SIZE
    assert layout.seq_table + n * n * SEQ_ENTRY_SIZE <= layout.control_size
    controls = sorted(p.control for p in parts)
    assert all(b - a >= RING_CONTROL_SIZE for a, b in zip(controls, controls[1:], strict=False))
    assert all(0 <= c and c + RING_CONTROL_SIZE <= layout.seq_table for c in controls)
    seqs = {layout.seq_address(s, d) for s in range(n) for d in range(n)}
    assert len(seqs) == n * n
    assert all(layout.seq_table <= a and a + SEQ_ENTRY_SIZE <= layout.control_size
               for a in seqs)
    # regions: page-aligned, after the control area, disjoint, inside the segment
    previous_end = layout.control_size
    for p, c in zip(parts, config.partitions, strict=True):
        assert p.base % PAGE_SIZE == 0 and p.size == c.memory_size
        assert p.base >= previous_end
        previous_end = p.base + p.size
        assert p.receive_size == c.receive_size
        assert p.base < p.receive_base and p.receive_base + p.receive_size == p.base + p.size
        assert p.receive_base % PAGE_SIZE == 0
        assert p.receive_offset == p.size - p.receive_size
    assert previous_end <= layout.total_size and layout.total_size % PAGE_SIZE == 0
    spans = sorted((p.base, p.base + p.size) for p in parts)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:],
                                                                     strict=False))


@given(configs(max_partitions=4))
def test_layout_survives_the_boot_block(config):
    layout = plan_segment(config)
    assert SegmentLayout.from_dict(layout.to_dict()) == layout
    for p in layout.partitions:
        assert PartitionLayout.from_dict(p.to_dict()) == p


def test_one_partition_machine():
    layout = plan_segment(MachineConfig(partitions=(PartitionConfig("x", 1, MIN_MEMORY,
                                                                    MIN_RECEIVE),)))
    (p,) = layout.partitions
    assert p.base == layout.control_size == PAGE_SIZE
    assert layout.total_size == PAGE_SIZE + MIN_MEMORY


@pytest.mark.parametrize("n", [1, 8, 64])
def test_control_area_grows_with_the_sequence_table(n):
    parts = tuple(PartitionConfig(f"p{i}", i + 1, MIN_MEMORY, MIN_RECEIVE) for i in range(n))
    layout = plan_segment(MachineConfig(partitions=parts))
    # ring blocks, then the committed and the delivered per-pair tables
    assert layout.control_size == page_align(n * RING_CONTROL_SIZE + 2 * n * n * SEQ_ENTRY_SIZE)
    last = layout.delivered_address(n - 1, n - 1)
    assert layout.seq_address(n - 1, n - 1) < layout.delivered_address(0, 0)
    assert last + SEQ_ENTRY_SIZE <= layout.control_size
    assert layout.partitions[0].base == layout.control_size
