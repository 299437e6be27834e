"""Leases (standing grants) without processes: the adapter's engine (adapter/engine.py) and the
driver's half (partitions/leasing.py) over one bytearray segment, the engine answering the
driver's requests directly. The test plays the other senders, the receiver, the crashes and
the restarted adapter.
"""

from __future__ import annotations

import threading

import pytest

from adapter import receive_area
from adapter.engine import Engine
from adapter.errors import DestinationFull, RingCorrupt, Status, XpmoveError
from adapter.protocol import Move, Op, Request
from adapter.ring import KIND_RECORD
from partitions import leasing
from partitions.leasing import HeldLease, LeaseLost, Leasing
from tests.unit.engine_machine import IDS, TIMEOUT, FakeBell, Machine, decode, ok


class LeaseMachine(Machine):
    """engine_machine's Machine, its engine given a recall semaphore (a counter) per partition."""

    def fresh_engine(self) -> Engine:
        self.recalls = getattr(self, "recalls", {i: FakeBell() for i in self.ids})
        return Engine(self.mem, self.layout, self.locks, self.bells, TIMEOUT, self.recalls)

    def ring(self, dst: int) -> receive_area.RingWords:
        return receive_area.RingWords.of(self.p(dst))


@pytest.fixture(autouse=True)
def no_fresh_hold(monkeypatch):
    """The keeper gives back a recalled lease at once, as these tests expect; the hold of a
    fresh lease until its first commit has its own test (it sets FIRST_COMMIT_S itself)."""
    monkeypatch.setattr(leasing, "FIRST_COMMIT_S", 0.0)


class EngineDriver(Leasing):
    """The driver's lease methods over the test's segment; its requests go straight to the
    machine's engine (the pipes and the adapter's shell are not what is tested here)."""

    def __init__(self, m: LeaseMachine, network_id: int):
        self.m, self.network_id = m, network_id
        self.physical, self.words, self.by_id = m.mem, m.words, m.by_id
        self.rings = {i: m.ring(i) for i in m.ids}
        self.locks, self.bells, self.recall = m.locks, m.bells, None
        mine = receive_area.seq_words(m.layout)[m.p(network_id).index]
        self._seq_words = {i: mine[m.p(i).index] for i in m.ids}
        self._mutex, self._closing = threading.Lock(), False
        self._leases: dict[int, HeldLease] = {}
        self.lent_leases: set[int] = set()
        self._keeper = threading.Thread()  # never started: the test answers recalls itself
        self.now = 0.0

    def _take_slot(self, wait: float):
        self._mutex.acquire()

    def room(self, dst_id: int):
        return None  # no room semaphores: a refusal for room is retried after a back-off

    @staticmethod
    def _slot_wait(reply_by):
        return -1.0

    def _survive_restart(self, op, moves, reply_by=None):
        request = Request(op, 1, tuple(moves))
        frame = self.m.engine.submit(self.network_id, request, self.now)
        assert frame is not None, "parked: the test expected the lock free"
        status, results = decode(frame)
        assert status == Status.OK
        return results

    def start_keeper(self) -> None:
        pass


@pytest.fixture
def m() -> LeaseMachine:
    return LeaseMachine()


def sent(outcome):
    assert not isinstance(outcome, XpmoveError), outcome
    return outcome


def test_a_lease_commits_records_with_no_request_and_keeps_the_lock(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    ring = m.ring(2)
    assert lease.held and m.lock_state(2) == "granted" and m.locks[2].value == 0
    assert receive_area.read_holder(m.words, m.p(2)) == 1
    assert receive_area.lease_token(m.words, ring) == lease.token == m.words[ring.token]
    requests = m.engine.counters["requests"]
    seqs = [sent(d.lease_send(lease, memoryview(b"packet %d" % i))) for i in range(3)]
    assert seqs == [1, 2, 3] and m.seq(1, 2) == 3
    assert m.records(2) == [(KIND_RECORD, 1, i + 1, b"packet %d" % i) for i in range(3)]
    assert m.engine.counters["requests"] == requests  # no request per packet
    assert m.lock_state(2) == "granted"  # still leased


def test_the_lease_rings_the_doorbell_only_when_the_receiver_sleeps(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    sent(d.lease_send(lease, memoryview(b"awake")))
    assert m.bells[2].rings == 0
    receive_area.set_sleeping(m.words, m.p(2), True)
    sent(d.lease_send(lease, memoryview(b"asleep")))
    assert m.bells[2].rings == 1


def test_a_waiting_sender_recalls_the_lease_once_and_is_served_when_it_comes_back(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    sent(d.lease_send(lease, memoryview(b"leased")))
    assert m.engine.stats(now=5.0)["grants"] == {}  # nobody waits: the holder may keep it
    m.put(3, 0, b"other")
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=10.0) is None  # parked behind the lease
    ring = m.ring(2)
    assert receive_area.recalled(m.words, ring) == lease.token
    assert m.recalls[1].rings == 1
    assert m.engine.retry_parked(10.5) == []  # still leased: no second recall
    assert m.recalls[1].rings == 1
    assert m.engine.stats(now=12.0)["grants"] == {"2": {"holder": 1, "age_s": 2.0,
                                                        "lease": True}}
    assert d.answer_recalls() == (1, 0)  # the keeper's answer
    assert not lease.held and m.locks[2].value == 1
    ((network_id, frame),) = m.engine.retry_parked(12.5)
    (r,) = ok(decode(frame))
    assert network_id == 3 and r.seq == 1
    assert receive_area.lease_token(m.words, ring) == 0 == receive_area.recalled(m.words, ring)
    assert [rec[1:3] for rec in m.records(2)] == [(1, 1), (3, 1)]
    assert isinstance(d.lease_send(lease, memoryview(b"late")), LeaseLost)  # nothing written
    assert len(m.records(2)) == 2


def test_a_send_under_a_recalled_lease_commits_its_packet_then_gives_it_back(m):
    """Each grant carries at least one packet: a send that finds its lease recalled commits,
    then gives it back (two holders cannot hand a lease back and forth with nothing sent)."""
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=1.0) is None
    assert sent(d.lease_send(lease, memoryview(b"x"))) == 1
    assert not lease.held and m.locks[2].value == 1
    assert isinstance(d.lease_send(lease, memoryview(b"y")), LeaseLost)  # nothing written
    assert len(m.engine.retry_parked(1.1)) == 1  # the waiting sender went next
    assert [r[1:3] for r in m.records(2)] == [(1, 1), (3, 1)]


class Clock:
    """The keeper's clock for FIRST_COMMIT_S (partitions.leasing.monotonic), moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(leasing, "monotonic", clock)
    monkeypatch.setattr(leasing, "FIRST_COMMIT_S", 0.001)  # the real hold, on this clock
    return clock


def test_the_keeper_leaves_a_fresh_leases_recall_to_its_first_commit(m, clock):
    """The adapter recalls a lease as soon as another request waits; the holder's keeper does
    not give back a lease granted within FIRST_COMMIT_S that has carried no packet yet (two
    lessees could otherwise hand it back and forth with nothing sent): its first send commits,
    then gives it back, and the waiting sender goes next."""
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=5.0) is None  # parked: recalled at once
    assert receive_area.recalled(m.words, m.ring(2)) == lease.token
    assert d.answer_recalls() == (0, 1) and lease.held  # left to its first commit
    clock.now += 0.0009
    assert d.answer_recalls() == (0, 1) and lease.held
    assert sent(d.lease_send(lease, memoryview(b"first"))) == 1
    assert not lease.held and m.locks[2].value == 1  # given back right after it
    assert len(m.engine.retry_parked(5.0002)) == 1  # the waiting sender went next


def test_a_fresh_lease_left_unused_goes_back_once_no_longer_fresh(m, clock):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=5.0) is None
    assert d.answer_recalls() == (0, 1)
    clock.now += 0.001
    assert d.answer_recalls() == (1, 0) and not lease.held and m.locks[2].value == 1
    assert len(m.engine.retry_parked(5.0002)) == 1


def test_a_renewal_under_a_recall_buys_at_most_the_fresh_hold(m, clock):
    """A LEASE whose reply was lost, recalled, then renewed by its holder: the renewal is a
    fresh lease to the driver (it cannot tell), so it is held FIRST_COMMIT_S at most, then
    given back once; the recall (and the grant timeout's clock) stays in force."""
    d = EngineDriver(m, 1)
    sent(d.take_lease(2))
    d._leases.clear()  # the driver never learnt of it
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=1.0) is None
    lease = sent(d.take_lease(2))  # the renewal
    assert d.answer_recalls() == (0, 1) and lease.held
    clock.now += 0.001
    assert d.answer_recalls() == (1, 0)
    assert d.answer_recalls() == (0, 0) and m.locks[2].value == 1  # posted once


def test_a_full_ring_keeps_the_lease_and_writes_nothing(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    big = memoryview(bytes(m.p(2).receive_size // 2 - 64))
    sent(d.lease_send(lease, big))
    sent(d.lease_send(lease, big))
    outcome = d.lease_send(lease, big)
    assert isinstance(outcome, DestinationFull)
    assert lease.held and m.seq(1, 2) == 2 and len(m.records(2)) == 2


def test_a_forged_tail_is_refused_and_the_lease_given_back(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    receive_area.publish_tail(m.words, m.p(2).control, 4096)  # past head: impossible
    outcome = d.lease_send(lease, memoryview(b"x"))
    assert isinstance(outcome, RingCorrupt) and "tail" in str(outcome)
    assert not lease.held and m.head(2) == 0 and m.seq(1, 2) == 0
    m.engine.settle_finished_grants()
    assert m.lock_state(2) == "free"


def test_a_holder_that_dies_mid_commit_leaves_no_record_and_no_gap(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    sent(d.lease_send(lease, memoryview(b"committed")))
    ring, dst = m.ring(2), m.p(2)
    head = receive_area.read_head(m.words, dst)
    receive_area.begin_commit(m.words, ring, head + 64, m.p(1).index, d._seq_words[2], 1)
    m.engine.detach(1)  # died between begin_commit and head
    assert m.lock_state(2) == "free" and m.engine.counters["locks_reclaimed"] == 1
    assert m.seq(1, 2) == 1 and [r[2] for r in m.records(2)] == [1]
    assert receive_area.lease_token(m.words, ring) == 0


def test_a_restarted_adapter_keeps_the_lease_through_its_holders_other_requests(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    m.engine = m.fresh_engine()  # the adapter restarted while partition 1 held the lease
    m.engine.recover(1.0)
    for i in IDS:
        m.engine.attach(i)
    grant = m.engine.book.record(2).grant
    assert grant.lease and grant.recovered
    m.put(1, 0, b"to three")
    ok(m.submit(1, Op.MOVE, [(3, 0, 8)]))  # its next request proves nothing about the lease
    assert m.lock_state(2) == "granted"
    assert sent(d.lease_send(lease, memoryview(b"still mine"))) == 1
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"still mine")]


def test_a_lease_asked_again_by_its_holder_is_confirmed_and_a_recall_stays_in_force(m):
    """The holder's LEASE reply died with the old adapter: asked again, the lease is confirmed
    (same token), not granted twice; a recall in force stays, with its clock, so asking again
    never buys time."""
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    token = lease.token
    m.engine = m.fresh_engine()
    m.engine.recover(1.0)
    for i in IDS:
        m.engine.attach(i)
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=2.0) is None  # recalls it
    lease.held = False  # as if the LEASE reply had died with the old adapter
    again = sent(d.take_lease(2))  # confirmed: same token, still recalled
    assert again.token == token and receive_area.recalled(m.words, m.ring(2)) == token
    assert m.engine.counters["leases_renewed"] == 1 and m.engine.counters["leases"] == 0
    assert m.engine.book.record(2).recalled_at == 2.0  # the clock of the first recall
    assert d.answer_recalls() == (1, 0)  # idle: the keeper gives it back
    assert receive_area.read_released(m.words, m.ring(2)) == token
    ((network_id, _),) = m.engine.retry_parked(7.1)
    assert network_id == 3


def test_a_lease_renewed_under_a_recall_is_given_back_once(m):
    """A lease whose reply was lost, recalled, then confirmed to its holder: given back once,
    and a later look finds nothing to give back (a second post would end the next holder's
    grant)."""
    d = EngineDriver(m, 1)
    sent(d.take_lease(2))
    d._leases.clear()  # the driver never learnt of it
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=1.0) is None
    sent(d.take_lease(2))  # the renewal
    assert d.answer_recalls() == (1, 0)
    assert d.answer_recalls() == (0, 0)
    assert m.locks[2].value == 1  # posted once
    assert len(m.engine.retry_parked(1.1)) == 1
    assert m.locks[2].value == 1  # the engine took it and freed it after 3's move


def test_a_late_give_back_names_its_lease_and_never_ends_the_next_grant(m):
    """A LEASE reply that comes after its lease was already given back (the keeper answered
    a recall) must not end the grant made since: its give-back names the lease's token
    (Driver._take_late uses _free_lease), so it writes and posts nothing."""
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    first = lease.token
    m.put(3, 0, b"fig12 move")
    assert m.submit(3, Op.GRANT, [(2, 0, 10)], now=1.0) is None
    assert d.answer_recalls() == (1, 0)
    ((network_id, frame),) = m.engine.retry_parked(1.1)
    assert network_id == 3 and ok(decode(frame))
    assert m.lock_state(2) == "granted" and m.locks[2].value == 0  # granted to 3 now
    released = receive_area.read_released(m.words, m.ring(2))
    assert d._free_lease(2, first) is False  # the late reply's give-back
    assert m.locks[2].value == 0 and receive_area.read_released(m.words, m.ring(2)) == released
    m.engine.settle_finished_grants()
    assert m.lock_state(2) == "granted"  # 3's grant stands


def test_a_holder_asking_again_waits_behind_the_sender_its_recall_was_for(m):
    d = EngineDriver(m, 1)
    sent(d.take_lease(2))
    m.put(3, 0, b"waiting")
    assert m.submit(3, Op.MOVE, [(2, 0, 7)], now=1.0) is None
    assert d.answer_recalls() == (1, 0)
    assert m.submit(1, Op.LEASE, [(2, 0, 1)], now=1.0) is None  # parked behind 3
    served = [network_id for network_id, _ in m.engine.retry_parked(1.1)]
    assert served == [3, 1]
    assert [r[1:3] for r in m.records(2)] == [(3, 1)]


def test_a_lease_on_a_destination_that_ends_is_recalled(m):
    """Retired (or dead) destination: the lease is recalled, so its holder's next LEASE hears
    DestinationGone instead of filling a ring nobody will drain. The grant timeout counts
    from the first look at the grants after the recall (it came with no clock)."""
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    m.engine.retire(2)
    assert receive_area.recalled(m.words, m.ring(2)) == lease.token and m.recalls[1].rings == 1
    assert m.engine.stats(now=50.0)["grants"]["2"]["age_s"] == 0.0
    assert m.engine.stats(now=53.0)["grants"]["2"]["age_s"] == 3.0
    assert sent(d.lease_send(lease, memoryview(b"x"))) == 1 and not lease.held  # given back
    request = Request(Op.LEASE, 9, (Move(1, 2, 0, 1),))
    _, (r,) = decode(m.engine.submit(1, request, 54.0))
    assert r.status == Status.DESTINATION_GONE


def test_a_lease_of_a_holder_that_died_while_no_adapter_ran_is_taken_back(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    ring, dst = m.ring(2), m.p(2)
    head = receive_area.read_head(m.words, dst)
    receive_area.begin_commit(m.words, ring, head + 64, m.p(1).index, lease.seq_word, 1)
    m.engine = m.fresh_engine()  # the adapter restarted; partition 1 died meanwhile
    m.engine.recover(1.0, connected=[2, 3])
    assert m.lock_state(2) == "free" and m.seq(1, 2) == 0  # its half-done commit undone
    assert receive_area.lease_token(m.words, ring) == 0


def test_a_forged_lease_word_fails_its_destination_at_recovery(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    m.words[m.ring(2).lease] = lease.token + 5
    m.engine = m.fresh_engine()
    m.engine.recover(1.0)
    assert "lease" in m.engine.corrupt[2]


def test_a_lease_whose_reply_was_lost_is_given_back_when_recalled(m):
    d = EngineDriver(m, 1)
    sent(d.take_lease(2))
    d._leases.clear()  # the driver never learnt of it
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=1.0) is None
    assert d.answer_recalls() == (1, 0)
    assert len(m.engine.retry_parked(1.1)) == 1


def test_a_recall_of_someone_elses_lease_is_not_answered(m):
    holder, other = EngineDriver(m, 1), EngineDriver(m, 3)
    lease = sent(holder.take_lease(2))
    m.put(3, 0, b"x")
    assert m.submit(3, Op.MOVE, [(2, 0, 1)], now=1.0) is None
    assert other.answer_recalls() == (0, 0) and lease.held and m.locks[2].value == 0


def test_a_lease_request_of_two_moves_is_malformed(m):
    request = Request(Op.LEASE, 7, (Move(1, 2, 0, 1), Move(1, 3, 0, 1)))
    status, _ = decode(m.engine.submit(1, request, 0.0))
    assert status == Status.MALFORMED
    assert m.lock_state(2) == "free" and m.lock_state(3) == "free"


def test_a_given_back_lease_settles_and_the_next_lease_gets_a_new_token(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    first = lease.token
    sent(d.lease_send(lease, memoryview(b"one")))
    d.end_lease(lease)
    assert not lease.held
    m.engine.settle_finished_grants()
    assert m.lock_state(2) == "free" and "grants_abandoned" not in m.engine.counters
    again = sent(d.take_lease(2))
    assert again.token != first
    assert sent(d.lease_send(again, memoryview(b"two"))) == 2


def test_a_lease_does_not_wait_behind_a_request_that_waits_for_its_own_sender():
    """Partition 3's request to 2 and 4 parks on 2, which partition 1 leases. 1's LEASE on 4
    must not park behind it (it would wait for 3, which waits for 1's lease on 2: a cycle
    until the lock timeout); FIFO behind earlier requests holds otherwise."""
    m = LeaseMachine(ids=(1, 2, 3, 4))
    d = EngineDriver(m, 1)
    sent(d.take_lease(2))
    m.put(3, 0, b"to two and four")
    assert m.submit(3, Op.MOVE, [(2, 0, 6), (4, 0, 6)], now=1.0) is None  # parked on 2
    ok(m.submit(1, Op.LEASE, [(4, 0, 1)], now=1.0))  # granted, not parked behind 3


def test_a_lease_taken_by_another_thread_while_this_one_waited_for_the_slot_is_shared(m):
    """Two threads of one partition ask for the lease on one destination at once: the one
    that waited for the driver's slot finds the lease the other just took, and asks nothing
    (asking again would have the adapter confirm it, racing the other thread's give-back)."""
    d = EngineDriver(m, 1)
    take_slot = d._take_slot

    def other_thread_first(wait):
        d._take_slot = take_slot
        sent(d.take_lease(2))  # the other thread, which had the slot
        return take_slot(wait)

    d._take_slot = other_thread_first
    lease = sent(d.take_lease(2))
    assert lease.held and m.engine.counters["leases"] == 1
    assert m.engine.counters["leases_renewed"] == 0


def test_a_lease_confirmed_then_given_back_by_another_thread_is_lost_not_corrupt(m):
    """The adapter confirms the lease a thread of ours holds (another thread of ours asked
    for it); the holder gives it back (a recall answered) between that reply and the asking
    thread's look at the words. Nothing is corrupt: the attempt is LeaseLost (retried),
    nothing is given back twice, and the next attempt gets a new lease."""
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    token = lease.token
    ask = d._survive_restart

    def confirmed_then_given_back(op, moves, reply_by=None):
        results = ask(op, moves, reply_by)
        d.end_lease(lease)  # the holding thread, meanwhile
        return results

    d._survive_restart = confirmed_then_given_back
    outcome = d._ask_lease(2, None)  # the asking thread (it found the lease not held yet)
    assert isinstance(outcome, LeaseLost) and outcome.retryable, outcome
    assert m.engine.counters["leases_renewed"] == 1 and m.locks[2].value == 1  # posted once
    d._survive_restart = ask
    again = sent(d.take_lease(2))
    assert again.held and again.token > token
    assert sent(d.lease_send(again, memoryview(b"after"))) == 1
