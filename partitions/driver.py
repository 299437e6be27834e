"""The partition's device driver: asks the adapter to move data, over its pair of pipes.

A move is Fig 11 (Flow.FIG11: the adapter moves) or Fig 12 (Flow.FIG12: the adapter returns
the lock and physical addresses, the driver executes MVXL, publishes the commit, frees the lock
and rings the destination's doorbell). Outcomes are `Sent` or the typed exceptions of
adapter.errors; retryable ones (destination full, lock timeout) are retried by `send_retrying`
until its timeout. The driver is the partition's trusted code: programs reach it only through
their `Port` (partitions/port.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import posix_ipc

from adapter import receive_area
from adapter.errors import AdapterGone, InDoubt, Status, XpmoveError, error_for
from adapter.moves import mvxl
from adapter.protocol import (
    GRANT_OPS,
    MAX_REPLY_SIZE,
    REPLY_HEADER,
    RESULT,
    Flow,
    Move,
    Op,
    ProtocolViolation,
    Result,
    decode_reply_header,
    decode_results,
    encode_request,
)
from adapter.translation import TranslationTable
from hypervisor.layout import SegmentLayout

RETRY_BACKOFF_S = (0.00005, 0.002)  # first and largest pause between retries
RECONNECT_WAIT_S = 5.0  # how long a request waits for a restarted adapter


class Sent(NamedTuple):
    """A move the adapter accepted: where it went and its per-pair sequence number."""

    dst_id: int
    seq: int  # of the first record
    count: int  # type: ignore[assignment]  # bytes (a field named like tuple.count)
    records: int = 1


class Driver:
    def __init__(
        self,
        network_id: int,
        physical: memoryview,
        layout: SegmentLayout,
        request_fd: int,
        reply_fd: int,
        locks: dict[int, posix_ipc.Semaphore],
        bells: dict[int, posix_ipc.Semaphore],
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

    def send_retrying(self, dst_id: int, offset: int, count: int, flow: Flow = Flow.FIG11,
                      run: bool = False, timeout: float = 0.0,
                      stop: Callable[[], bool] | None = None) -> Sent | XpmoveError:
        """`send_one`, retried with a growing pause while the outcome is retryable (destination
        full, lock timeout), until `timeout` passes or `stop()` is true; the last outcome."""
        deadline = time.monotonic() + timeout
        pause = RETRY_BACKOFF_S[0]
        while True:
            outcome = self.send_one(dst_id, offset, count, flow, run)
            if (isinstance(outcome, Sent) or not outcome.retryable
                    or (stop is not None and stop()) or time.monotonic() >= deadline):
                return outcome
            time.sleep(pause)  # back-off while the destination drains, not synchronisation
            pause = min(pause * 2, RETRY_BACKOFF_S[1])

    def send_many(self, moves: list[tuple[int, int, int]], flow: Flow = Flow.FIG11
                  ) -> list[Sent | XpmoveError]:
        """One request carrying several moves (dst, offset, count); one outcome (Sent or the
        error) per move."""
        op = Flow.parse(flow).op
        wire = [Move(self.network_id, dst, offset, count) for dst, offset, count in moves]
        with self._mutex:
            results = self._survive_restart(op, wire)
            if op == Op.GRANT:
                self._execute_grants(wire, results)
        return [
            Sent(m.dst_id, r.seq, m.count) if r.status == Status.OK else
            error_for(r.status, src_id=m.src_id, dst_id=m.dst_id, offset=m.offset,
                      count=m.count, detail=r.detail)
            for m, r in zip(wire, results, strict=True)
        ]

    def send_one(self, dst_id: int, offset: int, count: int, flow: Flow = Flow.FIG11,
                 run: bool = False) -> Sent | XpmoveError:
        """ONE move in ONE request, its outcome returned (never raised): the patent's literal
        flow, or with `run` a multiple-write run.

        A run is the `count` bytes at `offset` laid out as adapter.ring.RUN_DESCRIPTOR, then
        the packets, each padded to 8: ONE ring record and ONE MVXL, done by the adapter
        (fig11) or by us with the granted lock (fig12). The adapter checks the descriptor and
        writes the ring's record header and descriptor itself.
        """
        op = flow.run_op if run else flow.op
        move = Move(self.network_id, dst_id, offset, count)
        try:
            with self._mutex:
                results = self._survive_restart(op, (move,))
                if op in GRANT_OPS:
                    self._execute_grants((move,), results)
                (r,) = results
        except XpmoveError as exc:
            return exc
        if r.status != Status.OK:
            return error_for(r.status, src_id=self.network_id, dst_id=dst_id, offset=offset,
                             count=count, detail=r.detail)
        return Sent(dst_id, r.seq, count, r.detail if run else 1)

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
            for dst in granted:  # the proof that we are the holder, then the post
                receive_area.prove_release(self.words, self.rings[dst])
                self.locks[dst].release()
                if dst in commits:
                    receive_area.ring_doorbell(self.words, self.rings[dst], self.bells[dst])

    def reconnect(self, request_fd: int, reply_fd: int) -> None:
        """Fresh pipes to a restarted adapter (from the hypervisor); wakes a waiting request.

        A generation number, not a flag: a reconnect that lands before the sender noticed the
        old adapter's death is still seen. The old descriptors are closed only with no request
        in flight (under the driver's mutex), so a sender never writes to a recycled number.
        """
        with self._reconnected:
            self._stale_fds += [self.request_fd, self.reply_fd]
            self.request_fd, self.reply_fd = request_fd, reply_fd
            self._generation += 1
            self._reconnected.notify_all()
        if self._mutex.acquire(blocking=False):
            try:
                self._close_stale()
            finally:
                self._mutex.release()

    def _close_stale(self) -> None:
        with self._reconnected:
            stale, self._stale_fds = self._stale_fds, []
        for fd in stale:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        """The partition is shutting down: wake any request waiting for a reconnect."""
        with self._reconnected:
            self._closing = True
            self._reconnected.notify_all()

    def _await_reconnect(self, generation: int) -> bool:
        with self._reconnected:
            self._reconnected.wait_for(
                lambda: self._closing or self._generation > generation, self.reconnect_wait)
            return not self._closing and self._generation > generation

    def _pair_seqs(self, moves: Sequence[Move]) -> dict[int, int]:
        """Last committed sequence number of each pair (me -> destination) in the request."""
        words, seq_words = self.words, self._seq_words
        return {m.dst_id: words[seq_words[m.dst_id]] for m in moves if m.dst_id in seq_words}

    def _survive_restart(self, op: int, moves: Sequence[Move]) -> tuple[Result, ...]:
        """A round trip that outlives an adapter crash without losing or doubling a move.

        If the adapter dies with our request in flight, wait for the restarted one (it has
        settled every half-done commit before we are reconnected), then learn from the
        per-pair sequence numbers whether our moves committed: committed ones are reported as
        sent, the rest are sent again. A Fig 12 grant never commits without us, so it is
        always sent again.
        """
        before = self._pair_seqs(moves)
        generation = self._generation
        try:
            return self._round_trip(op, moves)
        except AdapterGone as exc:
            if not self._await_reconnect(generation):
                if op in GRANT_OPS:
                    raise  # a grant never commits without us: nothing is in doubt
                raise InDoubt(f"{exc}; the adapter did not come back within "
                              f"{self.reconnect_wait} s, so whether the move committed is "
                              f"unknown (compare the pair's sequence numbers)") from None
        self._close_stale()
        try:
            return self._resolve(op, moves, before)
        except AdapterGone as exc:
            raise InDoubt(f"{exc} again while resolving a move after a restart") from None

    def _resolve(self, op: int, moves: Sequence[Move], before: dict[int, int]
                 ) -> tuple[Result, ...]:
        """After a restart: which moves of the lost request committed (per-pair sequence
        numbers), and a fresh request for the rest. Moves that fail the adapter's own
        deterministic checks (translate) cannot have committed and are not credited."""
        after = self._pair_seqs(moves) if op not in GRANT_OPS else before
        committed: dict[int, int] = {d: after[d] - before[d] for d in before}
        if op == Op.MOVE_RUN:  # a request carries one run; it committed whole or not at all
            if all(committed.values()):
                return tuple(Result(Status.OK, committed[m.dst_id], before[m.dst_id] + 1,
                                    count=m.count) for m in moves)
            return self._round_trip(op, moves)
        redo = [m for m in moves if committed.get(m.dst_id, 0) == 0 or not self._valid(m)]
        redone = iter(self._round_trip(op, redo) if redo else ())
        results = []
        for m in moves:
            if committed.get(m.dst_id, 0) > 0 and self._valid(m):
                committed[m.dst_id] -= 1
                before[m.dst_id] += 1
                results.append(Result(Status.OK, seq=before[m.dst_id], count=m.count))
            else:
                results.append(next(redone))
        return tuple(results)

    def _valid(self, move: Move) -> bool:
        try:
            self._table.translate(move.src_id, move.dst_id, move.offset, move.count)
        except XpmoveError:
            return False
        return True

    def _round_trip(self, op: int, moves: Sequence[Move]) -> tuple[Result, ...]:
        self._request_id = (self._request_id + 1) & 0xFFFFFFFF
        frame = encode_request(op, self._request_id, moves)
        try:
            written = 0
            while written < len(frame):
                written += os.write(self.request_fd, frame[written:])
        except OSError as exc:
            raise AdapterGone(f"the adapter is gone ({exc}); retry after it restarts") from None
        # usually ONE read: the adapter writes a reply in one go
        reply = self._read_more(b"", REPLY_HEADER.size)
        _, request_id, status, n = decode_reply_header(reply[:REPLY_HEADER.size])
        reply = self._read_more(reply, REPLY_HEADER.size + n * RESULT.size)
        results = decode_results(reply, n, REPLY_HEADER.size)
        if status != Status.OK:
            raise error_for(status, src_id=self.network_id, dst_id=moves[0].dst_id,
                            offset=moves[0].offset, count=moves[0].count, detail=0)
        if request_id != self._request_id or n != len(moves):
            raise ProtocolViolation(f"reply {request_id} with {n} results does not answer "
                                    f"request {self._request_id} of {len(moves)} moves")
        return results

    def _read_more(self, frame: bytes, size: int) -> bytes:
        """`frame` read on to at least `size` bytes. Reading up to a whole reply's worth never
        takes bytes of another: one request is in flight at a time (the mutex)."""
        while len(frame) < size:
            chunk = os.read(self.reply_fd, MAX_REPLY_SIZE - len(frame))
            if not chunk:
                raise AdapterGone("the adapter closed the reply pipe; retry after it restarts")
            frame += chunk
        return frame

