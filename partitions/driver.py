"""The partition's device driver: asks the adapter to move data, over its pair of pipes.

A move is Fig 11 (Flow.FIG11: the adapter moves) or Fig 12 (Flow.FIG12: the adapter returns
the lock and physical addresses, the driver executes MVXL, publishes the commit, frees the lock
and rings the destination's doorbell). Outcomes are `Sent` or the typed exceptions of
adapter.errors; retryable ones (destination full, lock timeout) are retried by `send_retrying`
until its timeout. The driver is the partition's trusted code: programs reach it only through
their `Port` (partitions/port.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import posix_ipc

from adapter import receive_area
from adapter.errors import Status, XpmoveError, error_for
from adapter.moves import mvxl
from adapter.protocol import GRANT_OPS, Flow, Move, Op, Result
from adapter.translation import TranslationTable
from hypervisor.layout import SegmentLayout
from partitions.leasing import HeldLease, Leasing
from partitions.lending import Granted, Lending
from partitions.posting import Posted, Posting
from partitions.replies import Replies
from partitions.requesting import Requesting
from partitions.waiting import RoomWait, retrying

RECONNECT_WAIT_S = 5.0  # how long a request waits for a restarted adapter


class Sent(NamedTuple):
    """A committed send: where it went, the pair's sequence number of its first packet,
    the bytes it moved (a run's include its descriptor and each packet's padding to 8) and
    how many packets (sequence numbers) it carried."""

    dst_id: int
    seq: int  # of the first packet
    count: int  # type: ignore[assignment]  # bytes (a field named like tuple.count)
    records: int = 1  # packets, each with its own sequence number


class Driver(Lending, Leasing, Posting, Requesting):
    def __init__(
        self,
        network_id: int,
        physical: memoryview,
        layout: SegmentLayout,
        request_fd: int,
        reply_fd: int,
        locks: dict[int, posix_ipc.Semaphore],
        bells: dict[int, posix_ipc.Semaphore],
        recall: posix_ipc.Semaphore | None = None,
        rooms: dict[int, posix_ipc.Semaphore] | None = None,
    ):
        self.network_id = network_id
        self.physical = physical
        self.by_id = layout.by_id()
        self.request_fd = request_fd
        self.reply_fd = reply_fd
        self.locks = locks
        self.bells = bells
        self.layout = layout
        self.words = receive_area.words(physical)
        self.rings = {p.network_id: receive_area.RingWords.of(p) for p in layout.partitions}
        me = self.by_id[network_id].index
        # the word of the pair (me -> destination)'s last committed sequence number
        mine = receive_area.seq_words(layout)[me]
        self._seq_words = {p.network_id: mine[p.index] for p in layout.partitions}
        self._request_id = 0
        self._mutex = threading.Lock()
        self._reconnected = threading.Condition()
        self._generation = 0
        self._stale_fds: list[int] = []
        self._closing = False
        self._table = TranslationTable(layout.partitions)  # the adapter's checks, to resolve
        self.reconnect_wait = RECONNECT_WAIT_S
        self._replies = Replies()  # frames by id, a deadline, requests abandoned at theirs
        self.late_replies = 0  # replies that came after their request's deadline
        self.late_grants_returned = 0  # grants in them, given back unused
        self._reaper: threading.Thread | None = None  # takes late replies of abandoned grants
        self.recall = recall  # posted by the adapter when it wants a lease back
        self._leases: dict[int, HeldLease] = {}  # by destination (partitions/leasing.py)
        self.lent_leases: set[int] = set()  # destinations with a loan open under their lease
        self._keeper: threading.Thread | None = None  # answers recalls of leases
        self.keeper_errors = 0  # exceptions the keeper survived
        # destinations whose receiver wakes senders waiting for room (partitions/waiting.py);
        # the others (a cluster's proxy rings) are retried after a back-off
        self._rooms = {dst: RoomWait(self.words, self.rings[dst], bell)
                       for dst, bell in (rooms or {}).items() if dst != network_id}

    def room(self, dst_id: int) -> RoomWait | None:
        """How a send to `dst_id` refused for room waits for it (None: a back-off)."""
        return self._rooms.get(dst_id)

    def send_retrying(self, dst_id: int, offset: int, count: int, flow: Flow = Flow.FIG11,
                      run: bool = False, timeout: float = 0.0,
                      stop: Callable[[], bool] | None = None) -> Sent | XpmoveError:
        """`send_one`, retried with a growing pause while the outcome is retryable (destination
        full, lock timeout), until `timeout` passes or `stop()` is true; the last outcome.

        The wait for each reply ends with `timeout` too (at least REPLY_WAIT_MIN_S after the
        request, plus REPLY_GRACE_S); `timeout=inf` waits as long as supervision lets it."""
        return retrying(lambda reply_by: self.send_one(dst_id, offset, count, flow, run,
                                                       reply_by=reply_by), timeout, stop,
                        self.room(dst_id))

    def send_many(self, moves: list[tuple[int, int, int]], flow: Flow = Flow.FIG11,
                  reply_by: float | None = None) -> list[Sent | XpmoveError]:
        """One request carrying several moves (dst, offset, count); one outcome (Sent or the
        error) per move. `reply_by` as for send_one (raised here, for the whole request)."""
        op = Flow.parse(flow).op
        wire = [Move(self.network_id, dst, offset, count) for dst, offset, count in moves]
        busy = self._take_slot(self._slot_wait(reply_by))
        if busy is not None:
            raise busy
        try:
            results = self._survive_restart(op, wire, reply_by)
            if op == Op.GRANT:
                self._execute_grants(wire, results)
        finally:
            self._mutex.release()
        return [
            Sent(m.dst_id, r.seq, m.count) if r.status == Status.OK else
            error_for(r.status, src_id=m.src_id, dst_id=m.dst_id, offset=m.offset,
                      count=m.count, detail=r.detail)
            for m, r in zip(wire, results, strict=True)
        ]

    def send_one(self, dst_id: int, offset: int, count: int, flow: Flow = Flow.FIG11,
                 run: bool = False, reply_by: float | None = None) -> Sent | XpmoveError:
        """ONE move in ONE request, its outcome returned (never raised): the patent's literal
        flow, or with `run` a multiple-write run.

        A run is the `count` bytes at `offset` laid out as adapter.ring.RUN_DESCRIPTOR, then
        the packets, each padded to 8: ONE ring record and ONE MVXL, done by the adapter
        (fig11) or by us with the granted lock (fig12). The adapter checks the descriptor and
        writes the ring's record header and descriptor itself.

        `reply_by` (time.monotonic(); None: no deadline but supervision's) ends the wait for
        the adapter's answer: a move then ends `InDoubt`, a grant `AdapterGone` (see
        _survive_restart).
        """
        op = flow.run_op if run else flow.op
        move = Move(self.network_id, dst_id, offset, count)
        busy = self._take_slot(self._slot_wait(reply_by))
        if busy is not None:
            return busy
        return self._finish_one(op, move, run, reply_by, None)

    def _finish_one(self, op: int, move: Move, run: bool, reply_by: float | None,
                    posted: Posted | None) -> Sent | XpmoveError:
        """`send_one` from the round trip on (the driver's slot taken; freed here)."""
        try:
            results = self._survive_restart(op, (move,), reply_by, posted)
            if op in GRANT_OPS:
                self._execute_grants((move,), results)
            (r,) = results
        except XpmoveError as exc:
            return exc
        finally:
            self._mutex.release()
        if r.status != Status.OK:
            return error_for(r.status, src_id=self.network_id, dst_id=move.dst_id,
                             offset=move.offset, count=move.count, detail=r.detail)
        return Sent(move.dst_id, r.seq, move.count, r.detail if run else 1)

    @staticmethod
    def _slot_wait(reply_by: float | None) -> float:
        return -1.0 if reply_by is None else max(0.0, reply_by - time.monotonic())

    def _execute_grants(self, moves: Sequence[Move], results: tuple[Result, ...]) -> None:
        """Fig 12 steps 1204-1205: MVXL each granted move, commit, free the lock, ring."""
        commits: dict[int, int] = {}
        granted = {m.dst_id for m, r in zip(moves, results, strict=True) if r.status == Status.OK}
        try:
            for m, r in zip(moves, results, strict=True):
                if r.status == Status.OK:
                    mvxl(self.physical, r.dst_address, r.src_address, r.count)
                    commits[m.dst_id] = max(r.commit_value, commits.get(m.dst_id, 0))
            for dst, head in commits.items():
                receive_area.publish_head(self.words, self.by_id[dst].control, head)
        finally:  # every granted lock comes back, committed or not (then the adapter undoes it)
            for dst in granted:
                self._free_grant(dst, dst in commits)

    def _free_grant(self, dst: int, committed: bool) -> None:
        """Fig 12 step 1205: the proof that we are the holder, then the post of the lock; the
        doorbell if a commit was published (a grant freed uncommitted is undone by the
        adapter: its space and sequence numbers come back)."""
        receive_area.prove_release(self.words, self.rings[dst])
        self.locks[dst].release()
        if committed:
            receive_area.ring_doorbell(self.words, self.rings[dst], self.bells[dst])

    def grant_retrying(self, dst_id: int, offset: int, count: int, run: bool = False,
                       timeout: float = 0.0, stop: Callable[[], bool] | None = None,
                       uninit: bool = False) -> Granted | XpmoveError:
        """`take_grant` (`take_grant_uninit` if `uninit`), retried like `send_retrying` while
        the outcome is retryable (the destination full, its lock or this driver busy); the
        driver is free between tries."""
        take = self.take_grant_uninit if uninit else self.take_grant
        return retrying(lambda reply_by: take(dst_id, offset, count, run, reply_by=reply_by),
                        timeout, stop, self.room(dst_id))
