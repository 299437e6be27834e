"""A request written by one thread whose reply another reads: the cork's lone packet.

`Posting` is a part of `Driver` (partitions/driver.py), kept apart because it is one idea:
`send_one` cut in two at the pipe. `post_one` writes ONE move's request on the calling
thread and returns with the driver's request slot still taken; `complete`, from any thread,
reads the reply exactly as `send_one` would have (the same deadline, the same resolution of
an adapter restart, from the pair's sequence word noted before the write) and frees the slot.
Why: a lone packet from an idle port (partitions/cork.py) reaches the adapter without waiting
for the flusher thread to wake; the flusher reads the reply, off the packet's path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from adapter.errors import AdapterGone, XpmoveError
from adapter.protocol import Flow, Move

if TYPE_CHECKING:
    from partitions.driver import Sent
    from partitions.replies import Replies


class Posted(NamedTuple):
    """ONE move's request written by `Driver.post_one` whose reply is not read yet; the
    driver's request slot stays taken until `Driver.complete(posted)` reads it (from any
    thread). What a restart needs to resolve it is taken before the write."""

    op: int
    move: Move
    reply_by: float | None
    before: dict[int, int]  # the pair's sequence word before the request (_survive_restart)
    generation: int
    reply_fd: int
    request_id: int
    started: float


class Posting:
    """Driver's methods for posted requests; the attributes and methods below come from
    Driver."""

    if TYPE_CHECKING:
        network_id: int
        request_fd: int
        reply_fd: int
        _generation: int
        _mutex: threading.Lock
        _reconnected: threading.Condition
        _replies: Replies

        def _pair_seqs(self, moves: Sequence[Move]) -> dict[int, int]: ...

        def _write_request(self, op: int, moves: Sequence[Move], request_fd: int) -> int: ...

        def _finish_one(self, op: int, move: Move, run: bool, reply_by: float | None,
                        posted: Posted | None) -> Sent | XpmoveError: ...

    def post_one(self, dst_id: int, offset: int, count: int, flow: Flow = Flow.FIG11,
                 reply_by: float | None = None) -> Posted | None:
        """Write ONE move's request (as `send_one`'s, no run) on the calling thread and
        return without its reply, when the driver is free and no abandoned request's reply is
        awaited; else None, nothing sent (send it with `send_one`). Then the driver stays
        taken: `complete(posted)`, from any thread, reads the reply and frees it.

        Why: a lone packet from an idle port goes to the adapter with no thread hand-off on
        its way (partitions/cork.py); the hand-off comes after, off the packet's path."""
        if not self._mutex.acquire(blocking=False):
            return None
        try:
            if self._replies.abandoned:  # their replies come first: the full round trip
                self._mutex.release()
                return None
            op, move = Flow.parse(flow).op, Move(self.network_id, dst_id, offset, count)
            before = self._pair_seqs((move,))
            with self._reconnected:
                generation, request_fd, reply_fd = (self._generation, self.request_fd,
                                                    self.reply_fd)
            self._replies.use(generation)
            started = time.monotonic()
            request_id = self._write_request(op, (move,), request_fd)
        except AdapterGone:  # the request was not written (_write_request: a broken pipe)
            self._mutex.release()  # send_one meets it again and says so
            return None
        except BaseException:
            self._mutex.release()
            raise
        return Posted(op, move, reply_by, before, generation, reply_fd, request_id, started)

    def complete(self, posted: Posted) -> Sent | XpmoveError:
        """The outcome of a request `post_one` wrote (exactly as `send_one` would have
        returned it: a restart in between is resolved the same way); frees the driver."""
        return self._finish_one(posted.op, posted.move, False, posted.reply_by, posted)
