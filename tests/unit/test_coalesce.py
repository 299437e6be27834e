"""Which records of a proxy ring one grant commits (cluster/coalesce.py)."""

from __future__ import annotations

from adapter.ring import KIND_RECORD, KIND_RUN, MAX_RUN_RECORDS, RUN_DESCRIPTOR, RecordView
from cluster.coalesce import coalesce, run_size


def records(*specs: tuple[int, int, int]) -> list[RecordView]:
    """(kind, source, length) each, laid one after the other from counter 0."""
    out, tail = [], 0
    for seq, (kind, source, length) in enumerate(specs):
        size = 24 + -(-length // 8) * 8
        out.append(RecordView(tail, source, seq, length, tail + size, kind))
        tail += size
    return out


def follow(rs: list[RecordView]):
    by_tail = {r.position: r for r in rs}
    return lambda r: by_tail.get(r.next_tail)


def test_consecutive_records_of_one_source_and_length_share_a_grant() -> None:
    rs = records((KIND_RECORD, 1, 1024), (KIND_RECORD, 1, 1024), (KIND_RECORD, 1, 1024),
                 (KIND_RECORD, 2, 1024), (KIND_RECORD, 1, 1024))
    assert coalesce(rs[0], follow(rs), 1 << 20) == rs[:3]
    assert coalesce(rs[3], follow(rs), 1 << 20) == [rs[3]]


def test_another_length_or_a_run_ends_the_group_and_a_run_goes_alone() -> None:
    rs = records((KIND_RECORD, 1, 64), (KIND_RECORD, 1, 65), (KIND_RUN, 1, 200),
                 (KIND_RECORD, 1, 200))
    assert coalesce(rs[0], follow(rs), 1 << 20) == [rs[0]]
    assert coalesce(rs[2], follow(rs), 1 << 20) == [rs[2]]


def test_the_group_stays_within_the_largest_record_and_the_run_limit() -> None:
    rs = records(*[(KIND_RECORD, 1, 1000)] * 10)
    largest = run_size(4, 1000)
    assert coalesce(rs[0], follow(rs), largest) == rs[:4]
    assert coalesce(rs[0], follow(rs), run_size(4, 1000) - 1) == rs[:3]
    many = records(*[(KIND_RECORD, 1, 8)] * (MAX_RUN_RECORDS + 5))
    assert len(coalesce(many[0], follow(many), 1 << 30)) == MAX_RUN_RECORDS


def test_run_size_is_the_descriptor_and_padded_packets() -> None:
    assert run_size(3, 1000) == RUN_DESCRIPTOR.size + 3 * 1000
    assert run_size(2, 1001) == RUN_DESCRIPTOR.size + 2 * 1008
