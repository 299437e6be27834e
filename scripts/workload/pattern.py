"""Verifiable packet contents (pure).

A packet is PACKET_HEADER (source ID, destination ID, per-pair packet counter, send timestamp)
followed by a body cut from one shared byte pattern at an offset that depends on source and
counter, so a misrouted, stale or torn packet fails the check. Verification is memcmp speed,
never a Python loop over bytes: one slice comparison per packet (`check`), or ONE memcmp for a
block of packets (`check_block`, one row each).

The pattern repeats every _PERIOD bytes and consecutive counters have consecutive offsets, so
the expected bodies of a run of packets are ONE view of the pattern with a row stride of one
byte (row i starts one byte after row i-1): filling a block (`fill_rows`) is one numpy copy
of a row at a time (each row one void element, so a memcpy each), whatever its length.

`check_block` compares against an *image*: the expected bytes of consecutive packets laid out
exactly as the block lies in memory (same stride). Image row r holds the body of pattern
offset r, and offsets repeat every _PERIOD, so one image of _PERIOD + rows rows serves every
block of up to `rows` packets of that layout, whatever its first offset. Per block only the
headers are written into it (source, destination and counters as expected; the send time,
which cannot be known, and the bytes between packets, which are not packet bytes, copied from
the block), then the block's whole span is compared in one memcmp. Bodies of _ROW_BY_ROW
bytes or more are compared one memcmp per row against the pattern itself (no image).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from partitions.blocks import SMALL_BLOCK

PACKET_HEADER = struct.Struct("<IIQQ")  # source ID, destination ID, counter, send time (ns)
PACKET_DTYPE = np.dtype([("source", "<u4"), ("destination", "<u4"), ("counter", "<u8"),
                         ("sent_ns", "<u8")])
MIN_PACKET = PACKET_HEADER.size
_PERIOD = 256  # the pattern is bytes 0..255 repeated: a body is a slice at offset counter % 256
_ROW_BY_ROW = 2048  # bodies at least this long are checked row by row (one memcmp each)
MAX_ROWS = 32768  # rows of one fill_rows/check_block call (bounds the pattern's length)
# A block is checked in chunks of about this many bytes; the image of a chunk is that plus
# _PERIOD rows (768 KiB at 1 KiB packets): it stays in a 1 MiB L2 under load.
_IMAGE_BYTES = 512 << 10
_IMAGES_KEPT = 2  # images per thread (one per block layout in use: ring runs, socket frames)


class _Image:
    """The expected bytes of up to `rows` consecutive packets of `size` bytes, `stride` apart,
    whose first has pattern offset k: rows k .. k + rows - 1 of this image (see module doc)."""

    def __init__(self, pattern: bytes, stride: int, size: int, rows: int):
        total = _PERIOD + rows
        self.rows = rows
        self.bytes = bytearray(total * stride)
        grid = np.frombuffer(self.bytes, np.uint8).reshape(total, stride)
        n = size - MIN_PACKET
        grid[:, MIN_PACKET:size] = np.ndarray((total, n), np.uint8, buffer=pattern,
                                              strides=(1, 1))
        # the bytes between one packet and the next: copied, not checked
        self.gaps = _records(grid[:, size:]) if stride > size else None
        self.headers = np.ndarray((total,), PACKET_DTYPE, buffer=self.bytes, strides=(stride,))


class Pattern:
    def __init__(self, max_size: int):
        self._bytes = bytes(range(_PERIOD)) * ((max_size + MAX_ROWS) // _PERIOD + 2)
        self._view = memoryview(self._bytes)
        self._local = threading.local()  # images are written per block: one set per thread

    def _image(self, stride: int, size: int) -> _Image:
        """This thread's image for rows of `size`-byte packets `stride` apart: _PERIOD rows
        plus as many as about _IMAGE_BYTES hold (the chunk a block is checked in)."""
        images = self._local.__dict__.setdefault("images", {})
        image = images.get((stride, size))
        if image is None:
            if len(images) >= _IMAGES_KEPT:
                images.clear()
            rows = max(1, min(MAX_ROWS, _IMAGE_BYTES // stride))
            image = images[(stride, size)] = _Image(self._bytes, stride, size, rows)
        return image

    @staticmethod
    def _offset(src: int, counter: int) -> int:
        return (src * 7 + counter) % _PERIOD

    def _body(self, src: int, counter: int, n: int) -> memoryview:
        k = self._offset(src, counter)
        return self._view[k:k + n]

    @staticmethod
    def _check_rows(rows: int) -> None:
        if rows > MAX_ROWS:
            raise ValueError(f"{rows} rows in one block (at most {MAX_ROWS})")

    def fill(self, buf: memoryview, src: int, dst: int, counter: int, sent_ns: int) -> None:
        """Write a packet of len(buf) bytes (>= MIN_PACKET) into `buf`."""
        if len(buf) < MIN_PACKET:
            raise ValueError(f"packet size {len(buf)} is below the minimum {MIN_PACKET}")
        PACKET_HEADER.pack_into(buf, 0, src, dst, counter, sent_ns)
        buf[MIN_PACKET:] = self._body(src, counter, len(buf) - MIN_PACKET)

    def fill_rows(self, rows: np.ndarray, src: int, dst: int, first_counter: int,
                  sent_ns: int) -> None:
        """Write packets `first_counter`, `first_counter + 1`, ... into the rows of `rows`
        (one packet per row, all stamped `sent_ns`): the same bytes as `fill` per row."""
        count, size = rows.shape
        if size < MIN_PACKET:
            raise ValueError(f"packet size {size} is below the minimum {MIN_PACKET}")
        self._check_rows(count)
        if count < SMALL_BLOCK:
            for i in range(count):
                self.fill(memoryview(rows[i]), src, dst, first_counter + i, sent_ns)
            return
        if not _one_buffer(rows):
            packed = np.empty(rows.shape, np.uint8)
            self.fill_rows(packed, src, dst, first_counter, sent_ns)
            rows[:] = packed
            return
        header = np.empty(count, dtype=PACKET_DTYPE)
        header["source"], header["destination"], header["sent_ns"] = src, dst, sent_ns
        header["counter"] = _counters(first_counter, count)
        heads = _records(rows[:, :MIN_PACKET])
        heads[:] = header.view(heads.dtype)
        n = size - MIN_PACKET
        if n:  # row i is the pattern from offset k + i: a view with a row stride of ONE byte
            bodies = _records(rows[:, MIN_PACKET:])
            bodies[:] = np.ndarray((count,), bodies.dtype, buffer=self._bytes,
                                   offset=self._offset(src, first_counter), strides=(1,))

    def check(self, payload: memoryview, src: int, dst: int) -> tuple[bool, int, int]:
        """(intact, counter, send time) of a received packet claimed to come from `src`."""
        if len(payload) < MIN_PACKET:
            return False, 0, 0
        p_src, p_dst, counter, sent_ns = PACKET_HEADER.unpack_from(payload, 0)
        # bytes.startswith on a memoryview is a memcmp with no copy (a memoryview == compares
        # element by element, ~70x slower).
        ok = (p_src == src and p_dst == dst
              and self._bytes.startswith(payload[MIN_PACKET:], self._offset(src, counter)))
        return ok, counter, sent_ns

    def check_block(self, rows: np.ndarray, src: int, dst: int) -> np.ndarray | None:
        """The send timestamps of a block of packets (one per row) claimed to come from `src`,
        if every one is intact and their counters are consecutive; else None (then `check`
        each row to learn which are bad). The timestamps are a view of `rows`, valid as long
        as they are."""
        count, size = rows.shape
        self._check_rows(count)
        if size < MIN_PACKET or count == 0:
            return None
        rows = _as_one_buffer(rows)
        header = rows[:, :MIN_PACKET].view(PACKET_DTYPE)[:, 0]  # each row's header, no copy
        sent_ns = header["sent_ns"]
        first = int(header["counter"][0])
        if size - MIN_PACKET >= _ROW_BY_ROW:
            ok = self._rows_match(rows, header, src, dst, first)
        else:
            ok = self._image_match(rows, sent_ns, src, dst, first)
        return sent_ns if ok else None

    def _image_match(self, rows: np.ndarray, sent_ns: np.ndarray, src: int, dst: int,
                     first_counter: int) -> bool:
        """ONE memcmp per chunk of rows, against its image."""
        for i, part, image in self._chunks(rows):
            span, at = self._lay_out(image, part, src, dst, first_counter + i,
                                     sent_ns[i:i + len(part)])
            if not image.bytes.startswith(span, at):
                return False
        return True

    def _rows_match(self, rows: np.ndarray, header: np.ndarray, src: int, dst: int,
                    first_counter: int) -> bool:
        """Large bodies: headers checked as arrays, then one memcmp per row against the pattern
        itself (an image of such rows would be too big to be worth it)."""
        counters = header["counter"]
        if not ((header["source"] == src).all() and (header["destination"] == dst).all()
                and (counters - counters[0] == np.arange(len(rows), dtype=np.uint64)).all()):
            return False
        start = self._offset(src, first_counter)
        return all(self._bytes.startswith(row[MIN_PACKET:], start + i)
                   for i, row in enumerate(rows))

    def _chunks(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, _Image]]:
        """(first row, rows, image) per chunk of `rows` whose image fits about _IMAGE_BYTES."""
        count, size = rows.shape
        image = self._image(rows.strides[0], size)
        chunk = image.rows
        for i in range(0, count, chunk):
            yield i, rows[i:i + chunk], image

    def _lay_out(self, image: _Image, rows: np.ndarray, src: int, dst: int,
                 first_counter: int, sent_ns) -> tuple[np.ndarray, int]:
        """Complete the image of `rows` (packets `first_counter`, ... from `src` to `dst`,
        stamped `sent_ns`, one per row): their headers, and the bytes between
        them copied from `rows`. Returns the span of `rows` (every byte from the first
        packet's to the last's) and where the same span starts in the image."""
        m, size = rows.shape
        stride = rows.strides[0]
        at = self._offset(src, first_counter)
        want = image.headers[at:at + m]
        want["source"], want["destination"], want["sent_ns"] = src, dst, sent_ns
        want["counter"] = _counters(first_counter, m)
        if stride > size and m > 1:
            image.gaps[at:at + m - 1] = _records(as_strided(rows, (m - 1, stride),
                                                            (stride, 1))[:, size:])
        return as_strided(rows, ((m - 1) * stride + size,), (1,)), at * stride


def _records(columns: np.ndarray) -> np.ndarray:
    """Each row's `columns` as ONE void element, so numpy copies them a row at a time (one
    memcpy each) instead of byte by byte in a 2-D loop: two to three times faster here."""
    return columns.view(np.dtype((np.void, columns.shape[1])))[:, 0]


def _counters(first: int, count: int) -> np.ndarray:
    """`count` consecutive u64 counters from `first`, wrapping as u64 (a garbage header may
    hold any value: it must fail the check, not raise)."""
    return np.arange(count, dtype=np.uint64) + np.uint64(first % 2**64)


def _as_one_buffer(rows: np.ndarray) -> np.ndarray:
    """`rows` as rows of one buffer (see _one_buffer); copied only if they are not. A lone
    row's stride means nothing to numpy (it may be 0): it gets its own size."""
    if len(rows) == 1:
        row = np.ascontiguousarray(rows[0])
        return as_strided(row, (1, len(row)), (len(row), 1))
    return rows if _one_buffer(rows) else np.ascontiguousarray(rows)


def _one_buffer(rows: np.ndarray) -> bool:
    """Rows `strides[0]` bytes apart in one buffer, each contiguous (what blocks are)."""
    return rows.strides[1] == 1 and rows.strides[0] >= rows.shape[1]
