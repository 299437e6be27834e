"""A lease under contention (partitions/lease.py, CONTENDED_S): once recalled, the Lease's
sends go as Fig 11 moves for a while, then it asks for the lease again. The engine and the
driver's half over one bytearray (tests/unit/test_leases.py); the port's move is a recorder."""

from __future__ import annotations

import pytest

from adapter.protocol import Op
from adapter.ring import max_payload
from partitions import lease as lease_module
from partitions.driver import Sent
from partitions.lease import CONTENDED_S, Lease
from tests.unit.test_leases import Clock, EngineDriver, LeaseMachine

MOVE_MAX = 64  # the port's cork area: the largest packet a contended lease sends as a move


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """The Lease's clock for CONTENDED_S, moved by hand."""
    c = Clock()
    monkeypatch.setattr(lease_module, "monotonic", c)
    return c


def test_a_recalled_lease_sends_as_moves_for_a_while_then_leases_again(clock) -> None:
    m = LeaseMachine()
    d = EngineDriver(m, 1)
    moved: list[bytes] = []

    def move(view, timeout, cancel) -> Sent:
        moved.append(bytes(view))
        return Sent(2, 0, len(view))

    lease = Lease(d, 2, max_payload(m.p(2).receive_size), lambda: None,
                  lambda cancel: lambda: False, move=move, move_max=MOVE_MAX)
    lease.acquire(1.0)
    assert lease.send(b"one").seq == 1 and moved == []  # leased: no move, no request
    m.put(3, 0, b"other")
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=10.0) is None  # parked: recalls the lease
    assert d.answer_recalls() == (1, 0) and not lease.held
    assert len(m.engine.retry_parked(10.5)) == 1  # the other sender goes
    lease.send(b"two")
    clock.now += CONTENDED_S * 0.9
    lease.send(b"three")
    assert moved == [b"two", b"three"] and not lease.held  # contended: moves
    clock.now += CONTENDED_S * 0.2
    assert lease.send(b"four").seq == 2 and lease.held  # asked for again, and leased
    assert moved == [b"two", b"three"]
    assert [r[1:4] for r in m.records(2)] == [(1, 1, b"one"), (3, 1, b"other"),
                                              (1, 2, b"four")]


def test_a_packet_larger_than_the_cork_area_takes_the_lease_even_when_contended(clock) -> None:
    """A move is staged in the port's cork area: a larger packet would be staged over the
    program's own data (or refused as TooLarge by a small send space), so it takes the lease
    as before."""
    m = LeaseMachine()
    d = EngineDriver(m, 1)
    moved: list[bytes] = []
    lease = Lease(d, 2, max_payload(m.p(2).receive_size), lambda: None,
                  lambda cancel: lambda: False,
                  move=lambda view, timeout, cancel: moved.append(bytes(view)) or Sent(2, 0, 1),
                  move_max=MOVE_MAX)
    lease.acquire(1.0)
    assert lease.send(b"one").seq == 1
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=10.0) is None
    assert d.answer_recalls() == (1, 0)
    assert len(m.engine.retry_parked(10.5)) == 1
    big = bytes(MOVE_MAX + 1)
    assert lease.send(big).seq == 2 and lease.held and moved == []
    assert m.records(2)[-1][1:4] == (1, 2, big)


def test_a_lease_without_a_move_asks_again_at_once(clock) -> None:
    """A Lease made with no move (the driver's tests, a caller that wants the lease only)
    keeps the old rule: the next send asks for the lease again."""
    m = LeaseMachine()
    d = EngineDriver(m, 1)
    lease = Lease(d, 2, max_payload(m.p(2).receive_size), lambda: None,
                  lambda cancel: lambda: False)
    lease.acquire(1.0)
    assert lease.send(b"one").seq == 1
    assert m.submit(3, Op.MOVE, [(2, 0, 5)], now=10.0) is None
    assert d.answer_recalls() == (1, 0)
    assert len(m.engine.retry_parked(10.5)) == 1
    assert lease.send(b"two").seq == 2 and lease.held
