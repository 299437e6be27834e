"""Blocks: runs of equal records handed to a receive handler in one call (pure, numpy).

A receive ring record (adapter/ring.py: kind, source, seq, length) and a socket frame
(transports.FRAME: destination, source, seq, length) share one header layout: two u32 and two
u64, 24 bytes. Batched senders put many packets of one size from one source, with consecutive
sequence numbers, back to back; a receiver finds such a run with ONE vectorised comparison of
the strided headers and hands it over as a 2-D array of payloads (one row per packet), so the
per-packet cost is numpy's, not the interpreter's. Anything irregular is simply a block of one.

Invariant: a block never spans a ring wrap or a partial frame; its rows are views into the
receive memory, valid only during the handler call.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

HEADER_DTYPE = np.dtype([("tag", "<u4"), ("source", "<u4"), ("seq", "<u8"), ("length", "<u8")])
HEADER_BYTES = HEADER_DTYPE.itemsize  # == adapter.ring.HEADER_SIZE == transports.FRAME.size
HEADER = struct.Struct("<IIQQ")  # the same layout, for the few-records path
MAX_BLOCK = 32768  # rows per handler call: bounds the work (and temporaries) of one call
# Below this many rows a numpy call costs more than the interpreter (a few us each on a small
# VM): blocks this short are found, filled and checked one packet at a time instead.
SMALL_BLOCK = 16

# (source ID, sequence number of the first row, payloads: one per packet, all the same length).
# The payloads are a 2-D uint8 array (one row per packet) for a block of SMALL_BLOCK or more,
# else a list of memoryviews: a lone packet is not worth a numpy call.
BlockHandler = Callable[[int, int, "np.ndarray | list[memoryview]"], None]


def as_bytes(buffer) -> np.ndarray:
    """A flat uint8 array over `buffer` (no copy; writable if the buffer is)."""
    return np.frombuffer(buffer, dtype=np.uint8)


def header_view(flat: np.ndarray, offset: int, stride: int, count: int) -> np.ndarray:
    """`count` headers at `offset`, `offset + stride`, ... of `flat`, as structured records."""
    return np.ndarray((count,), dtype=HEADER_DTYPE, buffer=flat, offset=offset,
                      strides=(stride,))


def uniform_prefix(headers: np.ndarray) -> int:
    """How many leading headers continue the first: same tag, source and length, and
    sequence numbers counting up by one. Always >= 1 for a non-empty array."""
    first = headers[0]
    same = ((headers["tag"] == first["tag"]) & (headers["source"] == first["source"])
            & (headers["length"] == first["length"])
            & (headers["seq"] - first["seq"] == np.arange(len(headers), dtype=np.uint64)))
    if same.all():
        return len(headers)
    return int(np.argmin(same))


def payload_rows(flat: np.ndarray, offset: int, stride: int, count: int, length: int,
                 header: int = HEADER_BYTES) -> np.ndarray:
    """The payloads of `count` records of `stride` bytes starting at `offset`, one row each
    (each payload follows its `header`-byte header: 0 for the packets of a RUN record)."""
    return flat[offset:offset + count * stride].reshape(count, stride)[:, header:header + length]


def payloads(view: memoryview, flat: np.ndarray, offset: int, stride: int, count: int,
             length: int, header: int = HEADER_BYTES) -> np.ndarray | list[memoryview]:
    """What a BlockHandler gets: `payload_rows`, or for a short block memoryviews of `view`
    (the same memory as `flat`)."""
    if count >= SMALL_BLOCK:
        return payload_rows(flat, offset, stride, count, length, header)
    start = offset + header
    if count == 1:  # a lone packet, the patent's literal flow
        return [view[start:start + length]]
    return [view[start + i * stride:start + i * stride + length] for i in range(count)]


def find_block(flat: np.ndarray, offset: int, stride: int, most: int) -> int:
    """Rows in the uniform block at `offset` (records of `stride` bytes, at most `most`)."""
    most = min(most, MAX_BLOCK)
    if most <= 1:
        return most
    # the first few one by one: an interleaved ring (many sources) ends its blocks early
    # (numpy arrays are buffers; the stubs do not say so)
    tag, source, seq, length = HEADER.unpack_from(flat, offset)  # type: ignore[arg-type]
    for i in range(1, min(most, SMALL_BLOCK)):
        expected = (tag, source, (seq + i) & 0xFFFF_FFFF_FFFF_FFFF, length)  # u64, as numpy
        if HEADER.unpack_from(flat, offset + i * stride) != expected:  # type: ignore[arg-type]
            return i
    if most <= SMALL_BLOCK:
        return most
    return uniform_prefix(header_view(flat, offset, stride, most))
