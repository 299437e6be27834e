"""The driver's requests: one round trip on the pipes that outlives an adapter crash.

`Requesting` is a part of `Driver` (partitions/driver.py), kept apart because it is one idea:
what a request needs beyond writing it and reading its reply. A restarted adapter hands the
driver fresh pipes (`reconnect`, a generation number); a request caught by the crash is
resolved from the pair's sequence words, so a move is never lost nor done twice; a reply that
comes after its request's deadline is taken later, by request id, and a grant in it is given
back at once (a reaper thread), so a slow adapter never leaves a destination's lock held.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from adapter.errors import AdapterGone, InDoubt, Status, XpmoveError, error_for
from adapter.protocol import (
    GRANT_OPS,
    REPLY_HEADER,
    Move,
    Op,
    ProtocolViolation,
    Result,
    decode_results,
    encode_request,
)
from partitions.driver_parts import DriverParts
from partitions.replies import Frame, Unanswered

if TYPE_CHECKING:
    from adapter.translation import TranslationTable
    from partitions.posting import Posted
    from partitions.replies import Replies

REAP_SLICE_S = 0.1  # the late-reply thread re-checks its pipe and the driver this often


class _NotSent(AdapterGone):
    """The request never reached an adapter (writing it failed: EPIPE, EBADF)."""


class Requesting(DriverParts):
    """Driver's round trips with the adapter; its state is set by `Driver.__init__`."""

    if TYPE_CHECKING:
        request_fd: int
        reply_fd: int
        reconnect_wait: float  # RECONNECT_WAIT_S (partitions/driver.py)
        late_replies: int
        late_grants_returned: int
        _request_id: int
        _reconnected: threading.Condition  # guards the pipes' generation
        _generation: int
        _stale_fds: list[int]
        _closing: bool
        _table: TranslationTable
        _replies: Replies
        _reaper: threading.Thread | None
        _seq_words: dict[int, int]

        def _free_grant(self, dst: int, committed: bool) -> None: ...

        def _free_lease(self, dst_id: int, token: int) -> bool: ...

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

    def _await_reconnect(self, generation: int, until: float | None = None) -> bool:
        wait = self.reconnect_wait
        if until is not None:
            wait = max(0.0, min(wait, until - time.monotonic()))
        with self._reconnected:
            self._reconnected.wait_for(
                lambda: self._closing or self._generation > generation, wait)
            return not self._closing and self._generation > generation

    def _pair_seqs(self, moves: Sequence[Move]) -> dict[int, int]:
        """Last committed sequence number of each pair (me -> destination) in the request."""
        words, seq_words = self.words, self._seq_words
        return {m.dst_id: words[seq_words[m.dst_id]] for m in moves if m.dst_id in seq_words}

    def _survive_restart(self, op: int, moves: Sequence[Move], reply_by: float | None = None,
                         posted: Posted | None = None) -> tuple[Result, ...]:
        """A round trip that outlives an adapter crash without losing or doubling a move.

        If the adapter dies with our request in flight, wait for the restarted one (it has
        settled every half-done commit before we are reconnected), then learn from the
        per-pair sequence numbers whether our moves committed: committed ones are reported as
        sent, the rest are sent again. A Fig 12 grant never commits without us, so it is
        always sent again. A request that was never written (the pipe broke first) is sent on
        the new pipes, or fails `AdapterGone` (nothing sent), never `InDoubt`. No reply by
        `reply_by`: see _unanswered. `posted`: the request was already written (post_one).
        """
        if posted is None:
            before, generation = self._pair_seqs(moves), self._generation
        else:
            before, generation = dict(posted.before), posted.generation
        try:
            return self._round_trip(op, moves, reply_by, posted)
        except Unanswered as exc:
            raise self._unanswered(op, exc) from None
        except _NotSent as exc:
            if not self._await_reconnect(generation, reply_by):
                raise AdapterGone(f"{exc}; nothing was sent (no adapter came back in "
                                  f"time); retry") from None
        except AdapterGone as exc:
            if not self._await_reconnect(generation):
                if op in GRANT_OPS:
                    raise  # a grant never commits without us: nothing is in doubt
                raise InDoubt(f"{exc}; the adapter did not come back within "
                              f"{self.reconnect_wait} s, so whether the move committed is "
                              f"unknown (compare the pair's sequence numbers)") from None
        self._close_stale()
        try:
            return self._resolve(op, moves, before, reply_by)
        except Unanswered as exc:
            raise self._unanswered(op, exc) from None
        except _NotSent as exc:
            raise AdapterGone(f"{exc}; nothing was sent; retry") from None
        except AdapterGone as exc:
            raise InDoubt(f"{exc} again while resolving a move after a restart") from None

    @staticmethod
    def _unanswered(op: int, exc: Unanswered) -> XpmoveError:
        """The typed error for a request the adapter did not answer in time. One never
        written is plainly not sent; a written move's outcome is unknown (`InDoubt`: it may
        still commit); a written grant moves nothing without us (a late grant is given back
        when its reply arrives, see _take_late)."""
        if not exc.sent:
            return AdapterGone(f"{exc} to an earlier request (abandoned at its deadline), so "
                               f"this one was not sent; retry")
        if op in GRANT_OPS:
            return AdapterGone(f"{exc} (hung or slow): nothing was moved (a Fig 12 grant "
                               f"commits only with its driver; a late grant is given back)")
        return InDoubt(f"{exc} (hung or slow), so whether the move committed is unknown "
                       f"(compare the pair's sequence numbers)")

    def _resolve(self, op: int, moves: Sequence[Move], before: dict[int, int],
                 reply_by: float | None = None) -> tuple[Result, ...]:
        """After a restart: which moves of the lost request committed (per-pair sequence
        numbers), and a fresh request for the rest. Moves that fail the adapter's own
        deterministic checks (translate) cannot have committed and are not credited."""
        after = self._pair_seqs(moves) if op not in GRANT_OPS else before
        committed: dict[int, int] = {d: after[d] - before[d] for d in before}
        if op == Op.MOVE_RUN:  # a request carries one run; it committed whole or not at all
            if all(committed.values()):
                return tuple(Result(Status.OK, committed[m.dst_id], before[m.dst_id] + 1,
                                    count=m.count) for m in moves)
            return self._round_trip(op, moves, reply_by)
        redo = [m for m in moves if committed.get(m.dst_id, 0) == 0 or not self._valid(m)]
        redone = iter(self._round_trip(op, redo, reply_by) if redo else ())
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

    def _round_trip(self, op: int, moves: Sequence[Move], reply_by: float | None = None,
                    posted: Posted | None = None) -> tuple[Result, ...]:
        """Write one request, read its reply (by `reply_by`, if given: else Unanswered);
        with `posted`, only read the reply of the request post_one wrote.

        Replies of requests abandoned at their deadline may still come: they are taken (by
        request id) before our own, and a late grant is given back (_take_late). At most one
        abandoned request is in the pipe: its reply is awaited before the next is written.
        """
        replies = self._replies
        if posted is not None:  # written with no abandoned reply ahead of it
            reply_fd, request_id, started = posted.reply_fd, posted.request_id, posted.started
        else:
            with self._reconnected:  # the pipes of one generation, for the whole round trip
                generation, request_fd, reply_fd = (self._generation, self.request_fd,
                                                    self.reply_fd)
            replies.use(generation)
            started = time.monotonic()
            try:
                while replies.abandoned:  # its reply comes first: taken before we write
                    self._take_late(replies.next_frame(reply_fd, reply_by))
            except Unanswered:
                raise Unanswered(time.monotonic() - started, sent=False) from None
            except AdapterGone as exc:
                raise _NotSent(str(exc)) from None
            request_id = self._write_request(op, moves, request_fd)
        try:
            while True:
                got, status, n, reply = frame = replies.next_frame(reply_fd, reply_by)
                if got not in replies.abandoned:
                    break
                self._take_late(frame)
        except Unanswered:
            replies.abandon(request_id, op, tuple(moves))
            if op in GRANT_OPS:
                self._start_reaper()
            raise Unanswered(time.monotonic() - started, sent=True) from None
        results = decode_results(reply, n, REPLY_HEADER.size)
        if status != Status.OK:
            raise error_for(status, src_id=self.network_id, dst_id=moves[0].dst_id,
                            offset=moves[0].offset, count=moves[0].count, detail=0)
        if got != request_id or n != len(moves):
            raise ProtocolViolation(f"reply {got} with {n} results does not answer "
                                    f"request {request_id} of {len(moves)} moves")
        return results

    def _write_request(self, op: int, moves: Sequence[Move], request_fd: int) -> int:
        """Write one request frame; its request id. _NotSent if the pipe is broken."""
        self._request_id = request_id = (self._request_id + 1) & 0xFFFFFFFF
        data = encode_request(op, request_id, moves)
        try:
            written = 0
            while written < len(data):
                written += os.write(request_fd, data[written:])
        except OSError as exc:  # EPIPE, EBADF: no adapter will ever read this request
            raise _NotSent(f"the adapter is gone ({exc})") from None
        return request_id

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap_late_replies, daemon=True,
                                            name=f"xpmove-late-replies-{self.network_id}")
            self._reaper.start()

    def _reap_late_replies(self) -> None:
        """Thread, while a grant request is abandoned: take its late reply as soon as it
        arrives, so a late grant goes back at once, not at this partition's next request (a
        partition that stopped sending would hold the destination's lock until the grant
        timeout ended it). Waits for bytes without the mutex; reads only with it, when no
        request is in flight, so whatever is on the pipe then is a late reply."""
        replies = self._replies
        while not self._closing:
            with self._reconnected:
                generation, fd = self._generation, self.reply_fd
            if generation != replies.generation or not replies.abandoned:
                return  # answered, or fresh pipes: nothing of the old ones is awaited
            if not replies.wait_readable(fd, REAP_SLICE_S):
                continue
            if not self._mutex.acquire(timeout=REAP_SLICE_S):
                continue
            try:
                if generation == self._generation and replies.abandoned:
                    self._take_late(replies.next_frame(fd, time.monotonic() + REAP_SLICE_S))
            except Unanswered:
                pass  # part of a frame: the rest comes
            except (AdapterGone, ProtocolViolation):
                return  # the next request meets it too, and says so
            finally:
                self._mutex.release()

    def _take_late(self, frame: Frame) -> None:
        """The reply of a request abandoned at its deadline: dropped, except that a grant it
        carries is given back at once (the proof, then the post; nothing moved, nothing
        published, so the adapter undoes the reservation when it settles the grant)."""
        request_id, status, n, data = frame
        late = self._replies.abandoned.pop(request_id, None)
        if late is None:
            raise ProtocolViolation(f"reply {request_id} answers no request in flight")
        op, moves = late
        self.late_replies += 1
        if op not in GRANT_OPS or status != Status.OK or n != len(moves):
            return
        results = decode_results(data, n, REPLY_HEADER.size)
        if op == Op.LEASE:  # named by its token: the keeper may have ended it already
            (m,), (r,) = moves, results
            if r.status == Status.OK and self._free_lease(m.dst_id, r.commit_value):
                self.late_grants_returned += 1
            return
        for dst in {m.dst_id for m, r in zip(moves, results, strict=True)
                    if r.status == Status.OK}:
            self._free_grant(dst, committed=False)
            self.late_grants_returned += 1
