"""Verifiable packet contents (pure).

A packet is PACKET_HEADER (source ID, destination ID, per-pair packet counter, send timestamp)
followed by a body cut from one shared byte pattern at an offset that depends on source and
counter, so a misrouted, stale or torn packet fails the check. Verification is one slice
comparison (memcmp speed), never a Python loop over bytes.
"""

from __future__ import annotations

import struct

PACKET_HEADER = struct.Struct("<IIQQ")  # source ID, destination ID, counter, send time (ns)
MIN_PACKET = PACKET_HEADER.size
_PERIOD = 251  # prime, so offsets cycle through all residues


class Pattern:
    def __init__(self, max_size: int):
        self._bytes = bytes(range(256)) * (max_size // 256 + 2)
        self._view = memoryview(self._bytes)

    @staticmethod
    def _offset(src: int, counter: int) -> int:
        return (src * 7 + counter) % _PERIOD

    def _body(self, src: int, counter: int, n: int) -> memoryview:
        k = self._offset(src, counter)
        return self._view[k:k + n]

    def fill(self, buf: memoryview, src: int, dst: int, counter: int, sent_ns: int) -> None:
        """Write a packet of len(buf) bytes (>= MIN_PACKET) into `buf`."""
        if len(buf) < MIN_PACKET:
            raise ValueError(f"packet size {len(buf)} is below the minimum {MIN_PACKET}")
        PACKET_HEADER.pack_into(buf, 0, src, dst, counter, sent_ns)
        buf[MIN_PACKET:] = self._body(src, counter, len(buf) - MIN_PACKET)

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
