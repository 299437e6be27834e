"""The engine's locks and Fig 12 grants (adapter/engine.py, adapter/grants.py): a grant handed
out and settled, a request on a busy lock parked then served or timed out, and stray posts of
a lock (issue 12 item 1) absorbed without ending a grant."""

from __future__ import annotations

import pytest

from adapter import receive_area
from adapter.engine import EngineError
from adapter.errors import Status
from adapter.protocol import Op
from adapter.ring import HEADER_SIZE, KIND_RECORD, record_size
from tests.unit.engine_machine import decode, ok


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


# -- a stray post of a lock nobody holds ---------------------------------------------------
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
