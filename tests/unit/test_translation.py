"""The adapter's translate-and-check step (adapter/translation.py): every bound, every ID."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import (
    BadCount,
    BadOffset,
    DestinationDown,
    OutOfBounds,
    OwnNetworkId,
    TooLarge,
    UnknownNetworkId,
    XpmoveError,
)
from adapter.ring import max_payload
from adapter.translation import PartitionState, TranslationTable
from hypervisor.config import MachineConfig, PartitionConfig
from hypervisor.layout import plan_segment

KiB = 1024
MiB = 1024 * KiB
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)

CONFIG = MachineConfig(partitions=(
    PartitionConfig("a", 1, 1 * MiB, 256 * KiB),
    PartitionConfig("b", 2, 2 * MiB, 64 * KiB),
    PartitionConfig("c", 70, 64 * KiB, 8 * KiB),
))
LAYOUT = plan_segment(CONFIG)
BY_ID = LAYOUT.by_id()
SIZE_1 = BY_ID[1].size


@pytest.fixture
def table() -> TranslationTable:
    return TranslationTable(LAYOUT.partitions)


def test_a_good_move_gets_the_physical_source_address(table):
    t = table.translate(1, 2, 4096, 100)
    assert t.src == BY_ID[1] and t.dst == BY_ID[2]
    assert t.src_address == BY_ID[1].base + 4096
    assert t.count == 100


def test_the_last_byte_of_the_region_is_in_bounds(table):
    assert table.translate(1, 2, SIZE_1 - 1, 1).src_address == BY_ID[1].base + SIZE_1 - 1
    assert table.translate(1, 2, SIZE_1 - 100, 100).count == 100
    assert table.translate(1, 2, 0, max_payload(BY_ID[2].receive_size)).src_address == \
        BY_ID[1].base


@pytest.mark.parametrize("src,dst,offset,count,error,message", [
    (1, 2, 0, 0, BadCount, "count 0 must be > 0"),
    (1, 2, 0, -1, BadCount, "count -1 must be > 0"),
    (1, 2, 0, I64_MIN, BadCount, f"count {I64_MIN} must be > 0"),
    (1, 2, -1, 10, BadOffset, "source offset -1 must be >= 0"),
    (1, 2, I64_MIN, 10, BadOffset, f"source offset {I64_MIN} must be >= 0"),
    (1, 2, SIZE_1, 1, OutOfBounds, f"source range [{SIZE_1}, {SIZE_1 + 1}) exceeds region "
                                   f"size {SIZE_1}"),
    (1, 2, SIZE_1 - 99, 100, OutOfBounds, f"[{SIZE_1 - 99}, {SIZE_1 + 1})"),
    # values that would overflow a signed 64-bit sum: explicit integer arithmetic, no wrapping
    (1, 2, I64_MAX, I64_MAX, OutOfBounds, f"[{I64_MAX}, {2 * I64_MAX})"),
    (1, 2, I64_MAX, 1, OutOfBounds, f"[{I64_MAX}, {I64_MAX + 1})"),
    (1, 2, 1, I64_MAX, OutOfBounds, f"[1, {I64_MAX + 1})"),
    (1, 2, 0, I64_MAX, OutOfBounds, f"[0, {I64_MAX})"),
    (1, 2, 2**64 - 1, 1, OutOfBounds, f"[{2**64 - 1}, {2**64})"),
    (1, 1, 0, 10, OwnNetworkId, "destination network ID 1 is the sender's own"),
    (1, 3, 0, 10, UnknownNetworkId, "unknown destination network ID 3"),
    (1, -1, 0, 10, UnknownNetworkId, "unknown destination network ID -1"),
    (1, 0, 0, 10, UnknownNetworkId, "unknown destination network ID 0"),
    (1, I64_MIN, 0, 10, UnknownNetworkId, f"unknown destination network ID {I64_MIN}"),
    (1, 2**16 + 2, 0, 10, UnknownNetworkId, f"unknown destination network ID {2**16 + 2}"),
    (9, 2, 0, 10, UnknownNetworkId, "unknown network ID 9"),
    (-1, 2, 0, 10, UnknownNetworkId, "unknown network ID -1"),
    # the destination's receive area bounds the record, whatever the source could supply
    (2, 70, 0, max_payload(8 * KiB) + 1, TooLarge,
     f"count {max_payload(8 * KiB) + 1} exceeds receive area payload limit "
     f"{max_payload(8 * KiB)}"),
    (1, 2, 0, 64 * KiB, TooLarge, f"limit {max_payload(64 * KiB)}"),
])
def test_bad_moves_are_named(table, src, dst, offset, count, error, message):
    with pytest.raises(error) as info:
        table.translate(src, dst, offset, count)
    assert message in str(info.value)


def test_errors_are_checked_in_a_fixed_order(table):
    """The first fault in this order is the one reported, so the message is deterministic."""
    with pytest.raises(UnknownNetworkId):  # unknown destination beats everything below
        table.translate(1, 5, -1, -1)
    with pytest.raises(OwnNetworkId):
        table.translate(1, 1, -1, -1)
    with pytest.raises(BadCount):
        table.translate(1, 2, -1, 0)
    with pytest.raises(BadOffset):
        table.translate(1, 2, -1, I64_MAX)
    with pytest.raises(OutOfBounds):
        table.translate(1, 2, SIZE_1, I64_MAX)  # out of the source before too large


def test_dead_destination_is_down_and_retryable_until_it_comes_back(table):
    table.set_state(2, PartitionState.DEAD)
    with pytest.raises(DestinationDown, match="destination network ID 2 is dead") as info:
        table.translate(1, 2, 0, 10)
    assert info.value.retryable
    assert table.translate(1, 70, 0, 10).dst == BY_ID[70]  # others unaffected
    table.set_state(2, PartitionState.ACTIVE)
    assert table.translate(1, 2, 0, 10).dst == BY_ID[2]


def test_a_dead_destination_still_reports_a_bad_request_first(table):
    table.set_state(2, PartitionState.DEAD)
    with pytest.raises(BadCount):
        table.translate(1, 2, 0, 0)


def test_unknown_ids_in_the_table_api(table):
    assert 1 in table and 3 not in table and -1 not in table
    with pytest.raises(UnknownNetworkId, match="unknown network ID 3"):
        table.entry(3)
    with pytest.raises(UnknownNetworkId):
        table.set_state(3, PartitionState.DEAD)
    assert [e.layout for e in table.entries()] == list(LAYOUT.partitions)


I64 = st.integers(I64_MIN, I64_MAX)
EDGES = st.sampled_from([0, 1, -1, I64_MAX, I64_MIN, SIZE_1, SIZE_1 - 1, SIZE_1 + 1, 4096,
                         max_payload(256 * KiB), max_payload(64 * KiB)])
IDS = st.sampled_from([1, 2, 70, 0, -1, 3, 71, I64_MAX, I64_MIN])


@given(src=IDS, dst=IDS, offset=st.one_of(EDGES, I64), count=st.one_of(EDGES, I64),
       dead=st.sets(st.sampled_from([1, 2, 70])))
def test_translate_accepts_only_moves_inside_both_bounds(src, dst, offset, count, dead):
    """Whatever comes over the pipe: either a typed error, or a move that is provably in bounds."""
    table = TranslationTable(LAYOUT.partitions)
    for nid in dead:
        table.set_state(nid, PartitionState.DEAD)
    try:
        t = table.translate(src, dst, offset, count)
    except XpmoveError:
        return
    assert src in BY_ID and dst in BY_ID and src != dst and dst not in dead
    assert 0 <= offset and 0 < count and offset + count <= BY_ID[src].size
    assert count <= max_payload(BY_ID[dst].receive_size)
    assert BY_ID[src].base <= t.src_address < t.src_address + count <= \
        BY_ID[src].base + BY_ID[src].size
