"""Autocork: per-packet `port.send()` calls at the cost of multiple-write runs.

The patent's flow is one adapter request per move, and one request costs far more CPU than the
packet's copy (the adapter's round trip, the driver's, the receiver's wake-up). A program that
sends one packet per call would pay that per packet. The cork copies each packet into a
submission buffer at the top of the send space, laid out as a multiple-write run (the run's
descriptor, then the packets, each padded to 8), and returns at once; ONE flusher thread sends
a buffer's runs whenever no request of the port is in flight. The first packet after a quiet
spell goes at once; the packets that arrive while a request is in flight go together in the
next one: TCP's autocork (Nagle without a timer). Back-pressure is the buffers: when every
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from adapter.errors import RetryableError, XpmoveError
from adapter.protocol import Flow
from adapter.ring import ALIGN, MAX_RUN_RECORDS, RUN_DESCRIPTOR, align
from partitions.driver import Driver, Sent

CORK_BUFFER = 256 << 10  # bytes per submission buffer (at most an eighth of the send space)
CORK_BUFFERS = 2  # one in flight, one filling
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


# -- the pure core: where packets go and which runs are ready --------------------------------


class BufferState(Enum):
    FREE = "free"
    FILLING = "filling"
    SEALED = "sealed"  # full, waiting for the flusher
    IN_FLIGHT = "in flight"


@dataclass
class QueuedRun:
    """A run being filled or sent: its descriptor at `offset` of own memory, then `packets`
    packets of `length` bytes, each padded to ALIGN. `key` is what a packet must share with
    it to join; `limit` the most bytes the run may grow to (the destination's largest
    record)."""

    dst: int
    flow: Flow
    length: int
    offset: int
    first: int  # the port's submission number of its first packet
    deadline: float
    key: tuple
    limit: int
    packets: int = 0

    @property
    def stride(self) -> int:
        return align(self.length)

    @property
    def size(self) -> int:
        return RUN_DESCRIPTOR.size + self.packets * self.stride

    @property
    def payload_offset(self) -> int:
        return self.offset + RUN_DESCRIPTOR.size

    @property
    def last(self) -> int:
        return self.first + self.packets - 1


@dataclass
class Buffer:
    offset: int
    capacity: int
    state: BufferState = BufferState.FREE
    used: int = 0
    runs: list[QueuedRun] = field(default_factory=list)

    @property
    def packets(self) -> int:
        return sum(r.packets for r in self.runs)


class SubmissionBook:
    """The submission buffers' accounting (pure: no threads, no memory, no clock).

    `place` says where a packet's bytes go (or None: every buffer is busy, wait); `take` hands
    the flusher the oldest buffer with packets, sealing it; `release` frees it once sent.
    """

    def __init__(self, base: int, size: int, buffers: int = CORK_BUFFERS):
        capacity = size // buffers // ALIGN * ALIGN
        if base % ALIGN or buffers < 1 or size < 0:
            raise ValueError(f"submission area of {size} bytes at {base} cannot hold {buffers} "
                             f"buffers")  # an area too small for a packet just queues nothing
        self.buffers = [Buffer(base + i * capacity, capacity) for i in range(buffers)]
        self.capacity = capacity
        self.base, self.end = base, base + capacity * buffers
        self._filling: Buffer | None = None
        self._sealed: deque[Buffer] = deque()
        self.submitted = 0  # packets placed so far; the next is submitted + 1
        self.queued = 0  # placed and not yet released (filling, sealed or in flight)
        # the open run, which the next packets of its key join (append): its key, packet
        # stride, where the next packet goes, how many more fit, and how to count one
        self._open_key: tuple | None = None
        self._stride = self._next = self._room = 0
        self._open_packets: Callable[[], None] = lambda: None

    def fits(self, length: int, limit: int) -> bool:
        """Whether a packet of `length` bytes can be queued at all (a run of it alone fits a
        buffer and the destination's largest record `limit`)."""
        return length >= 1 and RUN_DESCRIPTOR.size + align(length) <= min(self.capacity, limit)

    def append(self, key: tuple) -> int | None:
        """The fast path of `place`: where the packet goes if it continues the open run (same
        `key`, room left in the run and its buffer), else None with nothing changed."""
        if self._room and key == self._open_key:
            self._room -= 1
            offset = self._next
            self._next = offset + self._stride
            self._open_packets()
            return offset
        return None

    def place(self, dst: int, flow: Flow, length: int, deadline: float, key: tuple,
              limit: int) -> int | None:
        """The offset of own memory the packet's bytes go to, or None if no buffer has room.
        `key` groups packets into runs (same key: same run, while it fits); `deadline` is the
        run's retry deadline when the packet starts one; `limit` is the destination's largest
        record (the caller checked `fits`)."""
        offset = self.append(key)
        if offset is not None:
            return offset
        stride = align(length)
        buf = self._filling
        need = RUN_DESCRIPTOR.size + stride
        if buf is not None and buf.used + need > buf.capacity:
            self._close_run()
            buf.state = BufferState.SEALED
            self._sealed.append(buf)
            buf = self._filling = None
        if buf is None:
            buf = self._filling = self._free()
            if buf is None:
                return None
            buf.state = BufferState.FILLING
        run = QueuedRun(dst, flow, length, buf.offset + buf.used, self.submitted + 1, deadline,
                        key, min(limit, buf.capacity))
        buf.runs.append(run)
        buf.used += RUN_DESCRIPTOR.size
        self._open_run(buf, run, stride)
        return self.append(key)

    def _open_run(self, buf: Buffer, run: QueuedRun, stride: int) -> None:
        """`run` (the last of `buf`) takes the next packets of its key: how many still fit."""
        self._open_key, self._stride, self._next = run.key, stride, run.offset + run.size
        self._room = min((run.limit - run.size) // stride, MAX_RUN_RECORDS - run.packets,
                         (buf.capacity - buf.used) // stride)

        def count() -> None:
            run.packets += 1
            buf.used += stride
            self.submitted += 1
            self.queued += 1

        self._open_packets = count

    def _close_run(self) -> None:
        self._room = 0
        self._open_key = None

    def _free(self) -> Buffer | None:
        return next((b for b in self.buffers if b.state is BufferState.FREE), None)

    def take(self) -> Buffer | None:
        """The oldest buffer with packets, now in flight (None if there is none, or one is
        already in flight: the flusher sends one buffer at a time)."""
        if any(b.state is BufferState.IN_FLIGHT for b in self.buffers):
            return None
        if self._sealed:
            buf = self._sealed.popleft()
        elif self._filling is not None and self._filling.runs:
            buf, self._filling = self._filling, None
            self._close_run()
        else:
            return None
        buf.state = BufferState.IN_FLIGHT
        return buf

    def release(self, buf: Buffer) -> int:
        """The flusher is done with `buf` (every run moved or reported); how many packets it
        held. The buffer is free again."""
        if buf.state is not BufferState.IN_FLIGHT:
            raise ValueError(f"release of a buffer at {buf.offset} that is {buf.state.value}")
        n = buf.packets
        buf.state, buf.used, buf.runs = BufferState.FREE, 0, []
        self.queued -= n
        return n

    def pending_runs(self) -> list[tuple[QueuedRun, bool]]:
        """Every run not yet moved or reported, oldest first, and whether it is in flight (what
        a flush that ran out of time leaves behind)."""
        bufs = [*(b for b in self.buffers if b.state is BufferState.IN_FLIGHT), *self._sealed,
                *([self._filling] if self._filling is not None else [])]
        return [(r, b.state is BufferState.IN_FLIGHT) for b in bufs for r in b.runs]


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
            if self._flusher_idle:  # wake it once: it takes this buffer
                self._flusher_idle = False
                self._work.notify()
            elif self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                 name="cork-flusher")
                self._flusher.start()

    def _wait_for_room(self, dst: int, flow: Flow, n: int, deadline: float, key: tuple,
                       limit: int, timeout: float | None, cancel: threading.Event | None) -> int:
        self._waiters += 1
        try:
            while True:
                if self._flusher_idle:
                    self._flusher_idle = False
                    self._work.notify()
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set() or (cancel is not None and cancel.is_set()):
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
            with cond:
                while (buf := self.book.take()) is None:
                    self._flusher_idle = True
                    self._work.wait()
                self._flusher_idle = False
            failures = [f for run in buf.runs if (f := self._send(run)) is not None]
            with cond:
                self.book.release(buf)
                self._failures += failures
                if self._waiters:
                    cond.notify_all()

    def _send(self, run: QueuedRun) -> QueuedFailure | None:
        """Move one run (a lone packet as a plain move); its failure, if it failed."""
        key_cancel = run.key[-1]
        stop = self._stop
        stopping: Callable[[], bool] = (stop.is_set if key_cancel is None else
                                        lambda: stop.is_set() or key_cancel.is_set())
        timeout = max(0.0, run.deadline - time.monotonic())
        if run.packets == 1:
            offset, count, as_run = run.payload_offset, run.length, False
        else:
            RUN_DESCRIPTOR.pack_into(self._region, run.offset, run.packets, run.length)
            offset, count, as_run = run.offset, run.size, True
        self.requests += 1
        outcome = self._driver.send_retrying(run.dst, offset, count, run.flow, as_run,
                                             timeout=timeout, stop=stopping)
        if isinstance(outcome, Sent):
            self._last_seq[run.dst] = outcome.seq + outcome.records - 1
            return None
        return QueuedFailure(run.dst, run.flow, run.first, run.last, run.length,
                             self._last_seq.get(run.dst, 0), outcome)
