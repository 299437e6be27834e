"""Loans under a lease (Leasing.lease_loan / end_lease_loan) without processes: the engine and
the driver's half over one bytearray segment, as tests/unit/test_leases.py does. A loan
reserves a record for the program to fill in place; its commit publishes it with no request.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from adapter import receive_area
from adapter.errors import (
    BadCount,
    DestinationFull,
    LockTimeout,
    RingCorrupt,
    TooLarge,
    XpmoveError,
)
from adapter.protocol import Op
from adapter.ring import KIND_RECORD, KIND_RUN, RUN_DESCRIPTOR, align, max_payload
from partitions.lease import Lease, LeaseClosed
from partitions.leasing import LeaseLost
from partitions.loan import LoanHeld, LoanState
from partitions.waiting import RoomWait
from tests.unit.test_leases import EngineDriver, LeaseMachine, sent

CAP = max_payload(LeaseMachine().p(2).receive_size)  # the largest record a ring here holds


@pytest.fixture
def m() -> LeaseMachine:
    return LeaseMachine()


def lent_bytes(m: LeaseMachine, granted) -> memoryview:
    return m.mem[granted.address:granted.address + granted.size]


def test_a_loan_is_invisible_until_its_commit_and_needs_no_request(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    requests = m.engine.counters["requests"]
    granted = sent(d.lease_loan(lease, 5, None, uninit=False))
    assert (granted.seq, granted.records, granted.size) == (1, 1, 5)
    lent_bytes(m, granted)[:] = b"hello"
    assert m.records(2) == [] and m.seq(1, 2) == 0  # nothing visible, no number used yet
    assert d.end_lease_loan(lease, lease.lent, granted, commit=True) is None
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"hello")] and m.seq(1, 2) == 1
    assert m.engine.counters["requests"] == requests and lease.held


def test_a_run_loan_is_one_record_of_consecutive_sequence_numbers(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    sent(d.lease_send(lease, memoryview(b"first")))
    packets, length = 3, 6
    count = RUN_DESCRIPTOR.size + packets * align(length)
    granted = sent(d.lease_loan(lease, count, (packets, length), uninit=False))
    assert (granted.seq, granted.records, granted.size) == (2, 3, count - RUN_DESCRIPTOR.size)
    view = lent_bytes(m, granted)
    for i in range(packets):
        view[i * align(length):i * align(length) + length] = b"pkt %02d" % i
    assert d.end_lease_loan(lease, lease.lent, granted, commit=True) is None
    (_, (kind, src, seq, payload)) = m.records(2)
    assert (kind, src, seq, m.seq(1, 2)) == (KIND_RUN, 1, 2, 4)
    assert RUN_DESCRIPTOR.unpack_from(payload) == (packets, length)
    assert payload[RUN_DESCRIPTOR.size + 2 * align(length):][:length] == b"pkt 02"


def test_a_loan_given_back_writes_nothing_and_the_next_send_takes_its_number(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    granted = sent(d.lease_loan(lease, 64, None, uninit=False))
    head = m.head(2)
    assert d.end_lease_loan(lease, lease.lent, granted, commit=False) is None
    assert (m.head(2), m.seq(1, 2), m.records(2)) == (head, 0, [])
    assert sent(d.lease_send(lease, memoryview(b"next"))) == 1


def test_a_recall_waits_for_the_open_loan_then_the_lease_goes_back_after_its_commit(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    granted = sent(d.lease_loan(lease, 4, None, uninit=False))
    m.put(3, 0, b"other")
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=10.0) is None  # parked: recalls the lease
    assert d.answer_recalls() == (0, 0)  # left to the loan's end: it writes past head now
    assert isinstance(d.lease_send(lease, memoryview(b"x")), LockTimeout)  # waits its turn
    assert lease.held and m.locks[2].value == 0
    lent_bytes(m, granted)[:] = b"mine"
    assert d.end_lease_loan(lease, lease.lent, granted, commit=True) is None
    assert not lease.held and m.locks[2].value == 1  # given back right after the commit
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"mine")]
    ((_, frame),) = m.engine.retry_parked(10.5)  # the waiting sender's move goes next


def test_lent_space_that_held_another_partitions_records_is_zeroed_even_uninit(m):
    m.put(3, 0, b"secret!!")
    ((status, (r,))) = m.submit(3, Op.MOVE, [(2, 0, 8)])
    receive_area.publish_tail(m.words, m.p(2).control, m.head(2))  # read: the ring is empty
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    np.frombuffer(m.mem, np.uint8, 64, m.p(2).receive_base + 64).fill(0xAB)  # old bytes
    granted = sent(d.lease_loan(lease, 64, None, uninit=True))
    assert bytes(lent_bytes(m, granted)) == bytes(64)  # the ring holds 3's bytes too: zeroed
    assert d.end_lease_loan(lease, lease.lent, granted, commit=False) is None


def test_an_uninit_loan_of_a_ring_only_we_wrote_is_not_zeroed(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    granted = sent(d.lease_loan(lease, 64, None, uninit=True))
    lent_bytes(m, granted)[:] = b"\xab" * 64
    assert d.end_lease_loan(lease, lease.lent, granted, commit=False) is None
    again = sent(d.lease_loan(lease, 64, None, uninit=True))
    assert again.address == granted.address and bytes(lent_bytes(m, again)) == b"\xab" * 64
    zeroed = (d.end_lease_loan(lease, lease.lent, again, commit=False),
              sent(d.lease_loan(lease, 64, None, uninit=False)))[1]
    assert bytes(lent_bytes(m, zeroed)) == bytes(64)


def test_a_loan_whose_lease_was_taken_back_delivers_nothing(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    granted = sent(d.lease_loan(lease, 4, None, uninit=False))
    m.words[m.ring(2).token] += 1  # the grant is not ours any more (the adapter's doing)
    assert isinstance(d.end_lease_loan(lease, lease.lent, granted, commit=True), LeaseLost)
    assert (m.records(2), m.seq(1, 2), lease.held) == ([], 0, False)


def test_a_full_ring_lends_nothing_and_keeps_the_lease(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    capacity = m.p(2).receive_size
    for _ in range(2):  # two records of half the ring each: full
        granted = sent(d.lease_loan(lease, capacity // 2 - 24, None, uninit=False))
        assert d.end_lease_loan(lease, lease.lent, granted, commit=True) is None
    assert isinstance(d.lease_loan(lease, capacity // 2 - 24, None, uninit=False),
                      DestinationFull)
    assert lease.held and lease.lent is None


def test_one_loan_at_a_time_under_a_lease(m):
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    granted = sent(d.lease_loan(lease, 8, None, uninit=False))
    second = d.lease_loan(lease, 8, None, uninit=False)
    assert isinstance(second, LockTimeout) and isinstance(second, XpmoveError)
    assert second.retryable  # another thread's loan: wait for it
    assert d.end_lease_loan(lease, lease.lent, granted, commit=False) is None


def lease_of(m: LeaseMachine, d: EngineDriver, dst: int = 2) -> Lease:
    """The program's Lease over the test's driver (no port: no queue to flush first)."""
    lease = Lease(d, dst, max_payload(m.p(dst).receive_size), lambda: None,
                  lambda cancel: lambda: False)
    lease.acquire(1.0)
    return lease


def test_the_programs_lease_loans_commit_as_the_port_loans_do(m):
    d = EngineDriver(m, 1)
    lease = lease_of(m, d)
    with lease.loan_run(2, 3) as run:
        run.packet(0)[:] = b"abc"
        run.packet(1)[:] = b"def"
    with lease.loan(4) as view:
        view[:] = b"lone"
    sent_ = lease.loan(2)
    sent_.view[:] = b"ok"
    assert sent_.commit().seq == 4
    ((_, _, seq, _), (_, _, lone_seq, lone), (_, _, _, ok_)) = m.records(2)
    assert (seq, lone_seq, lone, ok_) == (1, 3, b"lone", b"ok")


class DrainingBell:
    """The destination's room semaphore, as the sleeping sender finds it: its wait is where
    the receiver drains the ring (tail to head) and rings."""

    def __init__(self, m: LeaseMachine, dst: int):
        self.m, self.dst, self.waits = m, dst, 0

    def acquire(self, timeout: float) -> None:
        self.waits += 1
        control = self.m.p(self.dst).control
        receive_area.publish_tail(self.m.words, control, receive_area.read_head(
            self.m.words, self.m.p(self.dst)))


class RoomDriver(EngineDriver):
    """EngineDriver with a room to wait on for network ID 2, and the outcome of every
    lease_loan it is asked for."""

    def __init__(self, m: LeaseMachine, network_id: int):
        super().__init__(m, network_id)
        self.bell = DrainingBell(m, 2)
        self.outcomes: list = []

    def room(self, dst_id: int):
        return RoomWait(self.words, self.rings[dst_id], self.bell) if dst_id == 2 else None

    def lease_loan(self, lease, count, run, uninit):
        outcome = super().lease_loan(lease, count, run, uninit)
        self.outcomes.append(outcome)
        return outcome


def test_a_lease_loan_that_finds_its_ring_full_waits_for_room_and_is_never_refused(m):
    """The steady state of a run a time under a lease: the ring still holds the last run (the
    receiver reads it), so the next loan waits for room first instead of asking and being
    refused (a refusal cost a sender about 10 us a run: benchmarks/README.md)."""
    d = RoomDriver(m, 1)
    lease = lease_of(m, d)
    for _ in range(2):  # two records of half the ring each: full
        with lease.loan(CAP) as view:
            view[:4] = b"full"
    with lease.loan(CAP) as view:
        view[:4] = b"next"
    assert d.bell.waits == 1 and m.words[m.ring(2).wanting] == 1
    assert not any(isinstance(o, XpmoveError) for o in d.outcomes), d.outcomes
    assert len(d.outcomes) == 3 and m.records(2)[-1][2:] == (3, b"next" + bytes(CAP - 4))


def full_ring(m: LeaseMachine, d: RoomDriver) -> Lease:
    """The program's lease on 2, its ring filled by two loans of half of it each."""
    lease = lease_of(m, d)
    for _ in range(2):
        with lease.loan(CAP) as view:
            view[:4] = b"full"
    return lease


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_loan_with_no_time_to_wait_tries_once_and_waits_for_nothing(m, timeout):
    """A timeout of 0 (or below) is one try: no wait for room first, one lease_loan, and its
    refusal raised as it is."""
    d = RoomDriver(m, 1)
    lease = full_ring(m, d)
    d.outcomes.clear()
    with pytest.raises(DestinationFull):
        lease.loan(CAP, timeout=timeout)
    assert d.bell.waits == 0 and len(d.outcomes) == 1 and lease.held


def test_a_cancelled_loan_does_not_wait_for_room_and_says_it_was_cut_short(m):
    d = RoomDriver(m, 1)
    full_ring(m, d)
    lease = Lease(d, 2, CAP, lambda: None,
                  lambda cancel: lambda: cancel is not None and cancel.is_set())  # as the port's
    lease.acquire(1.0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DestinationFull) as refused:
        lease.loan(CAP, timeout=None, cancel=cancel)
    assert d.bell.waits == 0 and refused.value.cut_short


def test_a_corrupt_ring_fails_the_loan_at_once_with_no_lease_asked_again(m):
    """A refusal that is no matter of time (the ring's words are wrong) is raised as the
    lease's holder found it: the lease goes back, and no LEASE request follows."""
    d = RoomDriver(m, 1)
    lease = lease_of(m, d)
    m.words[m.ring(2).pending] += 8  # `head` is no longer what the last commit published
    requests = m.engine.counters["requests"]
    with pytest.raises(RingCorrupt, match="pending_head"):
        lease.loan(8, timeout=5.0)
    assert m.engine.counters["requests"] == requests and len(d.outcomes) == 1
    assert not lease.held


@pytest.mark.parametrize("call, error, named", [
    (lambda lease, cap: lease.loan(0), BadCount, "loan of 0 bytes"),
    (lambda lease, cap: lease.loan(cap + 1), TooLarge, f"loan of {CAP + 1} bytes"),
    (lambda lease, cap: lease.loan_run(0, 8), BadCount, "loan_run of 0 packets"),
    (lambda lease, cap: lease.loan_run(2, cap), TooLarge, "loan_run of 2 packets"),
])
def test_a_bad_lease_loan_is_refused_by_name_and_lends_nothing(m, call, error, named):
    d = EngineDriver(m, 1)
    lease = lease_of(m, d)
    with pytest.raises(error, match=named):
        call(lease, CAP)
    assert lease.held and d._leases[2].lent is None and m.records(2) == []


def test_the_thread_holding_a_lease_loan_cannot_send_and_close_gives_the_loan_back(m):
    d = EngineDriver(m, 1)
    lease = lease_of(m, d)
    loan = lease.loan(8)
    with pytest.raises(LoanHeld, match="commit or give it back first"):
        lease.send(b"would wait for itself")
    lease.close()
    assert loan.state is LoanState.GIVEN_BACK and m.records(2) == []
    assert m.locks[2].value == 1  # the lease went back too
    with pytest.raises(LeaseClosed, match="^loan: "):
        lease.loan(8)
    with pytest.raises(LeaseClosed, match="^loan_run: "):  # named as the call the program made
        lease.loan_run(2, 8)


def test_a_close_from_another_thread_while_a_loan_is_made_undoes_the_loan_and_the_lease(m):
    """close() on another thread between the driver lending and the Lease registering the
    loan (it sees no loan, so it closes): the loan is given back and the lending call raises
    LeaseClosed; the lease goes back once that loan has ended (not left to a recall)."""
    d = EngineDriver(m, 1)
    lease = lease_of(m, d)
    lend = d.lease_loan

    def lend_then_close(*args, **kwargs):
        granted = lend(*args, **kwargs)
        closer = threading.Thread(target=lease.close)
        closer.start()
        closer.join()
        return granted

    d.lease_loan = lend_then_close  # type: ignore[method-assign]
    with pytest.raises(LeaseClosed, match="closed while the loan was made"):
        lease.loan(8)
    assert d._leases[2].lent is None and m.records(2) == [] and m.seq(1, 2) == 0
    assert m.locks[2].value == 1 and not lease.held  # the lease went back too


def test_ending_a_loan_twice_never_ends_the_next_one(m):
    """A stale end (the loan was committed already, and the next one lent since) must not
    forget the loan open now: its lease stays unrecallable until THAT loan ends."""
    d = EngineDriver(m, 1)
    lease = sent(d.take_lease(2))
    granted = sent(d.lease_loan(lease, 16, None, uninit=False))
    first = (lease.lent, granted)
    assert d.end_lease_loan(lease, *first, commit=True) is None
    second = sent(d.lease_loan(lease, 16, None, uninit=False))
    assert isinstance(d.end_lease_loan(lease, *first, commit=False), LeaseLost)
    assert lease.lent is not None and lease.held  # the second loan is still open
    m.put(3, 0, b"other")
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=10.0) is None  # recalls the lease
    assert d.answer_recalls() == (0, 0) and m.locks[2].value == 0  # not given back under it
    assert d.end_lease_loan(lease, lease.lent, second, commit=False) is None
    assert not lease.held and m.locks[2].value == 1


def test_a_thread_holding_a_loan_under_one_lease_object_gets_loan_held_from_another(m):
    d = EngineDriver(m, 1)
    one, other = lease_of(m, d), lease_of(m, d)  # port.lease(dst) twice: one lease
    loan = one.loan(8)
    assert d.lent_by(threading.get_ident()) is d._leases[2]
    with pytest.raises(LoanHeld, match="network ID 2"):
        other.send(b"would wait for itself", timeout=None)
    with pytest.raises(LoanHeld):
        other.loan(4)
    loan.give_back()
    assert d.lent_by(threading.get_ident()) is None and not d.lent_leases
    assert other.send(b"now").seq == 1


def test_close_from_another_thread_leaves_an_open_loan_to_its_thread(m):
    d = EngineDriver(m, 1)
    lease = lease_of(m, d)
    loan = lease.loan(4)
    loan.view[:] = b"data"
    raised: list[BaseException] = []

    def close() -> None:
        try:
            lease.close()
        except BaseException as exc:  # noqa: BLE001 (asserted below)
            raised.append(exc)

    closer = threading.Thread(target=close)
    closer.start()
    closer.join()
    assert len(raised) == 1 and isinstance(raised[0], LoanHeld)
    assert loan.state is LoanState.HELD and d.lent_by(threading.get_ident()) is not None
    assert loan.commit().seq == 1 and m.records(2) == [(KIND_RECORD, 1, 1, b"data")]
    lease.close()
    assert m.locks[2].value == 1


def test_a_lease_send_keeps_retryings_rules_for_the_try_it_made_itself(m):
    """The lone packet's fast path, as the loan's: a timeout of 0 is one try (no second one
    at once), a corrupt ring fails at once with no LEASE request, and a full ring waits for
    the receiver, then the packet goes."""
    d = RoomDriver(m, 1)
    lease = full_ring(m, d)
    tries = []
    send = d.lease_send
    d.lease_send = lambda held, view: tries.append(send(held, view)) or tries[-1]
    with pytest.raises(DestinationFull):
        lease.send(b"one try", timeout=0)
    assert len(tries) == 1 and d.bell.waits == 0
    assert lease.send(b"waits", timeout=5.0).seq == 3 and d.bell.waits == 1
    m.words[m.ring(2).pending] += 8  # `head` is no longer what the last commit published
    requests, tries[:] = m.engine.counters["requests"], []
    with pytest.raises(RingCorrupt, match="pending_head"):
        lease.send(b"corrupt", timeout=5.0)
    assert len(tries) == 1 and m.engine.counters["requests"] == requests
