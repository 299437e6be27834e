"""Frames: how a packet travels on the socket transports and the peers (pure, no I/O).

A frame is a FRAME header (destination ID, source ID, per-pair sequence number, payload length)
then the payload. The sender lays the frames of a batch out back to back in its own memory
(header right before each payload, `FrameStamper`), so N frames go in ONE ``sendall`` with no
extra copy. `FrameReader` turns received bytes back into frames; the virtual switch uses it
too.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

import numpy as np

from adapter.ring import MAX_RUN_RECORDS
from partitions import blocks
from partitions.blocks import (
    SMALL_BLOCK,
    BlockHandler,
    as_bytes,
    find_block,
    payloads,
)
from scripts.workload.transports import Batch, BatchLayout

FRAME = struct.Struct("<IIQQ")  # destination ID, source ID, per-pair sequence number, length
MAX_FRAME_PAYLOAD = 64 << 20  # a frame announcing more is a protocol violation
GREEDY_READ = 256 << 10  # most bytes one receive call asks for when no large frame is pending
LARGE_FRAME = 4 << 10  # frames above this are read exactly (no over-read, no compaction)
READER_CAPACITY = 1 << 20


class FrameError(Exception):
    """The byte stream is not a sequence of frames any more: close the connection."""


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
    (peers.py, iceoryx2_peer.py) and `FrameReader` share it."""
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
