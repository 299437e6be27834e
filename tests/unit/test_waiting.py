"""How a driver waits out a refusal (partitions/waiting.py) and how a receiver wakes the senders
waiting for room (adapter/receive_area.py: want_room, ring_room_bell): pure logic over a
words array, with stand-in semaphores that record what is asked of them. The real semaphores
and processes are in tests/integration/test_room.py."""

from __future__ import annotations

import posix_ipc
import pytest

from adapter import receive_area
from adapter.errors import DestinationFull, LockTimeout, OutOfBounds
from partitions import waiting
from partitions.waiting import ROOM_WAIT_S, RoomWait, retrying

RING = receive_area.RingWords(*range(10))  # word i of a 10-word array
MASK = (1 << 64) - 1


class Bell:
    """A semaphore stand-in: counts posts; `acquire` records its timeout and, while it has
    posts, takes one, else raises BusyError as a timed-out wait does."""

    def __init__(self, posts: int = 0) -> None:
        self.posts, self.released, self.waits = posts, 0, []

    def release(self) -> None:
        self.released += 1

    def acquire(self, timeout: float | None = None) -> None:
        self.waits.append(timeout)
        if not self.posts:
            raise posix_ipc.BusyError("timed out")
        self.posts -= 1


def words() -> memoryview:
    return memoryview(bytearray(8 * 10)).cast("Q")


@pytest.mark.parametrize(("wanting", "posted"), [(0, False), (1, True), (MASK, True)])
def test_the_receiver_posts_once_if_a_sender_waits(wanting, posted):
    w, bell = words(), Bell()
    w[RING.wanting] = wanting  # all ones: forged, still one post
    assert receive_area.ring_room_bell(w, RING, bell, 4096) is posted
    assert bell.released == int(posted) and w[RING.wanting] == 0


@pytest.mark.parametrize(("used", "posted"), [(0, True), (2048, True), (2056, False),
                                              (4096, False)])
def test_the_receiver_wakes_it_once_the_ring_is_at_most_half_full(used, posted):
    w, bell = words(), Bell()
    w[RING.head], w[RING.tail], w[RING.wanting] = 10_000 + used, 10_000, 1
    assert receive_area.ring_room_bell(w, RING, bell, 4096) is posted
    assert bell.released == int(posted)
    assert w[RING.wanting] == int(not posted)  # still waited for, for a later move


def test_senders_waiting_at_once_are_marked_once():
    """A mark, not a count: a count fed itself (a sender woken for a waiter already gone is
    refused and counts again, and the next move of the tail posts for every count)."""
    w = words()
    receive_area.want_room(w, RING)
    receive_area.want_room(w, RING)
    assert w[RING.wanting] == 1


def test_room_freed_since_the_refusal_is_not_slept_on():
    w, bell = words(), Bell()
    room = RoomWait(w, RING, bell)
    mark = room.mark()
    w[RING.tail] = 4096  # the receiver moved the tail after the try, before the mark
    assert room.wait(mark, 1.0) is True
    assert bell.waits == [] and w[RING.wanting] == 1


def test_a_sender_sleeps_on_the_room_semaphore_until_woken_or_the_timeout():
    w = words()
    woken = RoomWait(w, RING, Bell(posts=1))
    assert woken.wait(woken.mark(), 0.5) is True
    assert woken.bell.waits == [0.5] and w[RING.wanting] == 1
    w[RING.wanting] = 0  # the receiver that posted zeroed it
    late = RoomWait(w, RING, Bell())
    assert late.wait(late.mark(), 0.25) is False
    assert late.bell.waits == [0.25] and w[RING.wanting] == 1


class Room:
    """A RoomWait stand-in: records each wait's (mark, timeout); never wakes."""

    def __init__(self) -> None:
        self.tail, self.waits = 7, []

    def mark(self) -> int:
        return self.tail

    def wait(self, mark: int, timeout: float) -> bool:
        self.waits.append((mark, timeout))
        return False


def test_retrying_waits_for_room_on_the_room_and_for_a_lock_by_sleeping(monkeypatch):
    slept = []
    monkeypatch.setattr(waiting.time, "sleep", slept.append)
    room = Room()
    outcomes = iter([DestinationFull("full"), DestinationFull("full"), LockTimeout("busy"),
                     "done"])
    assert retrying(lambda reply_by: next(outcomes), 5.0, None, room) == "done"
    assert room.waits == [(7, ROOM_WAIT_S), (7, ROOM_WAIT_S)]
    assert slept == [waiting.RETRY_BACKOFF_S[0]]
    room.waits.clear()  # without a room (another host's destination): the back-off
    outcomes = iter([DestinationFull("full"), DestinationFull("full"), "done"])
    assert retrying(lambda reply_by: next(outcomes), 5.0, None) == "done"
    assert slept == [waiting.RETRY_BACKOFF_S[0]] * 2 + [2 * waiting.RETRY_BACKOFF_S[0]]


def test_a_wait_for_room_never_outlasts_the_deadline(monkeypatch):
    clock = iter(range(1000))  # milliseconds: each look at the clock one later
    monkeypatch.setattr(waiting.time, "monotonic", lambda: next(clock) / 1000)
    room = Room()
    full = lambda reply_by: DestinationFull("full")  # noqa: E731
    assert isinstance(retrying(full, 0.0105, None, room), DestinationFull)
    assert room.waits and all(t <= ROOM_WAIT_S for _, t in room.waits)
    assert room.waits[-1][1] < ROOM_WAIT_S  # the last wait cut to what was left


def test_retrying_retries_only_retryable_outcomes_until_the_deadline():
    outcomes = iter([DestinationFull("full"), DestinationFull("full"), "done"])
    deadlines = []

    def attempt(reply_by):
        deadlines.append(reply_by)
        return next(outcomes)

    assert retrying(attempt, 5.0, None) == "done" and len(deadlines) == 3
    assert all(d is not None for d in deadlines)  # each reply waited for until a deadline
    assert retrying(lambda reply_by: reply_by, float("inf"), None) is None  # no deadline
    calls = []

    def refused(reply_by):
        calls.append(1)
        return OutOfBounds("never")

    assert isinstance(retrying(refused, 5.0, None), OutOfBounds) and len(calls) == 1
    full = lambda reply_by: DestinationFull("full")  # noqa: E731
    assert isinstance(retrying(full, 0.0, None), DestinationFull)
    assert isinstance(retrying(full, 5.0, lambda: True), DestinationFull)
