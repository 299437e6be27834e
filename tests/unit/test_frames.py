"""The socket transports' frame decoder (workload FrameReader) without sockets."""

from __future__ import annotations

import random

import numpy as np
import pytest

from partitions import blocks
from partitions.blocks import SMALL_BLOCK
from scripts.workload.frames import FRAME, GREEDY_READ, LARGE_FRAME, FrameError, FrameReader


def frame(dst: int, src: int, seq: int, payload: bytes) -> bytes:
    return FRAME.pack(dst, src, seq, len(payload)) + payload


def feed(reader: FrameReader, data: bytes, chunks: list[int],
         calls: list[int] | None = None) -> list[tuple[int, int, bytes]]:
    """Deliver `data` in receive calls of at most the given sizes; collect every frame (and,
    into `calls`, the number of rows of each handler call)."""
    got: list[tuple[int, int, bytes]] = []

    def keep(src: int, first_seq: int, rows) -> None:
        # long blocks come as a 2-D uint8 array, short ones as memoryviews (blocks.payloads)
        if len(rows) >= SMALL_BLOCK:
            assert rows.ndim == 2 and rows.dtype == np.uint8
        else:
            assert len(rows) >= 1 and all(isinstance(r, memoryview) for r in rows)
            assert len({len(r) for r in rows}) == 1
        if calls is not None:
            calls.append(len(rows))
        got.extend((src, first_seq + i, row.tobytes()) for i, row in enumerate(rows))

    pos = 0
    i = 0
    delivered = 0
    while pos < len(data):
        with reader.recv_buffer() as buf:
            n = min(len(buf), chunks[i % len(chunks)], len(data) - pos)
            buf[:n] = data[pos:pos + n]
        reader.wrote(n)
        pos += n
        i += 1
        delivered += reader.drain(keep)
        assert delivered == len(got)  # drain reports the frames it handed over
    return got


SMALL = [0, 1, 63, 64, 200, 17]
LARGE = [LARGE_FRAME, LARGE_FRAME + 1, 70_000, 300_000, 5]


@pytest.mark.parametrize("chunks, sizes", [([1], SMALL), ([7, 3], SMALL), ([997, 13], LARGE),
                                           ([65536], SMALL + LARGE), ([1 << 20], SMALL + LARGE),
                                           ([24, 1000, 5], SMALL)])
def test_frames_survive_any_split(chunks, sizes):
    rng = random.Random(len(chunks))
    frames = [(3, i + 1, bytes(rng.randrange(256) for _ in range(min(s, 64))) * (s // 64)
               + bytes(s % 64)) for i, s in enumerate(sizes * 3)]
    data = b"".join(frame(2, src, seq, p) for src, seq, p in frames)
    reader = FrameReader(capacity=256 << 10)
    assert feed(reader, data, chunks) == frames
    assert reader.buffered == 0


def test_large_frame_grows_the_buffer_once():
    payload = bytes(range(256)) * 8192  # 2 MiB, larger than the buffer
    reader = FrameReader(capacity=64 << 10)
    got = feed(reader, frame(1, 2, 1, payload) * 2, [1 << 20])
    assert [g[2] == payload for g in got] == [True, True]


def test_oversized_announcement_is_a_protocol_error():
    reader = FrameReader(max_payload=1000)
    with reader.recv_buffer() as buf:
        buf[:FRAME.size] = FRAME.pack(1, 2, 3, 1001)
    reader.wrote(FRAME.size)
    with pytest.raises(FrameError, match="1001"):
        reader.recv_buffer()


def test_frame_view_and_consume_for_forwarding():
    reader = FrameReader()
    data = frame(4, 1, 1, b"abc") + frame(5, 1, 2, b"defg")[:10]
    with reader.recv_buffer() as buf:
        buf[:len(data)] = data
    reader.wrote(len(data))
    assert reader.frame() == (4, 1, 1, 3)
    with reader.frame_view() as view:
        assert bytes(view) == frame(4, 1, 1, b"abc")
    reader.consume()
    assert reader.frame() is None  # the second one is still partial


def equal_frames(count: int, size: int, src: int = 3, first_seq: int = 1, dst: int = 2
                 ) -> list[tuple[int, int, bytes]]:
    """`count` frames of one size from one source, consecutive seqs, distinct payloads."""
    return [(src, first_seq + i,
             bytes((i * 13 + j * 5 + src) % 256 for j in range(min(size, 97))) * (size // 97)
             + bytes((i + j) % 256 for j in range(size % 97))) for i in range(count)]


@pytest.mark.parametrize("size", [0, 1, 40, 1000, LARGE_FRAME + 100])
@pytest.mark.parametrize("chunks", [[1], [5, 24, 3], [100, 7], [997, 13], [4096], [1 << 20]])
def test_equal_frames_in_any_split_arrive_in_order(size, chunks):
    count = 40 if size <= LARGE_FRAME else 6
    frames = equal_frames(count, size)
    data = b"".join(frame(2, src, seq, p) for src, seq, p in frames)
    reader = FrameReader(capacity=64 << 10)
    assert feed(reader, data, chunks) == frames
    assert reader.buffered == 0


@pytest.mark.parametrize("size", [0, 24, 64, 1000])
def test_equal_frames_at_once_form_blocks(size):
    count = 300
    frames = equal_frames(count, size, first_seq=2**40)
    data = b"".join(frame(2, src, seq, p) for src, seq, p in frames)
    calls: list[int] = []
    reader = FrameReader(capacity=1 << 20)
    assert feed(reader, data, [len(data)], calls) == frames
    assert sum(calls) == count
    assert len(calls) <= count // 10  # blocks really form
    if len(data) <= GREEDY_READ:  # all of them buffered at once: one block
        assert calls == [count]


def test_blocks_stop_at_max_block(monkeypatch):
    """A block never exceeds MAX_BLOCK rows (made small here, so that the frames of
    MAX_BLOCK + 10 packets fit one greedy read)."""
    monkeypatch.setattr(blocks, "MAX_BLOCK", 1000)
    count = blocks.MAX_BLOCK + 10
    frames = equal_frames(count, 8)
    data = b"".join(frame(2, src, seq, p) for src, seq, p in frames)
    assert len(data) <= GREEDY_READ
    calls: list[int] = []
    assert feed(FrameReader(capacity=1 << 20), data, [len(data)], calls) == frames
    assert calls == [blocks.MAX_BLOCK, 10]


def test_blocks_form_in_a_split_stream_too():
    frames = equal_frames(500, 100)
    data = b"".join(frame(2, src, seq, p) for src, seq, p in frames)
    calls: list[int] = []
    assert feed(FrameReader(capacity=64 << 10), data, [10_000, 333], calls) == frames
    assert len(calls) < len(frames) / 5


def mixed_stream(kind: str, count: int) -> list[tuple[int, int, int, bytes]]:
    """(destination, source, seq, payload) frames that must not be merged into one block."""
    out = []
    for i in range(count):
        payload = bytes((i * 7 + j) % 256 for j in range(50))
        if kind == "sources":
            out.append((2, 3 + i % 2, 1 + i // 2, payload))
        elif kind == "lengths":
            out.append((2, 3, 1 + i, payload[:50 - 8 * (i % 2)]))
        elif kind == "destinations":
            out.append((2 + i % 2, 3, 1 + i, payload))
        elif kind == "gaps":
            out.append((2, 3, 1 + 2 * i, payload))  # every seq skips one
        else:  # runs of 1 to 5 equal frames, then a change of source and length
            run = i // 5
            out.append((2, 3 + run % 3, 1 + i, payload[:20 + run % 4]))
    return out


@pytest.mark.parametrize("kind", ["sources", "lengths", "destinations", "gaps", "runs"])
@pytest.mark.parametrize("chunks", [[1 << 20], [1], [31, 64, 200]])
def test_mixed_streams_deliver_every_frame(kind, chunks):
    frames = mixed_stream(kind, 60)
    data = b"".join(frame(dst, src, seq, p) for dst, src, seq, p in frames)
    calls: list[int] = []
    got = feed(FrameReader(capacity=64 << 10), data, chunks, calls)
    assert got == [(src, seq, p) for _, src, seq, p in frames]
    if kind != "runs":
        assert calls == [1] * len(frames)  # no two neighbours belong together
    elif chunks == [1 << 20]:
        assert calls == [5] * (len(frames) // 5)


@pytest.mark.parametrize("count", [5, SMALL_BLOCK - 1, SMALL_BLOCK, 40])
def test_a_block_crosses_the_u64_sequence_wrap(count):
    """Sequence numbers are u64 and wrap: 2**64 - 2, 2**64 - 1, 0, 1 ... still one block
    (short blocks are compared a column at a time, long ones by u64 differences)."""
    first = 2**64 - 2
    frames = [(3, (first + i) % 2**64, bytes([i]) * 30) for i in range(count)]
    data = b"".join(frame(2, src, seq, p) for src, seq, p in frames)
    calls: list[int] = []
    got = feed(FrameReader(capacity=1 << 20), data, [len(data)], calls)
    assert calls == [count]
    assert [p for _, _, p in got] == [p for _, _, p in frames]
