"""The socket transports' frame decoder (partitions.transports.FrameReader) without sockets."""

from __future__ import annotations

import random

import pytest

from partitions.transports import FRAME, LARGE_FRAME, FrameError, FrameReader


def frame(dst: int, src: int, seq: int, payload: bytes) -> bytes:
    return FRAME.pack(dst, src, seq, len(payload)) + payload


def feed(reader: FrameReader, data: bytes, chunks: list[int]) -> list[tuple[int, int, bytes]]:
    """Deliver `data` in receive calls of at most the given sizes; collect every frame."""
    got: list[tuple[int, int, bytes]] = []

    def keep(src: int, seq: int, payload: memoryview) -> None:
        got.append((src, seq, bytes(payload)))

    pos = 0
    i = 0
    while pos < len(data):
        with reader.recv_buffer() as buf:
            n = min(len(buf), chunks[i % len(chunks)], len(data) - pos)
            buf[:n] = data[pos:pos + n]
        reader.wrote(n)
        pos += n
        i += 1
        reader.drain(keep)
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
