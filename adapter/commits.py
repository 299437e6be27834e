"""The engine's commit of a request whose destination locks are all held: ring space reserved,
the commit begun, then the records moved (Fig 11: headers, MVXL, `head` published, lock freed,
doorbell) or granted (Fig 12: headers written, the lock and the physical addresses returned to
the driver). A run is ONE record (and in Fig 11 ONE MVXL), its descriptor written by us.

`Commits` is a part of `Engine` (adapter/engine.py), kept apart because it is one idea; the
attributes and methods it uses come from Engine. The protocol's steps themselves are
adapter/receive_area.py's functions; a LEASE is committed by Leases (adapter/leases.py).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from adapter import receive_area
from adapter.errors import RingCorrupt, Status, XpmoveError
from adapter.locks import Grant, LockBook
from adapter.moves import mvxl
from adapter.protocol import GRANT_OPS, Op, Result
from adapter.ring import KIND_RUN, RUN_DESCRIPTOR, Reservation, reserve

if TYPE_CHECKING:
    from adapter.engine import Bell
    from adapter.translation import Translation
    from hypervisor.layout import PartitionLayout

# Module aliases for the per-request path (as in adapter/engine.py).
MOVE, MOVE_RUN, LEASE = Op.MOVE, Op.MOVE_RUN, Op.LEASE
OK = Status.OK


class Commits:
    """Engine's methods that commit a request (see the module docstring)."""

    if TYPE_CHECKING:
        by_id: dict[int, PartitionLayout]
        mem: memoryview
        words: memoryview
        rings: dict[int, receive_area.RingWords]
        seq_words: list[list[int]]
        bells: dict[int, Bell]
        book: LockBook
        counters: Counter[str]
        bytes_out: Counter[int]
        bytes_in: Counter[int]
        corrupt: dict[int, str]

        def _failure(self, exc: XpmoveError, src_id: int, dst_id: int,
                     sender: int) -> Result: ...

        def _fail(self, dst: int, exc: RingCorrupt) -> RingCorrupt: ...

        def _unlock(self, dst: int) -> None: ...

        def _lease(self, me: int, checked: list[tuple[int, Translation]],
                   results: list[Result | None], now: float) -> None: ...

    def _execute(self, me: int, op: int, checked: list[tuple[int, Translation]],
                 results: list[Result | None], runs: dict[int, tuple[int, int]],
                 now: float) -> None:
        """All destination locks are held: reserve, begin the commit, move (Fig 11) or grant.

        Per destination the order is what makes a crash at any point recoverable: pending
        commit first, then sequence numbers, headers and payload, and `head` last.
        """
        if op == LEASE:
            self._lease(me, checked, results, now)
            return
        if len(checked) == 1:  # every lone move and every run: nothing to group
            by_dst = {checked[0][1].dst.network_id: checked}
        else:
            by_dst = {}
            for i, t in checked:
                by_dst.setdefault(t.dst.network_id, []).append((i, t))
        words, mem, counters = self.words, self.mem, self.counters
        header, descriptor = receive_area.write_record_header, receive_area.write_run_descriptor
        for dst_id, moves in by_dst.items():
            dst, ring = self.by_id[dst_id], self.rings[dst_id]
            src = moves[0][1].src
            seq_word = self.seq_words[src.index][dst.index]
            head, tail = words[ring.head], words[ring.tail]
            try:  # the words this commit builds on, before anything is written
                self._check_words(dst, ring, head, tail, seq_word)
            except RingCorrupt as exc:
                for i, t in moves:
                    results[i] = self._failure(exc, t.src.network_id, dst_id, t.src.network_id)
                self._unlock(dst_id)
                continue
            placed: list[tuple[int, Translation, Reservation]] = []
            for i, t in moves:
                try:  # a run is one record too: contiguous, never wrapped
                    r = reserve(head, tail, dst.receive_size, t.count, dst.window)
                except XpmoveError as exc:
                    results[i] = self._failure(exc, t.src.network_id, dst_id, t.src.network_id)
                    if exc.status is Status.DESTINATION_FULL:
                        results[i] = Result(Status.DESTINATION_FULL,
                                            dst.receive_size - (head - tail))
                    continue
                placed.append((i, t, r))
                head = r.new_head
            if not placed:
                self._unlock(dst_id)
                continue
            receive_area.note_writer(words, ring, src.network_id)  # before any byte of it
            records = (sum(runs[i][0] if i in runs else 1 for i, _, _ in placed) if runs
                       else len(placed))
            seq = receive_area.begin_commit(words, ring, head, src.index, seq_word, records)
            moved = 0
            for i, t, r in placed:
                if i in runs:
                    # Multiple-write: ONE record for the whole run, and in Fig 11 ONE MVXL;
                    # then the descriptor, from the values checked at request time.
                    packets, length = runs[i]
                    payload = header(mem, dst, r, src.network_id, seq, KIND_RUN)
                    if op == MOVE_RUN:
                        mvxl(mem, payload, t.src_address, t.count)
                        descriptor(mem, payload, packets, length)
                        results[i] = Result(OK, packets, seq, t.src_address, payload, t.count,
                                            head)
                    else:  # the driver moves the packets; the descriptor is ours
                        descriptor(mem, payload, packets, length)
                        skip = RUN_DESCRIPTOR.size
                        results[i] = Result(OK, packets, seq, t.src_address + skip,
                                            payload + skip, t.count - skip, head)
                    seq += packets
                else:
                    payload = header(mem, dst, r, src.network_id, seq)
                    if op == MOVE:
                        mvxl(mem, payload, t.src_address, t.count)
                    results[i] = Result(OK, 0, seq, t.src_address, payload, t.count, head)
                    seq += 1
                moved += t.count
            counters["moves"] += records
            counters["bytes"] += moved
            self.bytes_out[src.network_id] += moved
            self.bytes_in[dst_id] += moved
            if op not in GRANT_OPS:
                receive_area.publish_head(words, dst.control, head)  # the commit
                self._unlock(dst_id)
                receive_area.ring_doorbell(words, ring, self.bells[dst_id])
            else:
                token = receive_area.next_grant_token(words, ring)
                receive_area.set_holder(words, dst, me)
                self.book.granted(Grant(me, dst_id, head, now, token=token))
                counters["grants"] += 1

    def _check_words(self, dst: PartitionLayout, ring: receive_area.RingWords, head: int,
                     tail: int, seq_word: int) -> None:
        """Lock held, last commit settled: RingCorrupt (and the destination failed) unless
        `head` and `tail` are possible, `head` is what the last commit published (the pending
        head: a plausible but forged head differs) and the pair's sequence word leaves room."""
        dst_id = dst.network_id
        if dst_id in self.corrupt:
            raise RingCorrupt(self.corrupt[dst_id])
        try:
            receive_area.check_commit_words(self.words, dst, ring, head, tail, seq_word)
        except RingCorrupt as exc:
            raise self._fail(dst_id, exc) from None
