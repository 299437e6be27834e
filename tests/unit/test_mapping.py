"""What a partition maps and opens (partitions/mapping.py): the pure part, plus mprotect on an
anonymous mapping of this process."""

from __future__ import annotations

import mmap

import pytest
from hypothesis import given

from hypervisor.config import PAGE_SIZE, MachineConfig, PartitionConfig
from hypervisor.layout import plan_segment
from partitions.mapping import hidden_ranges, hide, semaphores_needed
from tests.unit.test_layout import configs

KiB = 1024


def three() -> MachineConfig:
    return MachineConfig(partitions=(PartitionConfig("a", 1, 64 * KiB, 16 * KiB),
                                     PartitionConfig("b", 7, 32 * KiB, 8 * KiB),
                                     PartitionConfig("c", 9, 16 * KiB, 4 * KiB)))


def test_hidden_are_the_peers_send_spaces():
    layout = plan_segment(three())
    a, b, c = layout.partitions
    assert hidden_ranges(layout, 1, PAGE_SIZE) == [(b.base, b.receive_base),
                                                   (c.base, c.receive_base)]
    assert hidden_ranges(layout, 7, PAGE_SIZE) == [(a.base, a.receive_base),
                                                   (c.base, c.receive_base)]


def test_larger_pages_hide_only_whole_pages():
    """On 16 KiB pages a 4 KiB-aligned range shrinks inward; one with no whole page goes."""
    layout = plan_segment(three())
    a, b, c = layout.partitions
    page = 16 * KiB
    assert all(s % page == 0 and e % page == 0 for s, e in hidden_ranges(layout, 9, page))
    for start, end in hidden_ranges(layout, 9, page):
        assert any(p.base <= start < end <= p.receive_base for p in (a, b))


@given(configs())
def test_never_hides_what_a_partition_needs(config):
    """Never the control area, the partition's own region or any receive area; all of every
    peer's private memory on 4 KiB pages."""
    layout = plan_segment(config)
    for me in layout.partitions:
        ranges = hidden_ranges(layout, me.network_id, PAGE_SIZE)
        assert ranges == [(p.base, p.receive_base) for p in layout.partitions if p is not me]
        for start, end in ranges:
            assert start >= layout.control_size
            for p in layout.partitions:
                assert end <= p.receive_base or start >= p.receive_base + p.receive_size
            assert end <= me.base or start >= me.base + me.size


def test_semaphores_needed():
    assert semaphores_needed(7, [1, 7, 9]) == ([1, 9], [1, 7, 9])


def test_hide_refuses_a_range_outside_the_mapping():
    with mmap.mmap(-1, 4 * mmap.PAGESIZE) as m:
        view = memoryview(m)
        with pytest.raises(ValueError, match=rf"range \[0, {5 * mmap.PAGESIZE}\) is outside"):
            hide(view, [(0, 5 * mmap.PAGESIZE)])
        hide(view, [(mmap.PAGESIZE, 2 * mmap.PAGESIZE)])  # the rest stays usable
        view[0] = 1
        view[3 * mmap.PAGESIZE] = 2
        assert (view[0], view[3 * mmap.PAGESIZE]) == (1, 2)
        view.release()  # hide() kept no export: the mapping can close


def test_hide_names_a_range_the_kernel_refuses():
    with mmap.mmap(-1, 2 * mmap.PAGESIZE) as m:
        view = memoryview(m)
        with pytest.raises(OSError, match=rf"mprotect \[1, {mmap.PAGESIZE}\)"):
            hide(view, [(1, mmap.PAGESIZE)])  # not page-aligned: EINVAL
        view.release()
