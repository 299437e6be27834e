"""Every word the engine reads from the segment is checked (issue 12 items 2-4): a poisoned
pending commit, holder, sequence word, ring counters or head fails its destination with
RING_CORRUPT, never the adapter, the sender or another destination."""

from __future__ import annotations

import pytest

from adapter import receive_area
from adapter.engine import Engine
from adapter.errors import Status
from adapter.protocol import Op, Result
from tests.unit.engine_machine import IDS, Machine, ok


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
