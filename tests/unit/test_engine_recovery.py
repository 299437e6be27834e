"""A crash and what comes back: a grant holder that dies (its lock taken back, its record
invisible, its sequence numbers given back), and an adapter that dies mid-move (a fresh
engine's recovery rolls back its half-done commit and honours the grants still held)."""

from __future__ import annotations

import pytest

from adapter import receive_area
from adapter.errors import Status
from adapter.locks import LockState
from adapter.moves import mvxl
from adapter.protocol import Op
from adapter.ring import KIND_RECORD
from tests.unit.engine_machine import IDS, ok, run_bytes


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
