"""Every way a partition can send and receive packets, in one place.

The workload (workload.py) fills verified packets in the partition's own memory and hands a
`Batch` of them to a *send transport*; a *receive endpoint* hands every arriving packet to the
workload's check. Four transports share that interface, so the load generator measures the
same packets with the same checks whatever carries them:

* ``fig11`` / ``fig12`` -- the invention: the device driver asks the adapter to move the
  bytes (one request per batch: a lone move, or one multiple-write run, `Driver.send_one`);
  they land in the destination's receive ring (`AdapterRing`).
* ``fig12-loan`` -- Fig 12 with no move: the batch is laid out as a run IN the destination's
  receive ring, lent under the grant (`Port.loan_run`); the workload fills it there and the
  loan is committed (`LoanFlow`).
* ``fig12-lease`` -- a standing grant per destination (`Port.lease`), no request at all: a
  lone packet is one `lease.send`, a batch one run loaned under the lease and filled in place
  (`LeaseFlow`).
* ``tcp`` -- prior art, partitions talk to each other directly over TCP on loopback
  (`TcpLinks` to send, `TcpListener` to receive).
* ``vswitch`` -- prior art, the virtual LAN of Fig 7B: every partition holds one TCP
  connection to the hypervisor's virtual switch (hypervisor/vswitch.py), which forwards each
  frame to the connection of its destination ID (`SwitchPort` sends and receives).

On the socket transports a packet travels as a frame: FRAME header (destination ID, source ID,
per-pair sequence number, payload length) then the payload. The sender lays the frames of a
batch out back to back in its own memory (header right before each payload), so N frames go
in ONE ``sendall`` with no extra copy. `FrameReader` (pure, no I/O) turns received bytes back
into frames; the virtual switch uses it too.
"""

from __future__ import annotations

import select
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from adapter.errors import XpmoveError
from adapter.protocol import MAX_MOVES, Flow
from adapter.ring import ALIGN, MAX_RUN_RECORDS, RUN_DESCRIPTOR, align
from partitions import blocks
from partitions.blocks import (
    SMALL_BLOCK,
    BlockHandler,
    as_bytes,
    find_block,
    payloads,
)
from partitions.cork import QueuedSendFailed
from partitions.lease import Lease
from partitions.loan import LoanRun
from partitions.port import Port, Run

FRAME = struct.Struct("<IIQQ")  # destination ID, source ID, per-pair sequence number, length
MAX_FRAME_PAYLOAD = 64 << 20  # a frame announcing more is a protocol violation
LOOPBACK = "127.0.0.1"
GREEDY_READ = 256 << 10  # most bytes one receive call asks for when no large frame is pending
LARGE_FRAME = 4 << 10  # frames above this are read exactly (no over-read, no compaction)
READER_CAPACITY = 1 << 20
CONNECT_TIMEOUT_S = 10.0
SYNC_SUFFIX = "-sync"  # fig11-sync, fig12-sync: the patent's literal one request per packet
LOAN = "fig12-loan"  # Fig 12 with no move: the batch filled in the ring (LoanFlow)
LEASE = "fig12-lease"  # a standing grant: each packet committed by the driver (LeaseFlow)


class FrameError(Exception):
    """The byte stream is not a sequence of frames any more: close the connection."""


class TransportError(Exception):
    """A transport could not be set up (connect, listen, hello); names the peer."""


# -- batches: where the packets of one request live in the sender's memory ------------------


@dataclass(frozen=True)
class Slot:
    offset: int  # payload offset in the partition's own region (what the adapter is told)
    frame: memoryview  # header room + payload
    payload: memoryview


class BatchLayout(NamedTuple):
    """How a transport wants a batch laid out in sender memory."""

    header_room: int = 0  # bytes the transport writes in front of each payload
    lead: int = 0  # bytes in front of the first slot (a multiple-write run's descriptor)
    align: int = 1  # each slot (header room + payload) is padded to a multiple of this

    def stride(self, size: int) -> int:
        return -(-(self.header_room + size) // self.align) * self.align


@dataclass(frozen=True)
class Batch:
    """`len(frames)` packet slots of `size` bytes laid out back to back after `lead`; `span`
    covers the slots.

    `frames` is the same memory as one numpy row per slot (header room + payload + padding),
    so a whole batch is filled and stamped with a few vectorised writes; `payloads` is its
    payload part. `slots` (a view per packet) are built on first use: a batch laid out anew
    per send (a loan) and filled as rows never pays for them.
    """

    span: memoryview
    stride: int
    frames: np.ndarray
    layout: BatchLayout
    lead: memoryview
    size: int

    @cached_property
    def slots(self) -> tuple[Slot, ...]:
        stride, room, size, span = self.stride, self.layout.header_room, self.size, self.span
        base = self.layout.lead + room
        return tuple(Slot(base + i * stride, span[i * stride:i * stride + room + size],
                          span[i * stride + room:i * stride + room + size])
                     for i in range(len(self.frames)))

    @cached_property
    def payloads(self) -> np.ndarray:
        room = self.layout.header_room
        return self.frames[:, room:room + self.size]

    @cached_property
    def frame_words(self) -> np.ndarray:
        """Each slot's first 24 bytes, in place, as three u64: a FRAME header's (destination
        | source << 32, sequence, length). Stamping a batch is three column writes."""
        return np.ndarray((len(self.frames), 3), "<u8", buffer=self.frames,
                          strides=(self.stride, 8))

    def prefix(self, n: int) -> Batch:
        if n == len(self.frames):
            return self
        return Batch(self.span[:n * self.stride], self.stride, self.frames[:n], self.layout,
                     self.lead, self.size)


def batch_capacity(space: int, size: int, layout: BatchLayout, wanted: int,
                   most: int = MAX_MOVES) -> int:
    """How many packets of `size` one batch may carry in `space` bytes of sender memory, at
    most `most` (what one request of the transport may carry)."""
    stride = layout.stride(size)
    if layout.lead + stride > space:
        raise ValueError(f"size: a {size}-byte packet (+{stride - size + layout.lead} bytes of "
                         f"headers) does not fit the {space}-byte sender area")
    return max(1, min(wanted, most, (space - layout.lead) // stride))


def make_batch(region: memoryview, size: int, layout: BatchLayout, n: int) -> Batch:
    """Slots for `n` packets at the start of `region` (the sender area of own memory)."""
    stride, lead = layout.stride(size), layout.lead
    span = region[lead:lead + n * stride]
    return Batch(span, stride, as_bytes(span).reshape(n, stride), layout, region[:lead], size)


# -- the interfaces ---------------------------------------------------------------------------


class SendTransport:
    name: str = ""
    channel: str = ""  # the receive-side sequence space the packets land in
    layout: BatchLayout = BatchLayout()
    max_batch: int = MAX_MOVES  # packets one `send` call may carry
    fills_itself = False  # True: the workload fills a batch only through `fill_and_send`

    def batch_limit(self, size: int) -> int:
        """Packets of `size` bytes one `send` call may carry."""
        return self.max_batch

    def loan(self, dst: int, batch: Batch) -> Batch:
        """Where the packets of the next `send` to `dst` are to be written: `batch` itself (in
        the partition's own memory), or the same layout in memory the transport lends (a
        zero-copy peer's sample, written in place)."""
        return batch

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        """Send every packet of `batch` to `dst`; return how many the transport accepted.

        Failures are counted in `errors` by exception name, one per packet.
        """
        raise NotImplementedError

    def finish(self, errors: Counter, timeout: float) -> Counter:
        """The sender is done: wait up to `timeout` for what the transport queued; count what
        failed in `errors` and return it per destination (it was counted as sent)."""
        return Counter()

    def fill_and_send(self, dst: int, template: Batch, fill: Callable[[Batch], None],
                      errors: Counter, timeout: float, stop: threading.Event) -> int:
        """The workload's step: lay the packets of `template` out where they are sent from
        (`loan`), let `fill(batch)` write them there, `send` them; how many were accepted. A
        transport that lends memory it must take back first (`fills_itself`: LoanFlow) does
        it all itself; for the others the workload may as well make the three calls."""
        batch = self.loan(dst, template)
        fill(batch)
        return self.send(dst, batch, errors, timeout, stop)

    def close(self) -> None:
        """Unblock a sender stuck in `send` and release connections (idempotent)."""


class ReceiveEndpoint:
    channel: str = ""

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        """Hand every packet that has arrived to `handler`; if none, wait up to `timeout`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sockets (idempotent)."""


# -- fig11 / fig12: through the adapter -------------------------------------------------------


class AdapterFlow(SendTransport):
    """Fig 11 (adapter moves) or Fig 12 (driver moves), through the partition's `Port`.

    A lone packet is one per-packet `port.send_from` call: queued by default (the port's cork
    coalesces the packets that arrive while a request is in flight into one multiple-write
    run), or with `sync` (the transports ``fig11-sync`` / ``fig12-sync``) the patent's literal
    request of one move, answered before the next packet. A batch is ONE multiple-write run
    either way, laid out as the ring will hold it (the run's descriptor, then the packets, each
    padded to ALIGN)."""

    channel = "adapter"
    layout = BatchLayout(0, RUN_DESCRIPTOR.size, ALIGN)
    max_batch = MAX_RUN_RECORDS

    def __init__(self, port: Port, flow: Flow, sync: bool = False):
        self.port = port
        self.flow = flow
        self.sync = sync
        self.name = flow.value + (SYNC_SUFFIX if sync else "")
        self._max_run = port.max_record()  # a batch is one run: it must fit the smallest ring
        self._retracted: Counter = Counter()  # counted as sent, then reported failed

    def batch_limit(self, size: int) -> int:
        return max(1, min(self.max_batch, (self._max_run - RUN_DESCRIPTOR.size) // align(size)))

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        """A lone packet as one per-packet call (queued, or with `sync` one request), a batch
        as ONE run; retried while the outcome is retryable (destination full, lock timeout)
        until `timeout` or `stop`."""
        n = len(batch.slots)
        first = batch.slots[0]
        try:
            if n == 1:
                self.port.send_from(dst, first.offset, len(first.payload), self.flow, timeout,
                                    stop, sync=self.sync)
            else:
                run = Run(first.offset - RUN_DESCRIPTOR.size, n, len(first.payload))
                self.port.send_run(dst, run, self.flow, timeout, cancel=stop)
        except QueuedSendFailed as exc:  # earlier packets failed; this one was not queued
            self._count_failed(exc, errors)
            errors[type(exc.error).__name__] += n
            return 0
        except XpmoveError as exc:
            errors[type(exc).__name__] += n
            return 0
        return n

    def finish(self, errors: Counter, timeout: float) -> Counter:
        """Wait for the queued packets to be moved; count the ones that failed in `errors` and
        return them per destination (they were counted as sent)."""
        try:
            self.port.flush(timeout)
        except QueuedSendFailed as exc:
            self._count_failed(exc, errors)
        retracted, self._retracted = self._retracted, Counter()
        return retracted

    def _count_failed(self, exc: QueuedSendFailed, errors: Counter) -> None:
        for f in exc.failures:
            errors[type(f.error).__name__] += f.packets
            self._retracted[f.dst] += f.packets


class LoanFlow(AdapterFlow):
    """``fig12-loan``: Fig 12 with no move at all. Each batch is ONE run laid out in the
    destination's receive ring (`Port.loan_run`: one request, the grant), filled there by the
    workload, then committed: one ring record, and no copy but the fill itself. The batch
    built over the loan lives only during `fill`, so the loan can end (partitions/loan.py:
    nothing made from a loan may outlive it)."""

    LENT = BatchLayout(0, 0, ALIGN)  # the loan's view starts at packet 0, past the descriptor
    fills_itself = True

    def __init__(self, port: Port):
        super().__init__(port, Flow.FIG12)
        self.name = LOAN

    def fill_and_send(self, dst: int, template: Batch, fill: Callable[[Batch], None],
                      errors: Counter, timeout: float, stop: threading.Event) -> int:
        n, size = len(template.slots), len(template.slots[0].payload)
        try:
            loan = self._lend(dst, n, size, timeout, stop)
        except XpmoveError as exc:
            errors[type(exc).__name__] += n
            return 0
        failed = None
        try:
            fill(make_batch(loan.view, size, self.LENT if n > 1 else BatchLayout(), n))
        except Exception as exc:  # its traceback holds the batch: give back once it is gone
            failed = f"{type(exc).__name__}: {exc}"
        if failed is not None:
            loan.give_back()
            raise RuntimeError(f"{LOAN}: filling the loan failed ({failed}); given back")
        try:
            loan.commit()
        except XpmoveError as exc:
            errors[type(exc).__name__] += n
            return 0
        return n

    def _lend(self, dst: int, n: int, size: int, timeout: float, stop: threading.Event
              ) -> LoanRun:
        # uninit: the fill writes every packet (as iceoryx2's loan_slice_uninit)
        return self.port.loan_run(dst, n, size, timeout, cancel=stop, uninit=True)


class LeaseFlow(LoanFlow):
    """``fig12-lease``: a standing grant on each destination (`Port.lease`, taken when the
    run starts, `connect`, as the sockets connect then), so no packet costs a request: at
    batch 1 each packet is one `lease.send` (one copy), a bigger batch is ONE run loaned
    under the lease, filled in place and committed (`Lease.loan_run`: no copy either).
    Another sender to the same destination recalls the lease, and the next send asks for it
    again; the leases are given back when the traffic ends."""

    def __init__(self, port: Port):
        super().__init__(port)
        self.name = LEASE
        self._leases: dict[int, Lease] = {}

    def connect(self, peers: Iterable[int], timeout: float) -> None:
        """Take the lease on each of `peers` before the traffic starts, as the socket
        transports connect before it: its first packet then pays no LEASE request."""
        for dst in peers:
            self._lease(dst, timeout, threading.Event())

    def _lease(self, dst: int, timeout: float, stop: threading.Event) -> Lease:
        lease = self._leases.get(dst)
        if lease is None:
            lease = self._leases[dst] = self.port.lease(dst, timeout, stop)
        return lease

    def _lend(self, dst: int, n: int, size: int, timeout: float, stop: threading.Event
              ) -> LoanRun:
        return self._lease(dst, timeout, stop).loan_run(n, size, timeout, stop, uninit=True)

    def fill_and_send(self, dst: int, template: Batch, fill: Callable[[Batch], None],
                      errors: Counter, timeout: float, stop: threading.Event) -> int:
        if len(template.slots) == 1:  # a lone packet: one copy, the lease's shortest path
            return SendTransport.fill_and_send(self, dst, template, fill, errors, timeout, stop)
        return super().fill_and_send(dst, template, fill, errors, timeout, stop)

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        sent = 0
        try:
            lease = self._lease(dst, timeout, stop)
            for slot in batch.slots:
                lease.send(slot.payload, timeout, stop)
                sent += 1
        except XpmoveError as exc:
            errors[type(exc).__name__] += len(batch.slots) - sent
        return sent

    def finish(self, errors: Counter, timeout: float) -> Counter:
        self.close_leases()
        return super().finish(errors, timeout)

    def close_leases(self) -> None:
        """Give back every lease this run took (idempotent)."""
        leases, self._leases = self._leases, {}
        for lease in leases.values():
            lease.close()


class AdapterRing(ReceiveEndpoint):
    """This partition's receive area, filled by the adapter (Fig 11) or granted drivers."""

    channel = "adapter"

    def __init__(self, port: Port):
        self.port = port

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        return self.port.receive_blocks(handler, timeout)


# -- frames (pure) ----------------------------------------------------------------------------


class FrameReader:
    """Incremental frame decoder over one preallocated buffer (pure: the caller does I/O).

    ``recv_buffer()`` gives the memory the next receive call should fill, ``wrote(n)`` says how
    much it did. Small frames are read greedily (many per call); a frame above LARGE_FRAME is
    read exactly to its end, so large frames start at offset 0 and are never moved. A partial
    small frame is moved to the front only when the free space runs low.
    """

    def __init__(self, capacity: int = READER_CAPACITY, max_payload: int = MAX_FRAME_PAYLOAD):
        self._buf = bytearray(capacity)
        self._mv = memoryview(self._buf)
        self._flat = as_bytes(self._buf)
        self._start = 0
        self._end = 0
        self.max_payload = max_payload

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def _need(self) -> int | None:
        """Total size of the frame at the start, if its header has arrived."""
        if self._end - self._start < FRAME.size:
            return None
        length = FRAME.unpack_from(self._mv, self._start)[3]
        if length > self.max_payload:
            raise FrameError(f"frame announces {length} bytes (limit {self.max_payload})")
        return FRAME.size + length

    def _move_to_front(self, capacity: int) -> None:
        have = self._end - self._start
        if capacity != len(self._buf):
            old, old_mv = self._buf, self._mv
            self._buf = bytearray(capacity)
            self._mv = memoryview(self._buf)
            self._flat = as_bytes(self._buf)
            self._mv[:have] = old_mv[self._start:self._end]
            old_mv.release()
            del old
        elif have:
            self._mv[:have] = self._mv[self._start:self._end]
        self._start, self._end = 0, have

    def recv_buffer(self) -> memoryview:
        """Where the next receive should write (a view: release it after the call)."""
        if self._start == self._end:
            self._start = self._end = 0
        need = self._need()
        cap = len(self._buf)
        if need is not None and need > LARGE_FRAME:
            if need > cap:
                self._move_to_front(max(2 * need, cap))
            elif self._start + need > cap:
                self._move_to_front(cap)
            return self._mv[self._end:self._start + need]
        if cap - self._end < GREEDY_READ:
            self._move_to_front(cap)
        return self._mv[self._end:self._end + GREEDY_READ]

    def wrote(self, n: int) -> None:
        if n < 0 or self._end + n > len(self._buf):
            raise ValueError(f"wrote {n} bytes past the receive buffer")
        self._end += n

    def frame(self) -> tuple[int, int, int, int] | None:
        """(destination, source, seq, length) of the whole frame at the front, else None."""
        need = self._need()
        if need is None or self._end - self._start < need:
            return None
        return FRAME.unpack_from(self._mv, self._start)

    def frame_view(self) -> memoryview:
        """Header and payload of the whole frame at the front (release after use)."""
        length = FRAME.unpack_from(self._mv, self._start)[3]
        return self._mv[self._start:self._start + FRAME.size + length]

    def consume(self) -> None:
        length = FRAME.unpack_from(self._mv, self._start)[3]
        self._start += FRAME.size + length

    def drain(self, handler: BlockHandler) -> int:
        """Hand every whole frame to `handler`, a block of equal frames at a time; return how
        many frames."""
        n, self._start = drain_frames(self._mv, self._flat, self._start, self._end, handler,
                                      self.max_payload)
        return n


def drain_frames(view: memoryview, flat: np.ndarray, start: int, end: int,
                 handler: BlockHandler, max_payload: int = MAX_FRAME_PAYLOAD) -> tuple[int, int]:
    """Hand every whole frame in `view[start:end]` to `handler`, a block of equal frames at a
    time (`flat` is the same memory as a uint8 array). Return (frames handed over, where the
    first incomplete frame starts: `end` when none is). Pure; the peers' message receivers
    (peers.py) and `FrameReader` share it."""
    n = 0
    while end - start >= FRAME.size:
        _dst, source, seq, length = FRAME.unpack_from(view, start)
        if length > max_payload:
            raise FrameError(f"frame announces {length} bytes (limit {max_payload})")
        stride = FRAME.size + length
        if end - start < stride:
            break
        whole = (end - start) // stride
        if whole == 1:  # a lone frame (one packet per send): no block to find
            handler(source, seq, [view[start + FRAME.size:start + stride]])
            start += stride
            n += 1
            continue
        if whole >= SMALL_BLOCK:
            count = _frame_block(flat, start, stride, whole)
        elif _uniform(view, start, whole, length, (_dst, source, seq)):
            count = whole
        else:
            count = find_block(flat, start, stride, whole)
        handler(source, seq, payloads(view, flat, start, stride, count, length))
        start += count * stride
        n += count
    return n, start


# one frame header to the next, read as three u64 (destination and source, sequence, length)
_NEXT_HEADER = np.array([0, 1, 0], dtype="<u8")


def _frame_block(flat: np.ndarray, start: int, stride: int, count: int) -> int:
    """How many of the `count` whole frames of `stride` bytes at `start` continue the first
    (same destination, source and length, sequence numbers counting up by one): each header
    subtracted from the next in one numpy step (u64 arithmetic wraps as the sequence does)."""
    count = min(count, blocks.MAX_BLOCK)
    headers = np.ndarray((count, 3), "<u8", buffer=flat, offset=start, strides=(stride, 8))
    steps = headers[1:] - headers[:-1] == _NEXT_HEADER
    if steps.all():
        return count
    return 1 + int(np.argmin(steps.all(axis=1)))


_HEADERS: dict[tuple[int, int], struct.Struct] = {}  # (frames, payload length) -> their headers


def _uniform(view: memoryview, start: int, count: int, length: int,
             first: tuple[int, int, int]) -> bool:
    """Whether the `count` (2 to SMALL_BLOCK - 1) whole frames of `length` bytes at `start` make one
    block (the destination and source of the `first` header, consecutive sequence numbers):
    ONE unpack of every header, compared a column at a time, instead of one per frame."""
    layout = _HEADERS.get((count, length))
    if layout is None:
        if len(_HEADERS) >= 4 * SMALL_BLOCK:
            _HEADERS.clear()
        layout = _HEADERS[(count, length)] = struct.Struct(
            "<" + f"IIQQ{length}x" * (count - 1) + "IIQQ")
    fields = layout.unpack_from(view, start)
    dst, source, seq = first
    return (fields[0::4] == (dst,) * count and fields[1::4] == (source,) * count
            and fields[3::4] == (length,) * count
            and fields[2::4] == tuple(range(seq, seq + count)))


def hello_frame(network_id: int) -> bytes:
    """The first frame on every connection: who is talking (destination 0 = the link itself)."""
    return FRAME.pack(0, network_id, 0, 0)


def recv_into_reader(sock: socket.socket, reader: FrameReader) -> int:
    """One receive call into the reader; 0 means the peer closed."""
    with reader.recv_buffer() as buf:
        n = sock.recv_into(buf)
    reader.wrote(n)
    return n


def connect(port: int, timeout: float = CONNECT_TIMEOUT_S, host: str = LOOPBACK
            ) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FrameStamper:
    """Numbers the frames of a batch per destination and writes their FRAME headers in place
    (tcp, vswitch and the peers: every frame-carrying transport)."""

    layout = BatchLayout(FRAME.size)
    max_batch = MAX_RUN_RECORDS  # no protocol bound: as many frames as a fig11 run carries

    def __init__(self, network_id: int):
        self.network_id = network_id
        self._seq: Counter = Counter()  # per destination; lives as long as the partition

    def stamp(self, dst: int, batch: Batch) -> int:
        """Write the headers of `batch` for `dst`; return the sequence number of its last
        frame (it becomes the destination's last with `stamped`, once the batch went out)."""
        n = len(batch.frames)
        seq = self._seq[dst]
        if n == 1:  # the lone packet: no loop
            FRAME.pack_into(batch.span, 0, dst, self.network_id, seq + 1, batch.size)
            return seq + 1
        if n < SMALL_BLOCK:
            for at in range(0, n * batch.stride, batch.stride):
                seq += 1
                FRAME.pack_into(batch.span, at, dst, self.network_id, seq, batch.size)
            return seq
        words = batch.frame_words  # the headers in place: no temporary array
        words[:, 0] = dst | self.network_id << 32
        words[:, 2] = batch.size
        np.add(np.arange(1, n + 1, dtype=np.uint64), seq, out=words[:, 1])
        return seq + n

    def stamped(self, dst: int, last_seq: int) -> None:
        self._seq[dst] = last_seq

    def send_stamped(self, dst: int, batch: Batch, errors: Counter,
                     write: Callable[[memoryview], object]) -> int:
        """Stamp `batch` for `dst` and hand all its frames to `write` in ONE call (a socket's
        sendall, a Connection's send_bytes); the destination's sequence advances only if they
        went out. A failure is counted in `errors` by exception name, one per packet."""
        n = len(batch.frames)
        last_seq = self.stamp(dst, batch)
        try:
            write(batch.span)
        except OSError as exc:
            errors[type(exc).__name__] += n
            return 0
        self._seq[dst] = last_seq
        return n


class _FrameSender(FrameStamper):
    """Shared by tcp and vswitch: number the frames of a batch and send them in one sendall."""

    def _socket_for(self, dst: int) -> socket.socket:
        raise NotImplementedError

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        """Stamp and send the batch in ONE sendall (see send_stamped)."""
        try:
            sock = self._socket_for(dst)
        except KeyError:
            errors["NoConnection"] += len(batch.frames)
            return 0
        return self.send_stamped(dst, batch, errors, sock.sendall)


class _SocketEndpoint(ReceiveEndpoint):
    """A poll set over connections, each with its FrameReader; frames go to the handler.

    `select.poll`, not `selectors`: one C call per wake-up. The selectors wrapper's Python
    (timeout arithmetic, a key object per ready socket) was a measurable share of receiving a
    few small frames, which is what a wake-up brings at one packet per send.
    """

    def __init__(self) -> None:
        self._poll = select.poll()
        # fd -> (socket, its reader); no reader: a listening socket (see TcpListener)
        self._conns: dict[int, tuple[socket.socket, FrameReader | None]] = {}
        self.protocol_errors = 0

    def _watch(self, sock: socket.socket, reader: FrameReader | None) -> None:
        self._conns[sock.fileno()] = (sock, reader)
        self._poll.register(sock, select.POLLIN)

    def _add(self, sock: socket.socket, reader: FrameReader | None = None) -> None:
        self._watch(sock, reader or FrameReader())

    def _drop(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._conns.pop(fd, None) is not None:
            self._poll.unregister(fd)
        _shutdown(sock)

    def _receive(self, sock: socket.socket, reader: FrameReader, handler: BlockHandler) -> int:
        """One receive call on a readable connection, then every whole frame to `handler`."""
        try:
            if recv_into_reader(sock, reader) == 0:
                self._drop(sock)
                return 0
            return reader.drain(handler)
        except (OSError, FrameError):
            self.protocol_errors += 1
            self._drop(sock)
            return 0

    def _accept(self, listener: socket.socket) -> None:
        """A listening socket is readable (only endpoints that listen watch one)."""
        raise NotImplementedError

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        n = 0
        for fd, _ in self._poll.poll(timeout * 1000):
            conn = self._conns.get(fd)
            if conn is None:
                continue
            sock, reader = conn
            if reader is None:
                self._accept(sock)
            else:
                n += self._receive(sock, reader, handler)
        return n

    def close(self) -> None:
        for sock, _ in list(self._conns.values()):
            self._drop(sock)


# -- tcp: partition to partition --------------------------------------------------------------


class TcpListener(_SocketEndpoint):
    """Accepts connections from peers on 127.0.0.1; each starts with a hello frame."""

    channel = "tcp"

    def open(self, host: str = LOOPBACK) -> int:
        """Listen on an ephemeral port of `host` (default loopback; on a cluster the host's
        real address) and return it (a fresh one per run)."""
        self.close()
        listener = socket.create_server((host, 0), backlog=64)
        listener.setblocking(False)
        self._watch(listener, None)
        return listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._add(conn, _HelloReader())


def close_listener(selector: selectors.BaseSelector, listener: socket.socket) -> None:
    """Take a listening socket out of its selector (if it is still in) and close it."""
    try:
        selector.unregister(listener)
    except (KeyError, ValueError):
        pass
    listener.close()


class _HelloReader(FrameReader):
    """A FrameReader that expects (and swallows) one hello frame before any packet."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: int | None = None

    def drain(self, handler: BlockHandler) -> int:
        if self.peer is None:
            header = self.frame()
            if header is None:
                return 0
            dst, src, _seq, length = header
            if dst != 0 or length != 0:
                raise FrameError(f"expected a hello frame, got destination {dst} length {length}")
            self.peer = src
            self.consume()
        return super().drain(handler)


class TcpLinks(_FrameSender, SendTransport):
    """One TCP connection to each peer's listener (opened per run, closed after it)."""

    name = "tcp"
    channel = "tcp"

    def __init__(self, network_id: int):
        super().__init__(network_id)
        self._socks: dict[int, socket.socket] = {}

    def connect(self, ports: dict[int, int | tuple[str, int]]) -> None:
        """Connect to each peer's listener: a loopback port, or (address, port) for a peer on
        another host."""
        for peer, where in ports.items():
            if peer in self._socks:
                continue
            host, port = where if isinstance(where, tuple) else (LOOPBACK, where)
            try:
                sock = connect(port, host=host)
                sock.sendall(hello_frame(self.network_id))
            except OSError as exc:
                raise TransportError(f"tcp: cannot connect to partition {peer} on "
                                     f"{host}:{port}: {exc}") from None
            self._socks[peer] = sock

    def _socket_for(self, dst: int) -> socket.socket:
        return self._socks[dst]

    def close(self) -> None:
        socks, self._socks = self._socks, {}
        for sock in socks.values():
            _shutdown(sock)


# -- vswitch: through the hypervisor's virtual switch -----------------------------------------


class SwitchPort(_FrameSender, SendTransport, _SocketEndpoint):
    """This partition's single connection to the virtual switch: sends and receives on it."""

    name = "vswitch"
    channel = "vswitch"

    def __init__(self, network_id: int):
        _FrameSender.__init__(self, network_id)
        _SocketEndpoint.__init__(self)
        self._sock: socket.socket | None = None

    def connect(self, port: int, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect, say hello and wait for the switch's acknowledgement (we are reachable)."""
        if self._sock is not None:
            return
        reader = FrameReader()
        try:
            sock = connect(port, timeout)
            sock.sendall(hello_frame(self.network_id))
            sock.settimeout(timeout)
            deadline = time.monotonic() + timeout
            while (header := reader.frame()) is None:
                if time.monotonic() > deadline or recv_into_reader(sock, reader) == 0:
                    raise TransportError(f"vswitch on port {port} closed before acknowledging")
            sock.settimeout(None)
        except OSError as exc:
            raise TransportError(f"vswitch: cannot connect on {LOOPBACK}:{port}: {exc}") from None
        if header != (self.network_id, 0, 0, 0):
            _shutdown(sock)
            raise TransportError(f"vswitch refused network ID {self.network_id}: {header}")
        reader.consume()
        self._sock = sock
        self._add(sock, reader)

    def _socket_for(self, dst: int) -> socket.socket:
        if self._sock is None:
            raise KeyError(dst)
        return self._sock

    def close(self) -> None:
        _SocketEndpoint.close(self)
        self._sock = None
