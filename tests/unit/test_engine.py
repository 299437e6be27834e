"""The adapter's request engine (adapter/engine.py) without processes: a bytearray is the
segment, counters are the locks and doorbells, `now` is driven by hand.

The test plays every other party itself: the sender (bytes in its region), the Fig 12 driver
(MVXL, publish head, free the lock), the receiver (reads records up to head) and the crash.
"""

from __future__ import annotations

import pytest

from adapter import receive_area
from adapter.engine import Engine, EngineError
from adapter.errors import Status, error_for
from adapter.locks import LockState
from adapter.moves import mvxl
from adapter.protocol import (
    REPLY_HEADER,
    Move,
    Op,
    Request,
    Result,
    decode_reply_header,
    decode_results,
)
from adapter.ring import (
    HEADER_SIZE,
    KIND_RECORD,
    KIND_RUN,
    RECORD_HEADER,
    RUN_DESCRIPTOR,
    align,
    max_payload,
    next_record,
    record_size,
)
from hypervisor.config import PAGE_SIZE, MachineConfig, PartitionConfig
from hypervisor.layout import PartitionLayout, SegmentLayout, plan_segment

TIMEOUT = 1.0  # the engine's lock timeout, in the seconds of the hand-driven clock
IDS = (1, 2, 3)


class FakeLock:
    """A binary semaphore as a counter (the engine's Lock protocol)."""

    def __init__(self) -> None:
        self.value = 1

    def try_acquire(self) -> bool:
        if self.value > 0:
            self.value -= 1
            return True
        return False

    def release(self) -> None:
        self.value += 1


class FakeBell:
    def __init__(self) -> None:
        self.rings = 0

    def release(self) -> None:
        self.rings += 1


class Machine:
    """One engine over one bytearray segment, plus the test's views of it."""

    def __init__(self, ids: tuple[int, ...] = IDS) -> None:
        self.ids = ids
        parts = tuple(PartitionConfig(f"p{i}", i, 16 * PAGE_SIZE, 4 * PAGE_SIZE) for i in ids)
        self.layout: SegmentLayout = plan_segment(MachineConfig(partitions=parts))
        self.mem = memoryview(bytearray(self.layout.total_size))
        self.words = receive_area.words(self.mem)
        self.by_id = self.layout.by_id()
        self.locks = {i: FakeLock() for i in ids}
        self.bells = {i: FakeBell() for i in ids}
        self.engine = self.fresh_engine()
        self.engine.recover(0.0)
        for i in ids:
            self.engine.attach(i)
        self._ids = iter(range(1, 1 << 30))

    def fresh_engine(self) -> Engine:
        """A new engine over the same memory and locks (a restarted adapter)."""
        return Engine(self.mem, self.layout, self.locks, self.bells, TIMEOUT)

    def p(self, network_id: int) -> PartitionLayout:
        return self.by_id[network_id]

    def put(self, network_id: int, offset: int, data: bytes) -> None:
        """The sender writes into its own region."""
        base = self.p(network_id).base + offset
        self.mem[base:base + len(data)] = data

    def submit(self, src: int, op: int, moves: list[tuple[int, int, int]], now: float = 0.0,
               engine: Engine | None = None) -> tuple[int, tuple[Result, ...]] | None:
        """Submit from `src` (moves as (dst, offset, count)); (frame status, results) or None."""
        request = Request(op, next(self._ids), tuple(Move(src, d, o, c) for d, o, c in moves))
        frame = (engine or self.engine).submit(src, request, now)
        return None if frame is None else decode(frame)

    def head(self, dst: int) -> int:
        return receive_area.read_head(self.words, self.p(dst))

    def seq(self, src: int, dst: int) -> int:
        return receive_area.read_seq(self.words,
                                     self.layout.seq_address(self.p(src).index, self.p(dst).index))

    def records(self, dst: int) -> list[tuple[int, int, int, bytes]]:
        """What the receiver of `dst` sees: (kind, source ID, seq, payload) up to head."""
        d = self.p(dst)
        tail, head, out = receive_area.read_tail(self.words, d), self.head(dst), []
        while (rv := next_record(tail, head, d.receive_size,
                                 lambda pos: RECORD_HEADER.unpack_from(self.mem,
                                                                       d.receive_base + pos))):
            start = d.receive_base + rv.payload_position
            out.append((rv.kind, rv.source_id, rv.seq, bytes(self.mem[start:start + rv.length])))
            tail = rv.next_tail
        return out

    def drive(self, result: Result, dst: int, publish: bool = True) -> None:
        """The Fig 12 driver: MVXL, publish the commit, prove the release, free the lock."""
        mvxl(self.mem, result.dst_address, result.src_address, result.count)
        if publish:
            receive_area.publish_head(self.words, self.p(dst).control, result.commit_value)
        self.free(dst)

    def free(self, dst: int) -> None:
        """The holder's free: the grant's token as `released`, then the post."""
        receive_area.prove_release(self.words, receive_area.RingWords.of(self.p(dst)))
        self.locks[dst].release()

    def lock_state(self, dst: int, engine: Engine | None = None) -> str:
        return (engine or self.engine).book.state(dst).value


def decode(frame: bytes) -> tuple[int, tuple[Result, ...]]:
    _, _, status, n = decode_reply_header(frame[:REPLY_HEADER.size])
    return status, decode_results(frame, n, REPLY_HEADER.size)


def ok(reply) -> tuple[Result, ...]:
    assert reply is not None, "parked"
    status, results = reply
    assert status == Status.OK
    assert all(r.status == Status.OK for r in results), results
    return results


def run_bytes(packets: list[bytes]) -> bytes:
    """A multiple-write run as the sender lays it out: descriptor, then each packet padded."""
    length = len(packets[0])
    body = b"".join(p + bytes(align(length) - length) for p in packets)
    return RUN_DESCRIPTOR.pack(len(packets), length) + body


@pytest.fixture
def m() -> Machine:
    return Machine()


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


# -- Fig 12: the driver moves -------------------------------------------------------------
def test_fig12_grant_returns_lock_and_addresses_then_settles_on_the_next_try(m):
    m.put(1, 64, b"granted bytes")
    (r,) = ok(m.submit(1, Op.GRANT, [(2, 64, 13)]))
    dst = m.p(2)
    assert (r.src_address, r.dst_address, r.count) == (m.p(1).base + 64,
                                                        dst.receive_base + HEADER_SIZE, 13)
    assert r.commit_value == record_size(13) and r.seq == 1
    assert m.locks[2].value == 0 and m.lock_state(2) == "granted"
    assert receive_area.read_holder(m.words, dst) == 1
    assert m.head(2) == 0 and m.records(2) == []  # nothing visible before the driver commits
    m.drive(r, 2)
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"granted bytes")]
    assert m.lock_state(2) == "granted"  # the engine learns of the free on its next try
    stats = m.engine.stats()
    assert stats["locks"]["2"] == "free"
    assert "grants_abandoned" not in stats["counters"]
    assert stats["counters"]["grants"] == 1
    assert receive_area.read_holder(m.words, dst) == 0
    m.put(1, 0, b"next")
    assert ok(m.submit(1, Op.GRANT, [(2, 0, 4)]))[0].seq == 2


def test_fig12_a_freed_but_uncommitted_grant_is_rolled_back(m):
    m.put(1, 0, b"never published")
    (r,) = ok(m.submit(1, Op.GRANT, [(2, 0, 15)]))
    m.drive(r, 2, publish=False)
    m.engine.settle_finished_grants()
    assert m.engine.counters["grants_abandoned"] == 1
    assert m.records(2) == [] and m.seq(1, 2) == 0
    assert ok(m.submit(1, Op.GRANT, [(2, 0, 15)]))[0].seq == 1


def test_stats_name_each_held_grant_its_holder_and_age(m):
    m.put(1, 0, b"held")
    (r,) = ok(m.submit(1, Op.GRANT, [(2, 0, 4)], now=100.0))
    assert m.engine.stats()["grants"] == {}  # no clock, no ages
    assert m.engine.stats(now=112.5)["grants"] == {"2": {"holder": 1, "age_s": 12.5,
                                                         "lease": False}}
    m.drive(r, 2)  # freed: settled by stats, no longer held
    assert m.engine.stats(now=113.0)["grants"] == {}


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


# -- a busy lock: parked, then served or timed out ----------------------------------------
def test_a_request_on_a_busy_lock_parks_and_times_out_at_its_deadline(m):
    m.put(3, 0, b"holder")
    ok(m.submit(3, Op.GRANT, [(2, 0, 6)], now=0.0))  # partition 3 holds 2's lock
    m.put(1, 0, b"waiter")
    assert m.submit(1, Op.MOVE, [(2, 0, 6)], now=10.0) is None
    assert m.engine.has_parked() and m.engine.is_parked(1)
    assert m.engine.retry_parked(10.5) == []
    assert m.engine.retry_parked(10.999) == []
    assert m.engine.stats()["lock_waits"]["2"] == 1  # counted once, not once per retry
    ((who, frame),) = m.engine.retry_parked(11.0)
    status, (r,) = decode(frame)
    assert who == 1 and status == Status.OK
    assert (r.status, r.detail) == (Status.LOCK_TIMEOUT, 1000)
    assert m.engine.errors["lock_timeout"] == 1
    assert not m.engine.has_parked()
    assert m.lock_state(2) == "granted"  # the holder's grant is untouched


def test_a_parked_request_is_served_once_the_holder_frees_the_lock(m):
    m.put(3, 0, b"holder")
    (g,) = ok(m.submit(3, Op.GRANT, [(2, 0, 6)]))
    m.put(1, 0, b"waiter")
    assert m.submit(1, Op.MOVE, [(2, 0, 6)], now=0.1) is None
    m.drive(g, 2)
    ((who, frame),) = m.engine.retry_parked(0.2)
    (r,) = ok(decode(frame))
    assert who == 1 and r.seq == 1
    assert m.records(2) == [(KIND_RECORD, 3, 1, b"holder"), (KIND_RECORD, 1, 1, b"waiter")]
    assert m.lock_state(2) == "free" and m.locks[2].value == 1


def test_a_vector_takes_all_its_locks_or_none(m):
    ok(m.submit(1, Op.GRANT, [(3, 0, 8)]))  # 3's lock is busy
    assert m.submit(2, Op.MOVE, [(1, 0, 8), (3, 0, 8)]) is None
    assert m.locks[1].value == 1 and m.lock_state(1) == "free"  # 1's lock given back


def test_a_second_request_while_one_is_parked_is_a_shell_bug(m):
    ok(m.submit(3, Op.GRANT, [(2, 0, 8)]))
    assert m.submit(1, Op.MOVE, [(2, 0, 8)]) is None
    with pytest.raises(EngineError, match="network ID 1 submitted request"):
        m.submit(1, Op.MOVE, [(2, 0, 8)])


def test_a_detached_partition_loses_its_parked_request(m):
    ok(m.submit(3, Op.GRANT, [(2, 0, 8)]))
    assert m.submit(1, Op.MOVE, [(2, 0, 8)]) is None
    m.engine.detach(1)
    assert not m.engine.has_parked()
    assert m.engine.retry_parked(100.0) == []


# -- bad requests change nothing ----------------------------------------------------------
@pytest.mark.parametrize("src, move, status, detail, counter", [
    (1, Move(1, 99, 0, 8), Status.UNKNOWN_ID, 0, "unknown_id"),
    (1, Move(1, 2, 16 * PAGE_SIZE - 4, 8), Status.OUT_OF_BOUNDS, 16 * PAGE_SIZE, "out_of_bounds"),
    (1, Move(1, 2, -8, 8), Status.BAD_OFFSET, 0, "bad_offset"),
    (1, Move(1, 2, 0, 0), Status.BAD_COUNT, 0, "bad_count"),
    (1, Move(1, 1, 0, 8), Status.OWN_ID, 0, "own_id"),
    (1, Move(3, 2, 0, 8), Status.SOURCE_MISMATCH, 1, "source_mismatch"),
    (1, Move(1, 2, 0, 4 * PAGE_SIZE), Status.TOO_LARGE, max_payload(4 * PAGE_SIZE), "too_large"),
])
@pytest.mark.parametrize("op", [Op.MOVE, Op.GRANT])
def test_a_bad_move_fails_by_name_and_changes_nothing(m, op, src, move, status, detail, counter):
    m.put(1, 0, b"payload!" * 8)
    before = bytes(m.mem)
    frame = m.engine.submit(src, Request(op, 7, (move,)), 0.0)
    frame_status, (r,) = decode(frame)
    assert frame_status == Status.OK
    assert (r.status, r.detail) == (status, detail)
    assert bytes(m.mem) == before
    assert m.engine.errors[counter] == 1
    assert all(lock.value == 1 for lock in m.locks.values())
    assert m.engine.book.all_free()


def test_a_bad_move_in_a_vector_fails_alone(m):
    m.put(1, 0, b"good")
    status, (bad, good) = m.submit(1, Op.MOVE, [(99, 0, 4), (2, 0, 4)])
    assert bad.status == Status.UNKNOWN_ID and good.status == Status.OK
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"good")]


def test_an_unknown_op_gets_a_malformed_reply(m):
    before = bytes(m.mem)
    frame_status, results = decode(m.engine.submit(1, Request(42, 5, (Move(1, 2, 0, 8),)), 0.0))
    assert frame_status == Status.MALFORMED and results == ()
    assert m.engine.errors["malformed"] == 1 and bytes(m.mem) == before


def test_a_dead_destination_is_down(m):
    m.engine.detach(2)
    status, (r,) = m.submit(1, Op.MOVE, [(2, 0, 8)])
    assert r.status == Status.DESTINATION_DOWN
    m.engine.attach(2)
    ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))


def test_stray_releases_of_a_lock_are_absorbed_and_counted(m):
    m.locks[2].release()  # someone posted a lock nobody granted them
    ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))
    assert m.locks[2].value == 1
    assert m.engine.errors["stray_lock_release"] == 1


# -- a stray post while a lock is granted (issue 12 item 1) ------------------------------
def test_a_stray_post_while_granted_does_not_end_the_grant(m):
    m.put(3, 0, b"holder writes slowly")
    (g,) = ok(m.submit(3, Op.GRANT, [(2, 0, 20)]))
    m.locks[2].release()  # anyone can open the semaphore by name and post it
    m.put(1, 0, b"second writer?")
    assert m.submit(1, Op.GRANT, [(2, 0, 14)], now=0.1) is None  # parked: still granted to 3
    assert m.engine.errors["stray_lock_release"] == 1
    assert m.lock_state(2) == "granted" and m.engine.book.record(2).grant.holder == 3
    assert receive_area.read_holder(m.words, m.p(2)) == 3
    assert m.engine.retry_parked(0.2) == []  # the unit the stray post added is gone
    assert m.engine.stats()["locks"]["2"] == "granted"
    assert "grants_abandoned" not in m.engine.counters
    m.drive(g, 2)  # the real holder finishes: its proof, then its post
    ((who, frame),) = m.engine.retry_parked(0.3)
    (r,) = ok(decode(frame))
    assert who == 1 and r.seq == 1
    m.drive(r, 2)
    assert m.engine.stats()["locks"]["2"] == "free" and m.locks[2].value == 1
    assert m.records(2) == [(KIND_RECORD, 3, 1, b"holder writes slowly"),
                            (KIND_RECORD, 1, 1, b"second writer?")]
    assert "grants_abandoned" not in m.engine.counters


def test_many_stray_posts_while_granted_are_all_absorbed(m):
    (g,) = ok(m.submit(3, Op.GRANT, [(2, 0, 8)]))
    for _ in range(5):
        m.locks[2].release()
    assert m.submit(1, Op.MOVE, [(2, 0, 8)], now=0.0) is None
    assert m.engine.errors["stray_lock_release"] == 5
    assert m.locks[2].value == 0 and m.lock_state(2) == "granted"
    m.drive(g, 2)
    assert len(m.engine.retry_parked(0.1)) == 1
    assert m.locks[2].value == 1 and m.lock_state(2) == "free"


def test_a_post_with_the_previous_grants_token_is_stray(m):
    (g,) = ok(m.submit(3, Op.GRANT, [(2, 0, 8)]))
    m.drive(g, 2)
    m.engine.settle_finished_grants()
    (g2,) = ok(m.submit(3, Op.GRANT, [(2, 0, 8)]))
    m.locks[2].release()  # `released` still holds the first grant's token
    m.engine.settle_finished_grants()
    assert m.lock_state(2) == "granted" and m.engine.errors["stray_lock_release"] == 1
    m.drive(g2, 2)
    m.engine.settle_finished_grants()
    assert m.lock_state(2) == "free" and [s for _, _, s, _ in m.records(2)] == [1, 2]


def test_a_recovered_grant_whose_holder_released_settles(m):
    (g,) = ok(m.submit(1, Op.GRANT, [(2, 0, 9)]))
    m.drive(g, 2)  # the holder proved and posted; the adapter died before noticing
    engine = m.fresh_engine()
    engine.recover(1.0)
    assert engine.stats()["locks"]["2"] == "free"
    assert "grants_abandoned" not in engine.counters and m.seq(1, 2) == 1


def test_a_stray_post_on_a_recovered_grant_is_absorbed(m):
    (g,) = ok(m.submit(1, Op.GRANT, [(2, 0, 9)]))
    engine = m.fresh_engine()
    engine.recover(1.0)
    m.locks[2].release()  # stray
    assert engine.stats()["locks"]["2"] == "granted"
    assert engine.errors["stray_lock_release"] == 1
    m.drive(g, 2)
    assert engine.stats()["locks"]["2"] == "free"
    assert "grants_abandoned" not in engine.counters
    assert m.records(2)[0][2] == 1


def test_a_holder_that_dies_after_a_stray_post_is_taken_back(m):
    m.put(1, 0, b"torn")
    ok(m.submit(1, Op.GRANT, [(2, 0, 4)]))
    m.locks[2].release()
    m.engine.settle_finished_grants()  # eats the stray unit
    m.engine.detach(1)
    assert m.lock_state(2) == "free" and m.locks[2].value == 1
    assert m.engine.counters["grants_abandoned"] == 1 and m.seq(1, 2) == 0


# -- a grant holder crashes ---------------------------------------------------------------
def test_a_grant_holder_that_dies_gives_the_lock_back_and_its_record_stays_invisible(m):
    m.put(1, 0, b"a" * 8)
    ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))  # seq 1 committed
    head = m.head(2)
    m.put(1, 0, b"torn record")
    (r,) = ok(m.submit(1, Op.GRANT, [(2, 0, 11)]))
    mvxl(m.mem, r.dst_address, r.src_address, r.count)  # the payload is in; then the crash
    assert m.seq(1, 2) == 2
    m.engine.detach(1)
    assert m.locks[2].value == 1 and m.lock_state(2) == "free"
    assert m.engine.counters["locks_reclaimed"] == 1
    assert m.engine.counters["grants_abandoned"] == 1
    assert m.engine.counters["connections_closed"] == 1
    assert m.head(2) == head and len(m.records(2)) == 1  # the torn record is invisible
    assert m.seq(1, 2) == 1  # its sequence number given back
    assert receive_area.read_holder(m.words, m.p(2)) == 0
    m.engine.attach(1)
    m.put(1, 0, b"again")
    assert ok(m.submit(1, Op.MOVE, [(2, 0, 5)]))[0].seq == 2


def test_a_run_grant_holder_that_dies_gives_back_all_its_sequence_numbers(m):
    data = run_bytes([b"p" * 8] * 40)
    m.put(1, 0, data)
    ok(m.submit(1, Op.GRANT_RUN, [(2, 0, len(data))]))
    assert m.seq(1, 2) == 40
    m.engine.detach(1)
    assert m.seq(1, 2) == 0 and m.records(2) == []
    assert m.locks[2].value == 1


# -- the adapter crashes; a fresh engine recovers -----------------------------------------
class Crash(BaseException):
    """The adapter process dying mid-move (not an Exception: nothing in the engine runs)."""


def test_recovery_rolls_back_a_commit_the_dead_adapter_left_half_done(m, monkeypatch):
    m.put(1, 0, b"committed")
    ok(m.submit(1, Op.MOVE, [(2, 0, 9)]))
    head = m.head(2)

    def crash(*args):
        raise Crash

    monkeypatch.setattr("adapter.commits.mvxl", crash)
    with pytest.raises(Crash):
        m.submit(1, Op.MOVE, [(2, 0, 9)])
    monkeypatch.undo()
    assert m.locks[2].value == 0 and m.seq(1, 2) == 2  # the dead adapter's state
    engine = m.fresh_engine()
    engine.recover(5.0)
    assert engine.counters["locks_reclaimed"] == 1
    assert engine.counters["grants_abandoned"] == 1
    assert m.locks[2].value == 1 and engine.book.all_free()
    assert m.head(2) == head and m.seq(1, 2) == 1
    assert ok(m.submit(1, Op.MOVE, [(2, 0, 9)], engine=engine))[0].seq == 2
    assert [seq for _, _, seq, _ in m.records(2)] == [1, 2]


def test_a_first_start_recovers_nothing(m):
    engine = m.fresh_engine()
    engine.recover(0.0)
    assert engine.stats()["counters"] == {}
    assert engine.book.all_free()


def test_a_grant_found_at_recovery_is_kept_until_its_holder_finishes(m):
    m.put(1, 0, b"in flight")
    (r,) = ok(m.submit(1, Op.GRANT, [(2, 0, 9)]))
    engine = m.fresh_engine()  # the adapter restarted while partition 1 held the grant
    engine.recover(1.0)
    assert m.lock_state(2, engine) == "granted"
    assert engine.book.record(2).grant.recovered
    m.drive(r, 2)
    assert engine.stats()["locks"]["2"] == "free"
    assert "grants_abandoned" not in engine.counters
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"in flight")]


def test_a_recovered_grant_ends_when_its_holder_sends_a_new_request(m):
    ok(m.submit(1, Op.GRANT, [(2, 0, 9)]))
    engine = m.fresh_engine()
    engine.recover(1.0)
    for i in IDS:
        engine.attach(i)
    (r,) = ok(m.submit(1, Op.MOVE, [(2, 0, 9)], engine=engine))  # so it is not moving
    assert r.seq == 1  # the abandoned grant's number given back first
    assert engine.counters["locks_reclaimed"] == 1
    assert engine.counters["grants_abandoned"] == 1


def test_a_recovered_grant_of_a_partition_that_is_gone_is_taken_back_at_start(m):
    ok(m.submit(1, Op.GRANT, [(2, 0, 9)]))
    engine = m.fresh_engine()
    engine.recover(1.0, connected=[2, 3])
    assert engine.book.state(2) is LockState.FREE and m.locks[2].value == 1
    assert engine.counters["grants_abandoned"] == 1 and m.seq(1, 2) == 0
    status, (r,) = m.submit(2, Op.MOVE, [(1, 0, 8)], engine=engine)
    assert r.status == Status.DESTINATION_DOWN


# -- every word read from the segment is checked (issue 12 items 2-4) ---------------------
def pending_word(m: Machine, dst: int, k: int) -> int:
    """The word index of the pending commit's k-th word (0 head, 1 source, 2 first seq)."""
    return receive_area.RingWords.of(m.p(dst)).pending + k


def refused(m: Machine, src: int, dst: int, op: int = Op.MOVE, engine: Engine | None = None
            ) -> Result:
    m.put(src, 0, b"refused?")
    status, (r,) = m.submit(src, op, [(dst, 0, 8)], engine=engine)
    assert status == Status.OK
    return r


def others_still_move(m: Machine, bad: int, engine: Engine | None = None) -> None:
    """Every pair not involving destination `bad` moves, in both flows."""
    e = engine or m.engine
    for src in IDS:
        for dst in IDS:
            if src == dst or dst == bad:
                continue
            for op in (Op.MOVE, Op.GRANT):
                m.put(src, 0, b"innocent")
                (r,) = ok(m.submit(src, op, [(dst, 0, 8)], engine=e))
                if op == Op.GRANT:
                    m.drive(r, dst)
                    e.settle_finished_grants()
    assert set(e.stats()["locks"].values()) == {"free"}


@pytest.mark.parametrize("word, value, named", [
    (2, 0, "pending_first_seq 0"),
    (2, 2**64 - 1, "pending_first_seq 18446744073709551615"),
    (1, 99, "pending_source 99"),
    (1, 1, "pending_source 1"),  # the destination itself
    (0, 2**64 - 8, "pending_head 18446744073709551608"),
    (0, 12, "pending_head 12"),  # not aligned
])
def test_a_bad_pending_word_fails_its_destination_not_the_adapter(m, word, value, named):
    """Issue 12 item 2: a word of the pending commit is poisoned while a driver holds a grant,
    then the holder dies: the adapter survives (detach and a restarted adapter's recover),
    destination 2 is refused by name, every other destination keeps working."""
    m.put(1, 0, b"a" * 8)
    ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))
    ok(m.submit(1, Op.GRANT, [(2, 0, 8)]))
    m.words[pending_word(m, 2, word)] = value
    m.engine.detach(1)  # the holder died: the take-back settles the poisoned commit
    assert m.lock_state(2) == "free" and m.locks[2].value == 1
    assert named in m.engine.corrupt[2]
    m.engine.attach(1)
    r = refused(m, 1, 2)
    assert (r.status, r.detail) == (Status.RING_CORRUPT, 0)
    assert refused(m, 3, 2, Op.GRANT).status == Status.RING_CORRUPT
    assert m.engine.errors["ring_corrupt"] == 2
    others_still_move(m, 2)
    engine = m.fresh_engine()  # and every restarted adapter survives its recovery too
    engine.recover(1.0)
    for i in IDS:
        engine.attach(i)
    assert named in engine.corrupt[2]
    assert refused(m, 3, 2, engine=engine).status == Status.RING_CORRUPT
    others_still_move(m, 2, engine)


def test_a_bad_holder_word_fails_its_destination_at_recovery(m):
    receive_area.set_holder(m.words, m.p(2), 77)
    engine = m.fresh_engine()
    engine.recover(1.0)
    assert "holder 77" in engine.corrupt[2] and engine.book.all_free()
    assert refused(m, 1, 2, engine=engine).status == Status.RING_CORRUPT
    others_still_move(m, 2, engine)


def test_a_repaired_destination_is_served_again_after_clear_corrupt(m):
    ok(m.submit(1, Op.GRANT, [(2, 0, 8)]))
    m.words[pending_word(m, 2, 2)] = 0
    m.engine.detach(1)
    m.engine.attach(1)
    assert refused(m, 1, 2).status == Status.RING_CORRUPT
    m.words[pending_word(m, 2, 0)] = m.head(2)  # the operator repairs the commit's words
    receive_area.write_seq(m.words, m.layout.seq_address(m.p(1).index, m.p(2).index), 0)
    m.engine.clear_corrupt(2)
    m.put(1, 0, b"repaired")
    assert ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))[0].seq == 1


def test_a_poisoned_sequence_word_fails_the_destination_not_the_sender(m):
    """Issue 12 item 3: the pair's sequence word is 2**64-1. The sender's next well-formed
    request gets RING_CORRUPT for that move (no exception: the shell would close its pipe), its
    moves to other destinations work, in the same request and after."""
    receive_area.write_seq(m.words, m.layout.seq_address(m.p(1).index, m.p(2).index), 2**64 - 1)
    m.put(1, 0, b"innocent")
    for op in (Op.MOVE, Op.GRANT, Op.MOVE):
        status, (bad, good) = m.submit(1, op, [(2, 0, 8), (3, 0, 8)])
        assert status == Status.OK
        assert bad.status == Status.RING_CORRUPT and good.status == Status.OK
        if op == Op.GRANT:
            m.drive(good, 3)
            m.engine.settle_finished_grants()
    assert "18446744073709551615" in m.engine.corrupt[2]
    assert m.seq(1, 2) == 2**64 - 1 and m.records(2) == []
    assert [s for _, _, s, _ in m.records(3)] == [1, 2, 3]
    others_still_move(m, 2)


@pytest.mark.parametrize("head, tail", [
    (12, 0),  # not aligned
    (0, 8),  # tail past head
    (2**64 - 8, 0),  # more than the ring in use
])
def test_impossible_counters_fail_the_destination(m, head, tail):
    receive_area.publish_head(m.words, m.p(2).control, head)
    receive_area.publish_tail(m.words, m.p(2).control, tail)
    r = refused(m, 1, 2, Op.GRANT)
    assert r.status == Status.RING_CORRUPT and m.lock_state(2) == "free"
    assert f"head {head} tail {tail}" in m.engine.corrupt[2]
    assert refused(m, 3, 2).status == Status.RING_CORRUPT
    others_still_move(m, 2)


def test_a_plausible_but_forged_head_fails_the_destination(m):
    """Issue 12 item 4: a head that passes the counter checks but is not what the last commit
    published: the senders get RING_CORRUPT instead of moves into a ring the receiver cannot
    read."""
    m.put(1, 0, b"a" * 8)
    ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))
    receive_area.publish_head(m.words, m.p(2).control, m.head(2) + 64)
    m.put(1, 0, b"refused?")
    before = bytes(m.mem)
    r = refused(m, 1, 2)
    assert r.status == Status.RING_CORRUPT and bytes(m.mem) == before
    assert "pending_head" in m.engine.corrupt[2]
    others_still_move(m, 2)


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


def test_a_retired_destination_is_gone_not_down(m):
    """Dead (a restart may come): DESTINATION_DOWN, retryable. Retired by the hypervisor (no
    restart will come): DESTINATION_GONE, not retryable. A later attach makes it live again."""
    m.put(1, 0, b"a" * 8)
    m.engine.detach(2)
    (r,) = m.submit(1, Op.MOVE, [(2, 0, 8)])[1]
    assert r.status == Status.DESTINATION_DOWN
    m.engine.retire(2)
    m.engine.detach(2)  # a late EOF does not make it merely down again
    (r,) = m.submit(1, Op.MOVE, [(2, 0, 8)])[1]
    assert r.status == Status.DESTINATION_GONE
    assert not error_for(r.status, src_id=1, dst_id=2, offset=0, count=8, detail=0).retryable
    m.engine.attach(2)
    assert ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))[0].seq == 1


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


def test_a_remote_partitions_state_is_what_its_host_says(m):
    """A partition of another host (its proxy's connection here stays up) is down, gone or
    active again as its host's fabric says: the same answers as for a local one."""
    from adapter.translation import PartitionState

    m.put(1, 0, b"a" * 8)
    m.engine.set_remote_state(2, PartitionState.DEAD)
    assert m.submit(1, Op.MOVE, [(2, 0, 8)])[1][0].status == Status.DESTINATION_DOWN
    m.engine.set_remote_state(2, PartitionState.GONE)
    assert m.submit(1, Op.MOVE, [(2, 0, 8)])[1][0].status == Status.DESTINATION_GONE
    m.engine.set_remote_state(2, PartitionState.ACTIVE)
    assert ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))[0].seq == 1
