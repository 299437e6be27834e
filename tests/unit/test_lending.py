"""The driver's half of a loan (partitions/lending.py) against the adapter's real engine over a
bytearray segment (tests/unit/engine_machine.py): a grant taken, zeroed, written in place, then
committed, given back, or found taken back by a restarted adapter."""

from __future__ import annotations

import threading

import pytest

from adapter import receive_area
from adapter.errors import LockTimeout
from adapter.ring import KIND_RECORD
from partitions.lending import Granted, Lending
from tests.unit.engine_machine import Machine


class Lender(Lending):
    """A driver reduced to what Lending needs; its requests go straight to the engine."""

    def __init__(self, m: Machine, network_id: int):
        self.m = m
        self.network_id = network_id
        self.physical, self.words, self.by_id = m.mem, m.words, m.by_id
        self.rings = {p.network_id: receive_area.RingWords.of(p) for p in m.layout.partitions}
        self._mutex = threading.Lock()

    def _survive_restart(self, op, moves, reply_by=None):
        reply = self.m.submit(self.network_id, op, [(mv.dst_id, mv.offset, mv.count)
                                                    for mv in moves])
        assert reply is not None, "parked"
        return reply[1]

    def _free_grant(self, dst: int, committed: bool) -> None:
        self.m.free(dst)  # the holder's proof, then the post (as Driver._free_grant)


def take(lender: Lender, count: int = 100) -> Granted:
    granted = lender.take_grant(2, 0, count)
    assert isinstance(granted, Granted), granted
    return granted


def test_a_grant_is_zeroed_held_and_committed_once():
    m = Machine()
    d = m.p(2)
    m.mem[d.receive_base:d.receive_base + d.receive_size] = b"\xaa" * d.receive_size  # old data
    lender = Lender(m, 1)
    granted = take(lender)
    assert granted.size == 100 and granted.seq == 1 and lender._mutex.locked()
    assert bytes(m.mem[granted.address:granted.address + 100]) == bytes(100)
    assert m.records(2) == []  # reserved, not visible
    m.mem[granted.address:granted.address + 100] = b"L" * 100  # the program writes in place
    assert lender.end_grant(granted, commit=True) is None
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"L" * 100)]
    assert not lender._mutex.locked() and m.bells[2].rings == 0  # nobody slept
    assert take(lender, 8).seq == 2


def test_a_grant_given_back_leaves_nothing_and_its_sequence_number():
    m = Machine()
    lender = Lender(m, 1)
    granted = take(lender)
    assert lender.end_grant(granted, commit=False) is None
    assert m.records(2) == [] and not lender._mutex.locked()
    again = take(lender)
    assert (again.seq, again.address) == (1, granted.address)  # the space came back too
    assert m.seq(1, 2) == 1


def test_a_grant_the_adapter_took_back_is_not_committed():
    """The adapter restarted and found the holder gone (not connected): it settled the grant
    itself. The late commit must write nothing (another sender may own that space now)."""
    m = Machine()
    lender = Lender(m, 1)
    granted = take(lender)
    head = m.head(2)
    m.engine = m.fresh_engine()
    m.engine.recover(0.0, connected=(2, 3))  # partition 1 missed the restart
    error = lender.end_grant(granted, commit=True)
    assert isinstance(error, LockTimeout) and "nothing was delivered" in str(error)
    assert m.head(2) == head and m.records(2) == [] and not lender._mutex.locked()
    assert m.lock_state(2) == "free"


def test_a_busy_driver_is_a_retryable_lock_timeout():
    lender = Lender(Machine(), 1)
    with lender._mutex:  # another thread's loan
        outcome = lender.take_grant(2, 0, 100, wait=0.01)
    assert isinstance(outcome, LockTimeout) and outcome.retryable
    assert "stayed busy for 0.01 s" in str(outcome)


def plant(m: Machine, dst: int, writer: int) -> None:
    """Old bytes in `dst`'s ring, and the writer word the adapter would have left for them."""
    d = m.p(dst)
    m.mem[d.receive_base:d.receive_base + d.receive_size] = b"\xaa" * d.receive_size
    m.words[receive_area.RingWords.of(d).writer] = writer


@pytest.mark.parametrize("writer", [1, 3, receive_area.MIXED])
@pytest.mark.parametrize("uninit", [False, True])
def test_a_grant_skips_the_memset_only_uninit_over_its_own_bytes(writer, uninit):
    m = Machine()
    plant(m, 2, writer)
    lender = Lender(m, 1)
    granted = (lender.take_grant_uninit if uninit else lender.take_grant)(2, 0, 100)
    assert isinstance(granted, Granted), granted
    found = bytes(m.mem[granted.address:granted.address + 100])
    assert found == (b"\xaa" * 100 if uninit and writer == 1 else bytes(100))
    assert lender.end_grant(granted, commit=False) is None


def test_a_grant_to_fill_is_never_zeroed_and_commits_what_was_copied_in():
    """The cluster's fabric copies a landed record over every granted byte at once: the memset
    would only be overwritten (whoever wrote the ring before)."""
    m = Machine()
    plant(m, 2, receive_area.MIXED)
    lender = Lender(m, 1)
    granted = lender.take_grant_to_fill(2, 0, 100)
    assert isinstance(granted, Granted), granted
    assert bytes(m.mem[granted.address:granted.address + 100]) == b"\xaa" * 100
    m.mem[granted.address:granted.address + 100] = b"F" * 100
    assert lender.end_grant(granted, commit=True) is None
    assert m.records(2) == [(KIND_RECORD, 1, 1, b"F" * 100)]
