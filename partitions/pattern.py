"""Verifiable packet contents (pure).

A packet is PACKET_HEADER (source ID, destination ID, per-pair packet counter, send timestamp)
followed by a body cut from one shared byte pattern at an offset that depends on source and
counter, so a misrouted, stale or torn packet fails the check. Verification is memcmp speed,
never a Python loop over bytes: one slice comparison per packet (`check`), or for a block of
packets (`check_block`, one row each) a few vectorised comparisons for the whole block.

The pattern repeats every _PERIOD bytes and consecutive counters have consecutive offsets, so
the expected bodies of a run of packets are the rows of ONE strided view of the pattern (row i
starts one byte after row i-1): filling (`fill_rows`) or checking a block is one vectorised
operation, whatever its length.
"""

from __future__ import annotations

import struct

import numpy as np

from partitions.blocks import SMALL_BLOCK

PACKET_HEADER = struct.Struct("<IIQQ")  # source ID, destination ID, counter, send time (ns)
PACKET_DTYPE = np.dtype([("source", "<u4"), ("destination", "<u4"), ("counter", "<u8"),
                         ("sent_ns", "<u8")])
MIN_PACKET = PACKET_HEADER.size
_PERIOD = 256  # the pattern is bytes 0..255 repeated: a body is a slice at offset counter % 256
_ROW_BY_ROW = 2048  # bodies at least this long are copied and compared row by row (memcpy/cmp)
_CHUNK = 256 << 10  # bytes of bodies compared per vectorised step (bounds the temporaries)
MAX_ROWS = 32768  # rows of one fill_rows/check_block call (bounds the pattern's length)


class Pattern:
    def __init__(self, max_size: int):
        self._bytes = bytes(range(_PERIOD)) * ((max_size + MAX_ROWS) // _PERIOD + 2)
        self._view = memoryview(self._bytes)

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

    def _bodies(self, src: int, first_counter: int, rows: int, n: int) -> np.ndarray:
        """The expected bodies of `rows` consecutive packets: row i is the pattern at offset
        (first offset + i), which is the body of counter first_counter + i (period 256)."""
        return np.ndarray((rows, n), np.uint8, buffer=self._bytes,
                          offset=self._offset(src, first_counter), strides=(1, 1))

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
        header = np.empty(count, dtype=PACKET_DTYPE)
        header["source"], header["destination"], header["sent_ns"] = src, dst, sent_ns
        header["counter"] = np.arange(first_counter, first_counter + count, dtype=np.uint64)
        rows[:, :MIN_PACKET] = header.view(np.uint8).reshape(count, MIN_PACKET)
        n = size - MIN_PACKET
        if n < _ROW_BY_ROW:
            rows[:, MIN_PACKET:] = self._bodies(src, first_counter, count, n)
            return
        for i in range(count):  # large bodies: one memcpy each beats numpy's strided copy
            memoryview(rows[i])[MIN_PACKET:] = self._body(src, first_counter + i, n)

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
        each row to learn which are bad)."""
        count, size = rows.shape
        self._check_rows(count)
        if size < MIN_PACKET or count == 0:
            return None
        header = np.ascontiguousarray(rows[:, :MIN_PACKET]).view(PACKET_DTYPE).ravel()
        counters = header["counter"]
        first = int(counters[0])
        if not ((header["source"] == src).all() and (header["destination"] == dst).all()
                and (counters - counters[0] == np.arange(count, dtype=np.uint64)).all()):
            return None
        n = size - MIN_PACKET
        bodies = rows[:, MIN_PACKET:]
        if n >= _ROW_BY_ROW:
            start = self._offset(src, first)
            if not all(self._bytes.startswith(bodies[i], start + i) for i in range(count)):
                return None
        else:
            expected = self._bodies(src, first, count, n)
            if n % 8 == 0:  # compare words, not bytes (a third faster at 1 KiB)
                bodies, expected, n = bodies.view(np.uint64), expected.view(np.uint64), n // 8
            step = max(1, _CHUNK // max(1, n * bodies.itemsize))
            for i in range(0, count, step):
                if not np.array_equal(bodies[i:i + step], expected[i:i + step]):
                    return None
        return header["sent_ns"]
