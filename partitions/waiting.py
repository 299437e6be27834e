"""How a driver waits out a retryable refusal: for room in a full ring, else a back-off.

A send refused because its destination's ring is full (DestinationFull) used to sleep a
back-off (50 us doubling to 2 ms) and ask again. A sender ahead of its receiver then asked
about three times a run (fig12-lease, 64 KiB b128: 2.7 refusals of 15-16 us each, and the
sleeps, 171-176 us of the sender's CPU a run; benchmarks/README.md). Now it sleeps on the
destination's ROOM semaphore: it sets the ring's `wanting` word, and the receiver, moving its
tail to where the ring is at most half full, posts the semaphore (adapter/receive_area.py,
`ring_room_bell`). One refusal, one wait, one wake.

The wait stays bounded (ROOM_WAIT_S): a wake-up can be missed (the ordering in
`ring_room_bell`), a post wakes one sender of several (the others look again at the bound),
and a destination whose receiver is on another host (a cluster's proxy ring) has no room
semaphore at all; there the back-off is kept. A missed wake-up is a late look, never a lost packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import posix_ipc

from adapter import receive_area
from adapter.errors import DestinationFull, XpmoveError

RETRY_BACKOFF_S = (0.00005, 0.002)  # first and largest pause between retries
ROOM_WAIT_S = 0.002  # the longest wait for room before the sender looks again by itself
# A reply is waited for until the caller's deadline, but at least REPLY_WAIT_MIN_S, plus
# REPLY_GRACE_S: a timeout of 0 (one attempt) or a retry late in its window is not cut short by
# a busy adapter or a loaded machine, and the adapter's answer to a request parked behind a
# busy lock (LOCK_TIMEOUT after the lock timeout, 1 s by default) comes before the deadline.
REPLY_WAIT_MIN_S = 1.0
REPLY_GRACE_S = 0.25

T = TypeVar("T")


class RoomWait:
    """A sender's wait for room in ONE destination's ring (its `wanting` word and room
    semaphore). `mark()` before a try, `wait(mark, timeout)` after it was refused for room."""

    __slots__ = ("words", "ring", "bell")

    def __init__(self, words: memoryview, ring: receive_area.RingWords,
                 bell: posix_ipc.Semaphore):
        self.words, self.ring, self.bell = words, ring, bell

    def mark(self) -> int:
        """The ring's tail now: read BEFORE the try whose refusal `wait` then waits out."""
        return self.words[self.ring.tail]

    def wait(self, mark: int, timeout: float) -> bool:
        """Sleep until the receiver frees room, or `timeout`: True if woken (or room was freed
        since `mark`), False if the time ran out. `wanting` set first, then the tail read
        again, so room freed between the refusal and the mark is not slept on."""
        words, ring = self.words, self.ring
        receive_area.want_room(words, ring)
        if words[ring.tail] != mark:
            return True
        try:
            self.bell.acquire(timeout)
        except posix_ipc.BusyError:
            return False
        return True


def time_left(timeout: float | None, started: float) -> float:
    """What is left at this moment of `timeout` (None: no limit, inf) begun at `started`
    (time.monotonic): what a fast path that tried first hands `retrying`."""
    return float("inf") if timeout is None else max(0.0, timeout - (time.monotonic() - started))


def retrying(attempt: Callable[[float | None], T | XpmoveError], timeout: float,
             stop: Callable[[], bool] | None, room: RoomWait | None = None,
             tried: tuple[T | XpmoveError, int] | None = None) -> T | XpmoveError:
    """`attempt(reply_by)` again while its outcome is a retryable error (destination full, lock
    timeout), until `timeout` passes or `stop()` is true; the last outcome. Between tries, a
    refusal for room waits on `room` (the destination's, if it has one; at most ROOM_WAIT_S),
    any other a growing pause. `reply_by` ends each attempt's wait for its reply: the deadline,
    but at least REPLY_WAIT_MIN_S after the request, plus REPLY_GRACE_S (None with an infinite
    timeout). `tried`: the outcome of a try the caller made itself (a fast path), with the
    room mark taken before it, judged as the first try's."""
    deadline = time.monotonic() + timeout
    pause = RETRY_BACKOFF_S[0]
    while True:
        now = time.monotonic()
        if tried is not None:
            (outcome, mark), tried = tried, None
        else:
            reply_by = (None if deadline == float("inf") else
                        max(deadline, now + REPLY_WAIT_MIN_S) + REPLY_GRACE_S)
            mark = room.mark() if room is not None else 0
            outcome = attempt(reply_by)
        if not isinstance(outcome, XpmoveError) or not outcome.retryable:
            return outcome
        if stop is not None and stop():
            outcome.cut_short = True  # the stop ended the wait, not the destination
            return outcome
        now = time.monotonic()
        if now >= deadline:
            return outcome
        if room is not None and isinstance(outcome, DestinationFull):
            room.wait(mark, min(ROOM_WAIT_S, deadline - now))
            continue
        time.sleep(pause)  # back-off while the lock is busy, not synchronisation
        pause = min(pause * 2, RETRY_BACKOFF_S[1])
