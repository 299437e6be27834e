"""The engine's moves (adapter/engine.py, over engine_machine.py's bytearray segment): Fig 11
moves the adapter makes, multiple-write runs in both flows, and what moves leave in the
segment's writer word and the per-partition stats."""

from __future__ import annotations

from adapter import receive_area
from adapter.errors import Status
from adapter.protocol import Op
from adapter.ring import (
    HEADER_SIZE,
    KIND_RECORD,
    KIND_RUN,
    RUN_DESCRIPTOR,
    max_payload,
    record_size,
)
from tests.unit.engine_machine import Machine, ok, run_bytes


# -- Fig 11: the adapter moves ------------------------------------------------------------
def test_fig11_move_lands_after_a_header_and_head_is_published(m):
    payloads = [b"first", b"second packet", b"x" * 100]
    for k, data in enumerate(payloads):
        m.put(1, 1000 * k, data)
        (r,) = ok(m.submit(1, Op.MOVE, [(2, 1000 * k, len(data))]))
        dst = m.p(2)
        assert r.seq == k + 1
        assert r.src_address == m.p(1).base + 1000 * k
        assert r.dst_address == dst.receive_base + sum(record_size(len(p)) for p in payloads[:k]) \
            + HEADER_SIZE
        assert r.commit_value == m.head(2)
    assert m.head(2) == sum(record_size(len(p)) for p in payloads)
    assert m.records(2) == [(KIND_RECORD, 1, k + 1, p) for k, p in enumerate(payloads)]
    assert m.seq(1, 2) == 3
    assert m.locks[2].value == 1 and m.lock_state(2) == "free"
    assert m.engine.counters["moves"] == 3
    assert m.engine.counters["bytes"] == sum(map(len, payloads))


def test_fig11_sequence_numbers_are_per_pair(m):
    m.put(1, 0, b"a" * 8)
    m.put(3, 0, b"c" * 8)
    assert ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))[0].seq == 1
    assert ok(m.submit(3, Op.MOVE, [(2, 0, 8)]))[0].seq == 1
    assert ok(m.submit(1, Op.MOVE, [(3, 0, 8)]))[0].seq == 1
    assert ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))[0].seq == 2
    assert [(src, seq) for _, src, seq, _ in m.records(2)] == [(1, 1), (3, 1), (1, 2)]


def test_fig11_rings_the_doorbell_only_when_the_receiver_sleeps(m):
    m.put(1, 0, b"z" * 16)
    ok(m.submit(1, Op.MOVE, [(2, 0, 16)]))
    assert m.bells[2].rings == 0
    receive_area.set_sleeping(m.words, m.p(2), True)
    ok(m.submit(1, Op.MOVE, [(2, 0, 16)]))
    assert m.bells[2].rings == 1


def test_fig11_vector_groups_by_destination_in_one_commit_each(m):
    m.put(1, 0, b"0123456789abcdef")
    (a, b, c) = ok(m.submit(1, Op.MOVE, [(3, 0, 4), (2, 4, 4), (3, 8, 8)]))
    assert (a.seq, b.seq, c.seq) == (1, 1, 2)
    assert m.records(3) == [(KIND_RECORD, 1, 1, b"0123"), (KIND_RECORD, 1, 2, b"89abcdef")]
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"4567")]
    assert all(lock.value == 1 for lock in m.locks.values())


def test_fig11_destination_full_is_retryable_and_names_the_free_bytes(m):
    dst = m.p(2)
    big = max_payload(dst.receive_size)
    m.put(1, 0, bytes(range(256)) * (big // 256))
    ok(m.submit(1, Op.MOVE, [(2, 0, big)]))
    ok(m.submit(1, Op.MOVE, [(2, 0, big)]))  # two halves: the ring is full
    before = bytes(m.mem)
    status, (r,) = m.submit(1, Op.MOVE, [(2, 0, big)])
    assert status == Status.OK and r.status == Status.DESTINATION_FULL
    assert r.detail == dst.receive_size - m.head(2)
    assert bytes(m.mem) == before
    assert m.engine.errors["destination_full"] == 1
    assert m.locks[2].value == 1 and m.seq(1, 2) == 2


# -- multiple-write runs, both flows ------------------------------------------------------
def test_fig11_run_is_one_record_with_the_checked_descriptor(m):
    packets = [bytes([k]) * 10 for k in range(5)]
    data = run_bytes(packets)
    m.put(1, 128, data)
    (r,) = ok(m.submit(1, Op.MOVE_RUN, [(2, 128, len(data))]))
    assert (r.detail, r.seq, r.count) == (5, 1, len(data))
    ((kind, src, seq, payload),) = m.records(2)
    assert (kind, src, seq, payload) == (KIND_RUN, 1, 1, data)
    assert m.seq(1, 2) == 5
    assert m.engine.counters["moves"] == 5
    m.put(1, 0, b"after")
    assert ok(m.submit(1, Op.MOVE, [(2, 0, 5)]))[0].seq == 6


def test_fig12_run_grants_the_packets_past_the_descriptor(m):
    packets = [bytes([k]) * 7 for k in range(3)]
    data = run_bytes(packets)
    m.put(1, 0, data)
    (r,) = ok(m.submit(1, Op.GRANT_RUN, [(2, 0, len(data))]))
    skip = RUN_DESCRIPTOR.size
    assert (r.detail, r.seq) == (3, 1)
    assert r.src_address == m.p(1).base + skip
    assert r.dst_address == m.p(2).receive_base + HEADER_SIZE + skip
    assert r.count == len(data) - skip
    # the descriptor in the ring is the adapter's, written before the grant
    assert RUN_DESCRIPTOR.unpack_from(m.mem, r.dst_address - skip) == (3, 7)
    m.put(1, 0, RUN_DESCRIPTOR.pack(999, 1))  # the sender lies afterwards: too late
    m.drive(r, 2)
    assert m.records(2) == [(KIND_RUN, 1, 1, data)]
    assert m.seq(1, 2) == 3


def test_a_run_whose_descriptor_does_not_tile_it_is_refused(m):
    data = bytearray(run_bytes([b"abcd"] * 4))
    RUN_DESCRIPTOR.pack_into(data, 0, 5, 4)
    m.put(1, 0, bytes(data))
    before = bytes(m.mem)
    status, (r,) = m.submit(1, Op.MOVE_RUN, [(2, 0, len(data))])
    assert r.status == Status.BAD_COUNT
    assert bytes(m.mem) == before
    assert m.engine.errors["bad_count"] == 1


# -- what moves leave in the stats and the segment -----------------------------------------
def test_stats_say_per_partition_bytes_and_the_errors_of_its_requests(m):
    m.put(1, 0, b"a" * 100)
    m.put(3, 0, b"c" * 40)
    ok(m.submit(1, Op.MOVE, [(2, 0, 100)]))
    ok(m.submit(3, Op.MOVE, [(2, 0, 40)]))
    m.submit(3, Op.MOVE, [(99, 0, 8)])  # unknown destination: an error of partition 3's
    per = m.engine.stats()["partitions"]
    assert per["1"] == {"bytes_out": 100, "bytes_in": 0, "errors": {}}
    assert per["2"] == {"bytes_out": 0, "bytes_in": 140, "errors": {}}
    assert per["3"] == {"bytes_out": 40, "bytes_in": 0, "errors": {"unknown_id": 1}}
    assert m.engine.errors["unknown_id"] == 1


def test_the_writer_word_names_the_one_partition_that_wrote_then_mixed():
    """Noted before a reservation's first byte (moves and grants alike), sticky once mixed;
    a move that reserved nothing notes nothing."""
    m = Machine()
    ring = receive_area.RingWords.of(m.p(2))
    assert m.words[ring.writer] == 0  # a fresh segment: nobody
    ok(m.submit(1, Op.MOVE, [(2, 0, 64)]))
    assert m.words[ring.writer] == 1
    _, (refused,) = m.submit(3, Op.MOVE, [(2, 0, m.p(2).receive_size)])  # no room: nothing
    assert refused.status != Status.OK and m.words[ring.writer] == 1
    ok(m.submit(1, Op.MOVE, [(2, 0, 64)]))
    assert m.words[ring.writer] == 1
    (granted,) = ok(m.submit(3, Op.GRANT, [(2, 0, 64)]))
    assert m.words[ring.writer] == receive_area.MIXED
    m.drive(granted, 2)
    ok(m.submit(1, Op.MOVE, [(2, 0, 64)]))
    assert m.words[ring.writer] == receive_area.MIXED
