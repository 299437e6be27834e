"""The adapter's lock bookkeeping (adapter/locks.py) as a transition table, without semaphores.

Releasing a lock that is not held, releasing it twice, or a release by a partition that is not
the holder cannot be expressed through the driver API (the driver only ever posts a lock the
adapter granted it), so those faults are tested here, at the book the adapter keeps.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.locks import (
    TRANSITIONS,
    Grant,
    LockBook,
    LockEvent,
    LockRecord,
    LockState,
    LockStateError,
)

DST = 7
GRANT_FIELDS = {f.name for f in dataclasses.fields(Grant)}


def grant(holder: int = 3, destination: int = DST, commit: int = 128) -> Grant:
    """A Grant with whatever bookkeeping fields the adapter version keeps, at neutral values."""
    extra = {"first_seqs": ((0, 1),)} if "first_seqs" in GRANT_FIELDS else {}
    return Grant(holder=holder, destination=destination, commit_value=commit, granted_at=0.0,
                 **extra)


def book_in(state: LockState, destination: int = DST, holder: int = 3) -> LockBook:
    book = LockBook()
    if state is not LockState.FREE:
        book.acquired(destination)
    if state is LockState.GRANTED:
        book.granted(grant(holder, destination))
    assert book.state(destination) is state
    return book


def fire(book: LockBook, event: LockEvent, destination: int = DST, holder: int = 3):
    if event is LockEvent.ACQUIRE:
        return book.acquired(destination)
    if event is LockEvent.RELEASE:
        return book.released(destination)
    if event is LockEvent.GRANT:
        return book.granted(grant(holder, destination))
    if event is LockEvent.SETTLE:
        return book.settled(destination)
    return book.reclaimed(destination)


def test_the_table_is_the_documented_one():
    assert TRANSITIONS == {
        (LockState.FREE, LockEvent.ACQUIRE): LockState.HELD,
        (LockState.HELD, LockEvent.RELEASE): LockState.FREE,
        (LockState.HELD, LockEvent.GRANT): LockState.GRANTED,
        (LockState.GRANTED, LockEvent.SETTLE): LockState.HELD,
        (LockState.GRANTED, LockEvent.RECLAIM): LockState.HELD,
    }


@pytest.mark.parametrize("state,event", sorted(TRANSITIONS, key=str))
def test_every_legal_transition(state, event):
    book = book_in(state)
    fire(book, event)
    assert book.state(DST) is TRANSITIONS[(state, event)]


ILLEGAL = [(s, e) for s, e in itertools.product(LockState, LockEvent) if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize("state,event", ILLEGAL, ids=[f"{s.value}-{e.value}" for s, e in ILLEGAL])
def test_every_illegal_transition_raises_naming_state_and_event(state, event):
    book = book_in(state)
    before = (book.record(DST).state, book.record(DST).grant)
    with pytest.raises(LockStateError) as info:
        fire(book, event)
    assert str(info.value) == (f"lock of network ID {DST}: event {event.value} illegal in "
                               f"state {state.value}")
    assert (book.record(DST).state, book.record(DST).grant) == before  # nothing changed


def test_release_of_a_lock_not_held():
    book = LockBook()
    with pytest.raises(LockStateError, match="event release illegal in state free"):
        book.released(DST)


def test_release_twice():
    book = book_in(LockState.HELD)
    book.released(DST)
    with pytest.raises(LockStateError, match="event release illegal in state free"):
        book.released(DST)
    assert book.all_free()


def test_a_granted_lock_cannot_be_released_as_if_the_adapter_held_it():
    """The adapter must settle or reclaim a grant first: a plain release is refused."""
    book = book_in(LockState.GRANTED)
    with pytest.raises(LockStateError, match="event release illegal in state granted"):
        book.released(DST)
    assert book.granted_to(3) == [DST]


def test_settle_or_reclaim_without_a_grant_is_refused():
    for state in (LockState.FREE, LockState.HELD):
        for end in (LockBook.settled, LockBook.reclaimed):
            book = book_in(state)
            with pytest.raises(LockStateError, match=f"illegal in state {state.value}"):
                end(book, DST)


def test_a_second_grant_of_a_granted_lock_is_refused():
    book = book_in(LockState.GRANTED, holder=3)
    with pytest.raises(LockStateError, match="event grant illegal in state granted"):
        book.granted(grant(holder=4))
    assert book.record(DST).grant.holder == 3  # the first holder keeps it
    assert book.granted_to(4) == []


def test_settle_returns_the_finished_grant_and_clears_it():
    book = book_in(LockState.HELD)
    g = grant(holder=3, commit=4096)
    book.granted(g)
    assert book.record(DST).grant is g
    assert book.settled(DST) is g
    assert book.record(DST) == LockRecord(LockState.HELD, None, 0)
    book.released(DST)
    assert book.all_free()


def test_reclaim_returns_the_abandoned_grant():
    book = book_in(LockState.HELD)
    g = grant(holder=5)
    book.granted(g)
    assert book.reclaimed(DST) is g
    assert book.state(DST) is LockState.HELD and book.granted_to(5) == []


def test_granted_to_names_only_the_holders_granted_locks():
    book = LockBook()
    for dst, holder in ((1, 3), (2, 3), (4, 5)):
        book.acquired(dst)
        book.granted(grant(holder, dst))
    book.acquired(6)  # held by the adapter itself: nobody's grant
    assert sorted(book.granted_to(3)) == [1, 2]
    assert book.granted_to(5) == [4]
    assert book.granted_to(6) == [] and book.granted_to(99) == []
    book.settled(1)
    assert book.granted_to(3) == [2]
    assert not book.all_free()
    for dst in (2, 4):
        book.reclaimed(dst)
    for dst in (1, 2, 4, 6):
        book.released(dst)
    assert book.all_free()


def test_locks_of_different_destinations_are_independent():
    book = book_in(LockState.GRANTED, destination=1)
    book.acquired(2)
    assert (book.state(1), book.state(2), book.state(3)) == (
        LockState.GRANTED, LockState.HELD, LockState.FREE)


EVENTS = st.lists(st.tuples(st.sampled_from(list(LockEvent)), st.integers(1, 3),
                            st.integers(1, 3)), max_size=60)


@given(EVENTS)
def test_random_event_sequences_follow_the_table(events):
    """The book is exactly the table: legal events move, illegal ones raise and change nothing."""
    book = LockBook()
    model: dict[int, tuple[LockState, int | None]] = {}
    for event, dst, holder in events:
        state, owner = model.get(dst, (LockState.FREE, None))
        nxt = TRANSITIONS.get((state, event))
        if nxt is None:
            with pytest.raises(LockStateError, match=f"event {event.value} illegal in state "
                                                     f"{state.value}"):
                fire(book, event, dst, holder)
        else:
            result = fire(book, event, dst, holder)
            if event in (LockEvent.SETTLE, LockEvent.RECLAIM):
                assert result.holder == owner and result.destination == dst
            owner = holder if event is LockEvent.GRANT else None
            model[dst] = (nxt, owner)
        for d, (s, _) in model.items():
            assert book.state(d) is s
            assert (book.record(d).grant is not None) == (s is LockState.GRANTED)
        for h in (1, 2, 3):
            assert sorted(book.granted_to(h)) == sorted(
                d for d, (s, o) in model.items() if s is LockState.GRANTED and o == h)
        assert book.all_free() == all(s is LockState.FREE for s, _ in model.values())
