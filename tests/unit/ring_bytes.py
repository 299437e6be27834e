"""A receive area's ring in a plain bytearray, as the ring tests (test_ring*.py) use it: its
capacity, and the header reader that `next_record` is given."""

from __future__ import annotations

from adapter.ring import RECORD_HEADER

CAP = 4096


def header_reader(buf: bytearray):
    return lambda position: RECORD_HEADER.unpack_from(buf, position)
