"""The engine's destination locks and the Fig 12 grants it makes of them: taking a lock without
waiting, freeing it, settling a grant its holder finished (proved by the `released` word), taking
a lock back from a holder that died (Invariant 5: locks always come back), the grants still
held (for the grant timeout), and every lock brought to a known state from the segment when a
restarted adapter starts.

`Grants` is a part of `Engine` (adapter/engine.py), kept apart because it is one idea; the
attributes and methods it uses come from Engine. Who holds what is adapter/locks.py's LockBook;
this is the engine acting on that book, the semaphores and the segment's words.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from adapter import receive_area
from adapter.errors import RingCorrupt
from adapter.locks import Grant, LockBook, LockState
from adapter.translation import PartitionState

if TYPE_CHECKING:
    from adapter.engine import Lock
    from adapter.translation import TranslationTable
    from hypervisor.layout import PartitionLayout, SegmentLayout

GRANTED = LockState.GRANTED


class Grants:
    """Engine's methods for its locks and grants (see the module docstring)."""

    if TYPE_CHECKING:
        layout: SegmentLayout
        by_id: dict[int, PartitionLayout]
        table: TranslationTable
        words: memoryview
        rings: dict[int, receive_area.RingWords]
        locks: dict[int, Lock]
        book: LockBook
        counters: Counter[str]
        errors: Counter[str]
        _recovered_holders: set[int]

        def _fail(self, dst: int, exc: RingCorrupt) -> RingCorrupt: ...

    # -- start -------------------------------------------------------------------------
    def recover(self, now: float, connected: Iterable[int] | None = None) -> None:
        """Bring every destination lock to a known state from what the segment says; the
        partitions not in `connected` (default: all are) are dead, not destinations.

        On a first start every lock is free and this changes nothing. After an adapter crash a
        lock may still be taken by the dead adapter (taken back here, its half-done commit
        settled) or granted to a driver (kept as a grant until its holder frees it or proves it
        is not moving: _take_back_recovered; the grant reply may have died with the old
        adapter).
        """
        for dst_id, dst in self.by_id.items():
            holder = receive_area.read_holder(self.words, dst)
            if holder and (holder not in self.by_id or holder == dst_id):
                self._fail(dst_id, RingCorrupt(
                    f"network ID {dst_id}'s control block: holder {holder} is not another "
                    f"partition"))
            elif holder:
                self.book.acquired(dst_id)
                ring = self.rings[dst_id]
                token = receive_area.read_grant_token(self.words, ring)
                # A lease stays its holder's: it commits without asking us, so its next
                # request proves nothing about it. It ends when the holder gives it back
                # (recalled like any lease) or dies.
                marked = receive_area.lease_token(self.words, ring)
                lease = token != 0 and marked == token
                if marked and not lease:
                    self._fail(dst_id, RingCorrupt(
                        f"network ID {dst_id}'s control block: lease {marked} is neither 0 nor "
                        f"the grant's token {token}"))
                self.book.granted(Grant(holder, dst_id, 0, now, recovered=True, token=token,
                                        lease=lease))
                if not lease:
                    self._recovered_holders.add(holder)
                continue
            if not self.locks[dst_id].try_acquire():
                self.counters["locks_reclaimed"] += 1  # held by the adapter that died
            self.book.acquired(dst_id)
            self._settle(dst_id)
            self._unlock(dst_id)
        if connected is not None:
            alive = set(connected)
            for network_id in self.by_id:
                if network_id not in alive:  # dead when we started: not a destination
                    self.table.set_state(network_id, PartitionState.DEAD)
                    self._recovered_holders.discard(network_id)
                    for leased in self.book.granted_to(network_id):  # its leases too
                        self._take_back(leased)

    def _take_back_recovered(self, holder: int) -> None:
        """Recovered grants of `holder` end when it proves it is not mid-move: it is not
        connected, its pipe closed, or it sent a new request (its driver sends one at a time
        and finishes a grant before asking again)."""
        if holder not in self._recovered_holders:  # the common case, on every request: O(1)
            return
        self._recovered_holders.discard(holder)
        for dst in self.book.granted_to(holder):
            grant = self.book.record(dst).grant
            if grant is not None and grant.recovered and not grant.lease:
                self._take_back(dst)

    # -- locks -------------------------------------------------------------------------
    def _try_lock(self, dst: int) -> bool:
        lock = self.locks[dst]
        if not lock.try_acquire():
            return False
        if lock.value:
            self._absorb_stray_releases(lock)
        rec = self.book.record(dst)
        if rec.state is GRANTED:
            grant = rec.grant
            if grant is not None and self.words[self.rings[dst].released] != grant.token:
                # Not the holder's free (it writes the token first): a stray post. We keep the
                # unit we took, the grant stands; the holder's own post frees it later.
                self.errors["stray_lock_release"] += 1
                return False
            self.book.settled(dst)
            self._settle(dst)
        else:
            self.book.acquired(dst)
        return True

    def _absorb_stray_releases(self, lock: Lock) -> None:
        """We hold the lock, so its value must be 0. Any partition can open the semaphore by
        name; an extra release would let two writers in. Take the surplus back, count it."""
        while lock.value > 0:
            if not lock.try_acquire():
                break
            self.errors["stray_lock_release"] += 1

    def _settle(self, dst: int) -> None:
        """A grant ended (or a restarted adapter found one): undo it if never committed. A
        pending commit whose words are impossible fails the destination (never raises)."""
        try:
            if not receive_area.settle_commit(self.words, self.layout, self.by_id[dst]):
                self.counters["grants_abandoned"] += 1
        except RingCorrupt as exc:
            self._fail(dst, exc)

    def _take_back(self, dst: int) -> None:
        """The holder of a granted lock died: the lock comes back (Invariant 5)."""
        if self.locks[dst].try_acquire():
            self.book.settled(dst)  # it had freed the lock before dying
        else:
            self.book.reclaimed(dst)
            self.counters["locks_reclaimed"] += 1
        self._settle(dst)
        self._unlock(dst)

    def _unlock(self, dst: int) -> None:
        self.book.released(dst)
        self.locks[dst].release()

    def settle_finished_grants(self) -> None:
        """Settle every grant whose holder already freed the lock, so states are current."""
        for dst, rec in list(self.book.records.items()):
            if rec.state is GRANTED and self._try_lock(dst):
                self._unlock(dst)

    # -- grants still held -------------------------------------------------------------
    def held_grants(self, now: float) -> dict[str, dict]:
        """Destination -> {"holder", "age_s", "lease"} of every lock granted to a driver and
        not freed yet (freed ones are settled first by stats()). A lease counts its age from
        its recall, and is left out while nobody waits for it."""
        held = {}
        for dst, rec in self.book.records.items():
            grant = rec.grant
            if rec.state is not GRANTED or grant is None:
                continue
            if grant.lease and not rec.recalled:
                continue  # a lease nobody waits for: its holder may keep it
            if grant.lease and rec.recalled_at is None:
                rec.recalled_at = now  # recalled with no clock: the timeout starts now
            since = rec.recalled_at if grant.lease else grant.granted_at
            assert since is not None
            held[str(dst)] = {"holder": grant.holder, "age_s": round(max(0.0, now - since), 3),
                              "lease": grant.lease}
        return held
