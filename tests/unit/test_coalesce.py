"""Which records of a proxy ring one grant commits (cluster/coalesce.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.ring import (
    KIND_RECORD,
    KIND_RUN,
    MAX_RUN_RECORDS,
    RUN_DESCRIPTOR,
    RecordView,
    run_size,
)
from cluster.coalesce import groups


def records(*specs: tuple[int, int, int]) -> list[RecordView]:
    """(kind, source, length) each, laid one after the other from counter 0."""
    out, tail = [], 0
    for seq, (kind, source, length) in enumerate(specs):
        size = 24 + -(-length // 8) * 8
        out.append(RecordView(tail, source, seq, length, tail + size, kind))
        tail += size
    return out


def test_one_sources_records_of_one_length_share_a_grant_across_another_sources() -> None:
    rs = records((KIND_RECORD, 1, 1024), (KIND_RECORD, 2, 1024), (KIND_RECORD, 1, 1024),
                 (KIND_RECORD, 2, 1024), (KIND_RECORD, 1, 1024))
    assert groups(rs, 1 << 20) == [[rs[0], rs[2], rs[4]], [rs[1], rs[3]]]


def test_another_length_or_a_run_ends_the_group_and_a_run_goes_alone() -> None:
    rs = records((KIND_RECORD, 1, 64), (KIND_RECORD, 1, 65), (KIND_RUN, 1, 200),
                 (KIND_RECORD, 1, 200), (KIND_RECORD, 1, 200))
    assert groups(rs, 1 << 20) == [[rs[0]], [rs[1]], [rs[2]], [rs[3], rs[4]]]


def test_the_group_stays_within_the_largest_record_and_the_run_limit() -> None:
    rs = records(*[(KIND_RECORD, 1, 1000)] * 10)
    assert groups(rs, run_size(4, 1000))[0] == rs[:4]
    assert groups(rs, run_size(4, 1000) - 1)[0] == rs[:3]
    many = records(*[(KIND_RECORD, 1, 8)] * (MAX_RUN_RECORDS + 5))
    assert [len(g) for g in groups(many, 1 << 30)] == [MAX_RUN_RECORDS, 5]


KINDS = st.sampled_from([KIND_RECORD, KIND_RECORD, KIND_RECORD, KIND_RUN])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KINDS, st.integers(1, 3), st.sampled_from([64, 64, 1000])),
                max_size=60),
       st.integers(run_size(2, 1000), 1 << 16))
def test_groups_keep_every_record_once_and_each_sources_order(specs, largest) -> None:
    rs = records(*specs)
    out = groups(rs, largest)
    flat = [r for g in out for r in g]
    assert sorted(flat, key=lambda r: r.position) == rs  # each record once
    for source in {r.source_id for r in rs}:  # each source's records in their order
        mine = [r for r in flat if r.source_id == source]
        assert mine == [r for r in rs if r.source_id == source]
    for g in out:
        assert len({r.source_id for r in g}) == 1
        if len(g) > 1:
            assert all(r.kind == KIND_RECORD and r.length == g[0].length for r in g)
            assert len(g) <= MAX_RUN_RECORDS and run_size(len(g), g[0].length) <= largest


def test_run_size_is_the_descriptor_and_padded_packets() -> None:
    assert run_size(3, 1000) == RUN_DESCRIPTOR.size + 3 * 1000
    assert run_size(2, 1001) == RUN_DESCRIPTOR.size + 2 * 1008
