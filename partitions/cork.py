"""Autocork: per-packet `port.send()` calls at the cost of multiple-write runs.

The patent's flow is one adapter request per move, and one request costs far more CPU than the
packet's copy (the adapter's round trip, the driver's, the receiver's wake-up). A program that
sends one packet per call would pay that per packet. The cork copies each packet into a
submission buffer at the top of the send space, laid out as a multiple-write run (the run's
descriptor, then the packets, each padded to 8), and returns at once; ONE flusher thread sends
a buffer's runs whenever no request of the port is in flight. The first packet after a quiet
spell goes at once, and from the caller's own thread: when nothing else is queued or in flight
(and the driver is free) `submit` writes its request to the adapter itself (Driver.post_one)
and the flusher only reads the reply, so a lone packet's path has no thread hand-off (one
costs a futex wake-up and a GIL switch before the adapter even hears of the packet). The
packets that arrive while a request is in flight go together in the next one: TCP's autocork
(Nagle without a timer). Back-pressure is the buffers: when every
buffer is filling or in flight, `submit` waits.

Sealing rules (pure, `SubmissionBook`): a packet continues the buffer's last run when it has the
same destination, flow, length, timeout and cancel event and the run still fits the
destination's largest record and MAX_RUN_RECORDS; otherwise it starts a new run in the same
buffer; a buffer that cannot take it is sealed and the next free buffer fills. Buffers go to the
flusher in the order they filled, runs within a buffer in order, so each pair's packets commit
in the order they were submitted: their sequence numbers are consecutive.

Errors: a queued run that fails (after `Driver.send_retrying`'s retries, until the run's first
packet's timeout or `stop`) is kept as a `QueuedFailure` naming the destination, flow, the
port's submission numbers of its packets and the last sequence number accepted before it; the
next `submit` or `flush` raises them as ONE `QueuedSendFailed`. A packet is accepted once
`submit` returned; it is then either moved exactly once or reported, never silently dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from adapter.errors import RetryableError, XpmoveError
from adapter.protocol import Flow
from adapter.ring import RUN_DESCRIPTOR
from partitions.driver import Driver, Posted, Sent
from partitions.submissions import (
    CORK_BUFFERS,
    Buffer,
    QueuedRun,
    SubmissionBook,
    requests_of,
)
from partitions.waiting import REPLY_GRACE_S, REPLY_WAIT_MIN_S

CORK_BUFFER = 256 << 10  # bytes per submission buffer (at most an eighth of the send space)
WAIT_SLICE_S = 0.05  # a wait with no deadline re-checks `stop` at least this often


class QueueFull(RetryableError):
    """A per-packet send waited `timeout` seconds for room in the submission buffers (the
    flusher was still retrying the queue's oldest run); the packet was not queued."""


class QueuedFailure(NamedTuple):
    """A queued run the adapter did not accept: packets `first`..`last` (the port's submission
    numbers, counted from 1) to `dst` by `flow`, and why. `after_seq` is the pair's last
    sequence number this port saw accepted before them (0: none)."""

    dst: int
    flow: Flow
    first: int
    last: int
    length: int
    after_seq: int
    error: XpmoveError

    @property
    def packets(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        return (f"packets #{self.first}-#{self.last} ({self.packets} of {self.length} B) to "
                f"network ID {self.dst} by {self.flow.value}, after its seq {self.after_seq}: "
                f"{type(self.error).__name__}: {self.error}")


class QueuedSendFailed(XpmoveError):
    """Queued per-packet sends that were not moved; `failures` lists every run, `error` is the
    first run's typed error (also `__cause__`). Raised once: the failures are then cleared."""

    def __init__(self, failures: list[QueuedFailure]):
        self.failures = sorted(failures, key=lambda f: f.first)
        failures = self.failures
        self.error = failures[0].error
        total = sum(f.packets for f in failures)
        more = f" (and {len(failures) - 1} more runs)" if len(failures) > 1 else ""
        super().__init__(f"{total} queued packets were not moved: {failures[0].describe()}"
                         f"{more}")

    @property
    def packets(self) -> int:
        return sum(f.packets for f in self.failures)


# -- the shell: the copy, the flusher thread, the waits -------------------------------------


class Cork:
    """A port's submission queue: `submit` copies a packet in and returns; one flusher thread
    sends (see the module docstring). Thread-safe; the flusher starts with the first packet."""

    def __init__(self, driver: Driver, region: memoryview, base: int, size: int,
                 stop: threading.Event, buffers: int = CORK_BUFFERS):
        self._driver = driver
        self._region = region  # the partition's own memory
        self._stop = stop
        self.book = SubmissionBook(base, size, buffers)
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # senders waiting for room, flushes
        self._work = threading.Condition(lock)  # the flusher waiting for packets
        self._flusher: threading.Thread | None = None
        self._flusher_idle = False
        self._handed: tuple[Buffer, Posted] | None = None  # a lone packet's request, written
        self._waiters = 0  # threads waiting for room or for a flush
        self._failures: list[QueuedFailure] = []
        self._last_seq: dict[int, int] = {}
        self.requests = 0  # adapter requests the flusher made (one per run sent)

    @property
    def has_failures(self) -> bool:
        return bool(self._failures)

    @property
    def area(self) -> tuple[int, int]:
        """[start, end) of own memory the buffers occupy."""
        return self.book.base, self.book.end

    def submit(self, dst: int, flow: Flow, packet: memoryview, timeout: float | None,
               cancel: threading.Event | None, limit: int) -> None:
        """Queue `packet` (copied now) for `dst`; raise the failures of earlier queued runs
        first (then this packet is not queued), QueueFull if no room came within `timeout`."""
        n = len(packet)
        key = (dst, flow, n, timeout, cancel)
        with self._cond:
            if self._failures:
                raise self._take_failures()
            offset = self.book.append(key)  # the common case: the open run goes on
            if offset is None:
                deadline = float("inf") if timeout is None else time.monotonic() + timeout
                offset = self.book.place(dst, flow, n, deadline, key, limit)
                if offset is None:
                    offset = self._wait_for_room(dst, flow, n, deadline, key, limit, timeout,
                                                 cancel)
            self._region[offset:offset + n] = packet
            if self._flusher_idle or self._flusher is None:
                self._hand_over()

    def _hand_over(self) -> None:
        """Condition held, the flusher idle (or not started): give it the work. A lone packet
        (nothing else queued or in flight, the driver free) has its request written here first,
        on the caller's thread; the flusher then reads the reply."""
        buf = self.book.take_lone()
        if buf is not None:
            run = buf.runs[0]
            posted = self._driver.post_one(run.dst, run.payload_offset, run.length, run.flow,
                                           reply_by(run.deadline))
            if posted is None:  # the driver is busy (another thread's send or loan)
                self.book.hand_back(buf)
            else:
                self._handed = (buf, posted)
                self.requests += 1
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name="cork-flusher")
            self._flusher.start()
        else:  # wake it once: it takes this buffer, or the reply of the posted request
            self._flusher_idle = False
            self._work.notify()

    def _wait_for_room(self, dst: int, flow: Flow, n: int, deadline: float, key: tuple,
                       limit: int, timeout: float | None, cancel: threading.Event | None) -> int:
        self._waiters += 1
        try:
            while True:
                if self._flusher_idle:
                    self._flusher_idle = False
                    self._work.notify()
                left = deadline - time.monotonic()
                cut = ("the machine is stopping" if self._stop.is_set() else "cancelled"
                       if cancel is not None and cancel.is_set() else None)
                if cut is not None:
                    stopped = QueueFull(f"send to network ID {dst}: {cut} while it waited for "
                                        f"room in the submission buffers; the packet was not "
                                        f"queued")
                    stopped.cut_short = True
                    raise stopped
                if left <= 0:
                    raise QueueFull(f"send to network ID {dst}: no room in the submission "
                                    f"buffers within {timeout} s ({self.book.queued} packets "
                                    f"queued)")
                self._cond.wait(min(left, WAIT_SLICE_S))
                if self._stop.is_set():
                    continue  # stopping: failures go to the exit report, not to this send
                if self._failures:
                    raise self._take_failures()
                offset = self.book.place(dst, flow, n, deadline, key, limit)
                if offset is not None:
                    return offset
        finally:
            self._waiters -= 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued packet was moved or failed (True), or `timeout` passed
        (False); raise the failures (QueuedSendFailed) if there are any."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while self.book.queued:
                    left = WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, WAIT_SLICE_S))
            finally:
                self._waiters -= 1
            if self._failures:
                raise self._take_failures()
            return not self.book.queued

    def unflushed(self) -> list[QueuedFailure]:
        """Runs still queued or in flight, each as a failure saying so (a report for when the
        partition gives up waiting); the failures not raised yet come first."""
        with self._cond:
            failures = self._failures[:]
            for run, in_flight in self.book.pending_runs():
                why = (XpmoveError("in flight when the partition stopped: it may have been "
                                   "moved (the pair's sequence numbers say)") if in_flight else
                       XpmoveError("still queued when the partition stopped"))
                failures.append(QueuedFailure(run.dst, run.flow, run.first, run.last,
                                              run.length, self._last_seq.get(run.dst, 0), why))
            return failures

    def _take_failures(self) -> QueuedSendFailed:
        failures, self._failures = self._failures, []
        return QueuedSendFailed(failures)

    def _flush_loop(self) -> None:
        cond = self._cond
        while True:
            posted: Posted | None
            with cond:
                while True:
                    if self._handed is not None:  # a lone packet's request submit wrote
                        (buf, posted), self._handed = self._handed, None
                        break
                    if (taken := self.book.take()) is not None:
                        buf, posted = taken, None
                        break
                    self._flusher_idle = True
                    self._work.wait()
                self._flusher_idle = False
            if posted is not None:  # only its reply is left to read
                failure = self._settle(buf.runs[0], self._driver.complete(posted), retry=True)
                failures = [] if failure is None else [failure]
            else:
                failures = [f for request in requests_of(buf.runs)
                            for f in self._request(request)]
            with cond:
                self.book.release(buf)
                self._failures += failures
                if self._waiters:
                    cond.notify_all()

    def _request(self, runs: list[QueuedRun]) -> list[QueuedFailure]:
        """One adapter request: a run, or lone packets of one flow to distinct destinations
        (Driver.send_many); the failures. A lone packet that failed retryably is retried alone
        (its destination gets nothing else before it: the others in the request go elsewhere)."""
        if len(runs) == 1:
            failure = self._send(runs[0])
            return [] if failure is None else [failure]
        self.requests += 1
        try:
            outcomes: list[Sent | XpmoveError] = self._driver.send_many(
                [(r.dst, r.payload_offset, r.length) for r in runs], runs[0].flow,
                reply_by(min(r.deadline for r in runs)))
        except XpmoveError as exc:  # the whole request (AdapterGone: nothing was sent)
            outcomes = [exc] * len(runs)
        failures = []
        for run, outcome in zip(runs, outcomes, strict=True):
            if isinstance(outcome, Sent):
                self._last_seq[run.dst] = outcome.seq
                continue
            failure = (self._send(run) if outcome.retryable else
                       QueuedFailure(run.dst, run.flow, run.first, run.last, run.length,
                                     self._last_seq.get(run.dst, 0), outcome))
            if failure is not None:
                failures.append(failure)
        return failures

    def _send(self, run: QueuedRun) -> QueuedFailure | None:
        """Move one run (a lone packet as a plain move); its failure, if it failed."""
        timeout = max(0.0, run.deadline - time.monotonic())
        if run.packets == 1:
            offset, count, as_run = run.payload_offset, run.length, False
        else:
            RUN_DESCRIPTOR.pack_into(self._region, run.offset, run.packets, run.length)
            offset, count, as_run = run.offset, run.size, True
        self.requests += 1
        outcome = self._driver.send_retrying(run.dst, offset, count, run.flow, as_run,
                                             timeout=timeout, stop=self._stopping(run))
        return self._settle(run, outcome)

    def _settle(self, run: QueuedRun, outcome: Sent | XpmoveError, retry: bool = False
                ) -> QueuedFailure | None:
        """Book the outcome of `run`'s request: None if it was moved, else its failure. With
        `retry` (a first attempt made elsewhere: a posted lone packet), a retryable failure
        goes on as `_send`'s retries would, until the run's deadline or `stop`."""
        if isinstance(outcome, Sent):
            self._last_seq[run.dst] = outcome.seq + outcome.records - 1
            return None
        if (retry and outcome.retryable and time.monotonic() < run.deadline
                and not self._stopping(run)()):
            return self._send(run)
        return QueuedFailure(run.dst, run.flow, run.first, run.last, run.length,
                             self._last_seq.get(run.dst, 0), outcome)

    def _stopping(self, run: QueuedRun) -> Callable[[], bool]:
        """Whether `run`'s retries must end: the port stops, or the run's cancel event."""
        key_cancel, stop = run.key[-1], self._stop
        return (stop.is_set if key_cancel is None else
                lambda: stop.is_set() or key_cancel.is_set())


def reply_by(deadline: float) -> float | None:
    """How long a request whose retries end at `deadline` waits for its reply (as
    Driver.send_retrying's attempts do): None with no deadline."""
    if deadline == float("inf"):
        return None
    return max(deadline, time.monotonic() + REPLY_WAIT_MIN_S) + REPLY_GRACE_S
