"""The adapter's side of leases (standing grants, Op.LEASE; the driver's side is
partitions/leasing.py): granting one, confirming one whose reply was lost, recalling one when
another request needs the lock, and keeping a LEASE behind the requests parked before it.

`Leases` is a part of `Engine` (adapter/engine.py), kept apart because it is one idea; the
attributes and methods it uses come from Engine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from adapter import receive_area
from adapter.errors import RingCorrupt, Status, XpmoveError
from adapter.locks import Grant, LockBook, LockState
from adapter.protocol import Op, Result, encode_reply

if TYPE_CHECKING:
    from adapter.engine import Bell, Work
    from adapter.translation import Translation
    from hypervisor.layout import PartitionLayout

OK, LEASE, GRANTED = Status.OK, Op.LEASE, LockState.GRANTED


class Leases:
    """Engine's methods for leases (see the module docstring)."""

    if TYPE_CHECKING:
        book: LockBook
        words: memoryview
        rings: dict[int, receive_area.RingWords]
        seq_words: list[list[int]]
        recalls: dict[int, Bell]
        counters: Counter[str]
        _parked: dict[int, Work]

        def _check_words(self, dst: PartitionLayout, ring: receive_area.RingWords, head: int,
                         tail: int, seq_word: int) -> None: ...

        def _failure(self, exc: XpmoveError, src_id: int, dst_id: int,
                     sender: int) -> Result: ...

        def _unlock(self, dst: int) -> None: ...

    def _lease(self, me: int, checked: list[tuple[int, Translation]],
               results: list[Result | None], now: float) -> None:
        """Grant `me` the destination's lock as a lease (its lock held): the driver will
        commit records there itself, one after another, until it gives the lock back. The
        control block's words are checked first, as before any commit; then, in this order
        (a crash between any two stores recovers): the writer, the token, the lease mark, and
        the holder last."""
        for i, t in checked:  # one move (submit refuses any other lease request)
            dst, ring = t.dst, self.rings[t.dst.network_id]
            seq_word = self.seq_words[t.src.index][dst.index]
            words = self.words
            try:
                self._check_words(dst, ring, words[ring.head], words[ring.tail], seq_word)
            except RingCorrupt as exc:
                results[i] = self._failure(exc, me, dst.network_id, me)
                self._unlock(dst.network_id)
                continue
            receive_area.note_writer(words, ring, me)  # every byte it will write is ours
            token = receive_area.next_grant_token(words, ring)
            receive_area.mark_lease(words, ring, token)
            receive_area.set_holder(words, dst, me)
            self.book.granted(Grant(me, dst.network_id, 0, now, token=token, lease=True))
            self.counters["leases"] += 1
            results[i] = self._lease_result(t, token)

    @staticmethod
    def _lease_result(t: Translation, token: int) -> Result:
        """What the holder checks its lease against: the receive area, and the lease's token
        (as the commit value: a lease commits nothing by the reply) that its give-back must
        name."""
        dst = t.dst
        return Result(OK, 0, 0, t.src_address, dst.receive_base, dst.receive_size, token)

    def _holds_lease(self, me: int, dst: int) -> bool:
        """Whether `me` holds `dst`'s lock as a lease it has not given back."""
        grant = self.book.record(dst).grant
        return self._granted_to(dst, me) and grant is not None and grant.lease

    def _renew_lease(self, me: int, work: Work, now: float) -> bytes:
        """A LEASE from the holder of that very lease: its reply was lost (the adapter
        restarted, and a recovered lease is kept). The lease is confirmed, not granted again;
        a recall in force stays in force (its clock too), so the holder gives it back after
        its next packet (or its keeper, if it sends none) and asking again buys no time here
        (the driver holds it as a fresh lease, FIRST_COMMIT_S, at most)."""
        (i, t), = work.checked
        rec = self.book.record(t.dst.network_id)
        assert rec.grant is not None
        rec.grant = replace(rec.grant, recovered=False)
        self.counters["leases_renewed"] += 1
        work.results[i] = self._lease_result(t, rec.grant.token)
        return encode_reply(LEASE, work.request.request_id, OK,
                            work.results)  # type: ignore[arg-type]  # all filled

    def _waited_for(self, me: int, dst: int) -> bool:
        """Whether another partition's request parked before `me`'s (or any, if `me` has
        none parked) waits for `dst`: a LEASE then waits behind it, so a holder asking again
        at once cannot take the lock back before the sender its recall was for."""
        for network_id, work in self._parked.items():
            if network_id == me:
                return False
            dsts = {t.dst.network_id for _, t in work.checked}
            if dst in dsts and not any(self._granted_to(d, me) for d in dsts):
                return True  # (one that waits for a lock `me` holds would wait for us)
        return False

    def _granted_to(self, dst: int, holder: int) -> bool:
        """Whether `dst`'s lock is granted to `holder`, which has not given it back yet."""
        rec = self.book.record(dst)
        grant = rec.grant
        return (rec.state is GRANTED and grant is not None and grant.holder == holder
                and self.words[self.rings[dst].released] != grant.token)

    def _recall(self, dst: int, now: float | None) -> None:
        """A request found `dst`'s lock busy, or `dst` stopped being a destination: if a lease
        holds it, ask the holder for it back (the recall word, then its driver's recall
        semaphore), once per lease. From `now` on (None: from the next look at the grants)
        the holder has the grant timeout to give it back."""
        rec = self.book.record(dst)
        grant = rec.grant
        if rec.state is not GRANTED or grant is None or not grant.lease or rec.recalled:
            return
        rec.recalled, rec.recalled_at = True, now
        receive_area.recall_lease(self.words, self.rings[dst], grant.token)
        bell = self.recalls.get(grant.holder)
        if bell is not None:
            bell.release()
        self.counters["leases_recalled"] += 1

