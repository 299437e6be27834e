"""The reply side of a driver's pipe to the adapter: whole frames, a deadline, late replies.

A request the adapter did not answer by its deadline is abandoned, not forgotten: its reply may
still come, ahead of the next request's, and must never be read as that one's. `Replies`
keeps the abandoned requests by request id (the driver gives back a grant a late reply carries)
and the bytes read past a frame, for ONE generation of pipes: fresh pipes after an adapter
restart start clean (the old adapter's replies died with it). Used under the driver's mutex.
"""

from __future__ import annotations

import os
import select
import time
from typing import NamedTuple

from adapter.errors import AdapterGone
from adapter.protocol import MAX_REPLY_SIZE, REPLY_HEADER, RESULT, Move, decode_reply_header


class Unanswered(Exception):
    """No reply by the deadline. `sent`: our request is in the pipe (its outcome is unknown);
    otherwise it was never written (an abandoned request's reply is still awaited)."""

    def __init__(self, waited: float, sent: bool):
        super().__init__(f"no reply from the adapter within {waited:.3g} s")
        self.waited, self.sent = waited, sent


class Frame(NamedTuple):
    request_id: int
    status: int
    results: int  # how many RESULTs follow the header
    data: bytes  # the whole frame, header included


class Abandoned(NamedTuple):
    op: int
    moves: tuple[Move, ...]


class Replies:
    def __init__(self) -> None:
        self.generation = 0
        self.abandoned: dict[int, Abandoned] = {}  # request id -> what it asked
        self._inbox = b""  # bytes read past the last frame (the start of a later one)
        self._poller: tuple[int, select.poll] | None = None

    def use(self, generation: int) -> None:
        """The pipes of `generation` are read from now on: nothing of older ones is awaited."""
        if generation != self.generation:
            self.abandoned.clear()
            self._inbox = b""
            self.generation = generation

    def abandon(self, request_id: int, op: int, moves: tuple[Move, ...]) -> None:
        self.abandoned[request_id] = Abandoned(op, moves)

    def next_frame(self, fd: int, reply_by: float | None) -> Frame:
        """The next reply frame on `fd`, waiting until `reply_by` (time.monotonic(); None: no
        deadline) else Unanswered (waited 0: the caller knows how long and what was sent).
        Usually ONE read: the adapter writes a reply in one go. AdapterGone on EOF."""
        buf = self._inbox
        while True:
            if len(buf) >= REPLY_HEADER.size:
                _, request_id, status, n = decode_reply_header(buf[:REPLY_HEADER.size])
                size = REPLY_HEADER.size + n * RESULT.size
                if len(buf) >= size:
                    self._inbox = buf[size:]
                    return Frame(request_id, status, n, buf[:size])
            if reply_by is not None:
                self._await_readable(fd, reply_by)
            try:
                chunk = os.read(fd, MAX_REPLY_SIZE)
            except OSError as exc:
                raise AdapterGone(f"the reply pipe broke ({exc}); retry after the adapter "
                                  f"restarts") from None
            if not chunk:
                raise AdapterGone("the adapter closed the reply pipe; retry after it restarts")
            self._inbox = buf = buf + chunk

    def _await_readable(self, fd: int, reply_by: float) -> None:
        poller = self._poller
        if poller is None or poller[0] != fd:
            poller = self._poller = (fd, select.poll())
            poller[1].register(fd, select.POLLIN)
        left = reply_by - time.monotonic()
        if left <= 0 or not poller[1].poll(left * 1000):
            raise Unanswered(0.0, sent=True)

    @staticmethod
    def wait_readable(fd: int, timeout: float) -> bool:
        """True once `fd` has bytes or EOF (or is no pipe any more: the caller looks again),
        False after `timeout`; for a thread that waits without reading (no shared poller)."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
