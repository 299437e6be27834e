"""The submission queue's book (pure: no threads, no memory, no clock): where each queued
packet goes, when a run is sealed, which buffer the flusher gets, and how a buffer's runs are
grouped into adapter requests. The shell that copies packets and runs the flusher is
partitions/cork.py, whose docstring says why.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from adapter.protocol import MAX_MOVES, Flow
from adapter.ring import ALIGN, MAX_RUN_RECORDS, RUN_DESCRIPTOR, align, run_size

CORK_BUFFERS = 2  # one in flight, one filling
LOOKAHEAD = 32  # runs a request of lone packets looks past its first for more destinations


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
    def size(self) -> int:
        """Bytes of its descriptor and packets (each padded to ALIGN)."""
        return run_size(self.packets, self.length)

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

    def take_lone(self) -> Buffer | None:
        """`take`, only when the filling buffer holds the only packet queued (nothing else
        filling, sealed or in flight): a lone packet the shell may send at once. If it cannot,
        `hand_back` the buffer: the flusher takes it next."""
        buf = self._filling
        if self.queued != 1 or buf is None or self._sealed or len(buf.runs) != 1:
            return None
        return self.take()

    def hand_back(self, buf: Buffer) -> None:
        """A buffer from `take_lone` that was not sent: the next one `take` gives."""
        if buf.state is not BufferState.IN_FLIGHT:
            raise ValueError(f"hand_back of a buffer at {buf.offset} that is {buf.state.value}")
        buf.state = BufferState.SEALED
        self._sealed.appendleft(buf)

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


def requests_of(runs: list[QueuedRun], most: int = MAX_MOVES,
                lookahead: int = LOOKAHEAD) -> list[list[QueuedRun]]:
    """A buffer's runs grouped into adapter requests: a run of several packets alone (one
    MOVE_RUN or GRANT_RUN); lone packets of one flow to DIFFERENT destinations together (one
    request of several moves, at most `most`), taken from the next `lookahead` runs.

    Per destination the order stays: a run never joins a request before an earlier run to the
    same destination, so each pair's sequence numbers follow submission order. Packets that
    alternate between destinations (or flows) thus share requests instead of one each."""
    out: list[list[QueuedRun]] = []
    pending = runs
    while pending:
        first = pending[0]
        if first.packets > 1:
            out.append([first])
            pending = pending[1:]
            continue
        group, taken, blocked = [first], {first.dst}, set()
        rest: list[QueuedRun] = []
        for i, run in enumerate(pending[1:], 1):
            if i > lookahead or len(group) >= most:
                rest += pending[i:]
                break
            if (run.packets == 1 and run.flow is first.flow and run.dst not in taken
                    and run.dst not in blocked):
                group.append(run)
                taken.add(run.dst)
            else:
                blocked.add(run.dst)
                rest.append(run)
        out.append(group)
        pending = rest
    return out
