"""Lock bookkeeping for the per-destination locks (pure state machine, no semaphores).

The POSIX semaphore is the lock itself; this table is the adapter's knowledge of *who* holds
it, which a bare semaphore cannot tell. Only the adapter ever acquires a destination lock
(Fig 11 1103 / Fig 12 1203); in the Fig 12 flow it hands the held lock to a driver, which frees
it by posting the semaphore (1205). The adapter learns of that free the next time its own
non-blocking acquire succeeds AND the holder proved the free (it wrote the grant's token as
the control block's `released` word before posting: anyone can post a named semaphore), and
only then settles the grant; an acquire without that proof took a stray post, and the grant
stands. If the holder dies first, the
adapter takes the lock back (Invariant 5: locks always come back).

    FREE --acquire--> HELD --release--> FREE
                      HELD --grant----> GRANTED --settle (holder freed it)--> HELD
                                        GRANTED --reclaim (holder died)-----> HELD
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


# StrEnum, not Enum: the adapter looks (state, event) up on every request, and a plain Enum
# hashes in Python (hash of its name) where a str hashes in C.
class LockState(StrEnum):
    FREE = "free"
    HELD = "held"  # held by the adapter itself
    GRANTED = "granted"  # handed to a driver (Fig 12)


class LockEvent(StrEnum):
    ACQUIRE = "acquire"
    RELEASE = "release"
    GRANT = "grant"
    SETTLE = "settle"
    RECLAIM = "reclaim"


TRANSITIONS: dict[tuple[LockState, LockEvent], LockState] = {
    (LockState.FREE, LockEvent.ACQUIRE): LockState.HELD,
    (LockState.HELD, LockEvent.RELEASE): LockState.FREE,
    (LockState.HELD, LockEvent.GRANT): LockState.GRANTED,
    (LockState.GRANTED, LockEvent.SETTLE): LockState.HELD,
    (LockState.GRANTED, LockEvent.RECLAIM): LockState.HELD,
}


class LockStateError(RuntimeError):
    """An illegal transition: a bug in the adapter, never a partition's fault."""


@dataclass(frozen=True)
class Grant:
    """What the adapter handed a driver in the Fig 12 flow, to check when it comes back."""

    holder: int  # network ID of the driver holding the lock
    destination: int
    commit_value: int  # the head the holder must publish when its moves are done
    granted_at: float
    # Found in the segment by a restarted adapter: the reply may never have reached the holder,
    # so the grant ends as soon as the holder proves it is not moving (see
    # Engine._take_back_recovered) instead of waiting for a release that may never come.
    recovered: bool = False
    # The grant's token (receive_area.next_grant_token): a post of the lock ends the grant only
    # when the control block's `released` word equals it (the holder's proof); any other post
    # is a stray one, absorbed and counted.
    token: int = 0
    # A standing grant (Op.LEASE): the holder keeps the lock between its commits and gives it
    # back when recalled; the grant timeout runs from the recall, not from the grant.
    lease: bool = False


@dataclass
class LockRecord:
    state: LockState = LockState.FREE
    grant: Grant | None = None
    waits: int = 0  # how many times a request found this lock busy
    recalled: bool = False  # the adapter asked the lease's holder to give it back
    # when (None until a clock was known: a destination's death recalls with none; the grant
    # timeout then counts from the next look at the grants)
    recalled_at: float | None = None


@dataclass
class LockBook:
    records: dict[int, LockRecord] = field(default_factory=dict)

    def record(self, destination: int) -> LockRecord:
        rec = self.records.get(destination)  # not setdefault: that builds a record every call
        if rec is None:
            rec = self.records[destination] = LockRecord()
        return rec

    def _step(self, destination: int, event: LockEvent) -> LockRecord:
        rec = self.record(destination)
        try:
            rec.state = TRANSITIONS[(rec.state, event)]
        except KeyError:
            raise LockStateError(
                f"lock of network ID {destination}: event {event.value} illegal in state "
                f"{rec.state.value}"
            ) from None
        return rec

    def state(self, destination: int) -> LockState:
        return self.record(destination).state

    def acquired(self, destination: int) -> None:
        self._step(destination, LockEvent.ACQUIRE)

    def released(self, destination: int) -> None:
        self._step(destination, LockEvent.RELEASE)

    def granted(self, grant: Grant) -> None:
        rec = self._step(grant.destination, LockEvent.GRANT)
        rec.grant = grant

    def _end_grant(self, destination: int, event: LockEvent) -> Grant:
        rec = self._step(destination, event)
        grant, rec.grant, rec.recalled, rec.recalled_at = rec.grant, None, False, None
        assert grant is not None
        return grant

    def settled(self, destination: int) -> Grant:
        """The holder freed the lock; the adapter holds it again. Returns the finished grant."""
        return self._end_grant(destination, LockEvent.SETTLE)

    def reclaimed(self, destination: int) -> Grant:
        """The holder died; the adapter takes the lock back. Returns the abandoned grant."""
        return self._end_grant(destination, LockEvent.RECLAIM)

    def granted_to(self, holder: int) -> list[int]:
        """Destinations whose lock is currently granted to `holder`."""
        return [
            dst for dst, rec in self.records.items()
            if rec.state is LockState.GRANTED and rec.grant and rec.grant.holder == holder
        ]

    def all_free(self) -> bool:
        return all(rec.state is LockState.FREE for rec in self.records.values())
