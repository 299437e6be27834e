"""Requests the engine refuses change nothing: a bad move fails by name and alone, an unknown op
is malformed, and a destination that is down, gone (retired) or down on its own host is
refused as such."""

from __future__ import annotations

import pytest

from adapter.errors import Status, error_for
from adapter.protocol import Move, Op, Request
from adapter.ring import KIND_RECORD, max_payload
from hypervisor.config import PAGE_SIZE
from tests.unit.engine_machine import decode, ok


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


# -- a destination that is down or gone ----------------------------------------------------
def test_a_dead_destination_is_down(m):
    m.engine.detach(2)
    status, (r,) = m.submit(1, Op.MOVE, [(2, 0, 8)])
    assert r.status == Status.DESTINATION_DOWN
    m.engine.attach(2)
    ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))


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
