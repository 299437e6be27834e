"""The driver <-> adapter wire protocol: fixed binary frames over pipes (sans-I/O).

Request  = REQUEST_HEADER (magic, version, op, request ID, move count) + count x MOVE
Reply    = REPLY_HEADER (magic, version, op, request ID, frame status, result count)
           + count x RESULT, one per move, in request order.

Every field is a fixed-width little-endian integer; MOVE fields are signed 64-bit so a
negative or huge value arrives intact and is rejected by name instead of wrapping.
A frame is at most MAX_REQUEST_SIZE bytes. Nothing is ever unpickled (Invariant 6): the
adapter decodes a frame once into private immutable objects and uses only those.

A request carries a vector of moves (up to MAX_MOVES) so the control path can be amortised;
the patent's literal flow is the vector of one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import NamedTuple

from adapter.errors import Status

MAGIC = 0x4D58  # "XM"
VERSION = 1
MAX_MOVES = 256

REQUEST_HEADER = struct.Struct("<HBBII")  # magic, version, op, request ID, moves
MOVE = struct.Struct("<qqqq")  # source ID, destination ID, source offset, count
REPLY_HEADER = struct.Struct("<HBBIiI")  # magic, version, op, request ID, status, results
# status, detail, seq, source address, destination (payload) address, count, commit value
RESULT = struct.Struct("<qqQQQQQ")
# The patent's literal flow (and every multiple-write run) is a request of ONE move: its reply
# is packed in one call (a struct call costs about as much as the copy it does, here).
REQUEST_OF_ONE = struct.Struct(REQUEST_HEADER.format + MOVE.format[1:])
REPLY_OF_ONE = struct.Struct(REPLY_HEADER.format + RESULT.format[1:])
MAX_REQUEST_SIZE = REQUEST_HEADER.size + MAX_MOVES * MOVE.size
MAX_REPLY_SIZE = REPLY_HEADER.size + MAX_MOVES * RESULT.size
U64 = (1 << 64) - 1


class Op(IntEnum):
    MOVE = 1  # Fig 11: the adapter executes the move
    GRANT = 2  # Fig 12: the adapter returns the lock and physical addresses
    # Fig 11 multiple-write: each move names a run the sender laid out as it will land in the
    # ring (adapter.ring.RUN_DESCRIPTOR: packets, packet length; then the packets, each padded
    # to 8). ONE ring record and ONE MVXL per run; the adapter checks the descriptor and writes
    # it again itself. Result: seq = first packet's sequence number, detail = packets.
    MOVE_RUN = 3
    # Fig 12 multiple-write: the same run checked and placed the same way (record header and
    # descriptor written by the adapter), then the lock and the addresses of the packets are
    # returned (source and destination past the descriptor) for the driver's ONE MVXL.
    GRANT_RUN = 4
    # A standing grant (a lease): the destination's lock is granted and STAYS with the driver,
    # which commits record after record itself (partitions/leasing.py) until it gives the lock
    # back, by itself or when the adapter recalls it because another sender waits. The move
    # names one byte of the sender's own memory (never read): its checks are a move's.
    # Result: seq = the pair's last sequence number, dst_address and count = the receive area.
    LEASE = 5


# Ops whose moves the driver executes (Fig 12 and leases): nothing commits without the driver,
# and a grant whose reply came too late is given back unused.
GRANT_OPS = frozenset((Op.GRANT, Op.GRANT_RUN, Op.LEASE))


class Flow(StrEnum):
    """Who executes a move: the adapter (Fig 11) or the sender's driver with the granted lock
    (Fig 12). A StrEnum, so "fig11" / "fig12" in a config, a command line or a JSON message is
    the same value."""

    FIG11 = "fig11"
    FIG12 = "fig12"

    @property
    def op(self) -> Op:
        """The request of one move in this flow."""
        return Op.MOVE if self is Flow.FIG11 else Op.GRANT

    @property
    def run_op(self) -> Op:
        """The request of one multiple-write run in this flow."""
        return Op.MOVE_RUN if self is Flow.FIG11 else Op.GRANT_RUN

    @classmethod
    def parse(cls, value: object) -> Flow:
        """The flow named by `value`; ValueError naming it and the known flows otherwise."""
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        raise ValueError(f"flow {value!r} is not one of {[f.value for f in cls]}")


FLOWS = tuple(Flow)


class ProtocolViolation(Exception):
    """The byte stream cannot be trusted any more: the adapter closes the pipe."""


class Move(NamedTuple):
    """One move of a request. NamedTuples, not frozen dataclasses, on the per-move path: they
    are built several times per move and a frozen dataclass costs ~4x more to construct."""

    src_id: int
    dst_id: int
    offset: int
    count: int  # type: ignore[assignment]  # a field named like tuple.count, on purpose


class Request(NamedTuple):
    """A decoded request (a NamedTuple like Move: one is built per request)."""

    op: int
    request_id: int
    moves: tuple[Move, ...]


class Result(NamedTuple):
    status: int
    detail: int = 0
    seq: int = 0
    src_address: int = 0
    dst_address: int = 0
    count: int = 0  # type: ignore[assignment]  # a field named like tuple.count
    commit_value: int = 0


@dataclass(frozen=True)
class Reply:
    op: int
    request_id: int
    status: int
    results: tuple[Result, ...]


def encode_request(op: int, request_id: int, moves: Sequence[Move]) -> bytes:
    if not 1 <= len(moves) <= MAX_MOVES:
        raise ValueError(f"a request carries 1..{MAX_MOVES} moves, got {len(moves)}")
    if len(moves) == 1:
        return REQUEST_OF_ONE.pack(MAGIC, VERSION, op, request_id, 1, *moves[0])
    parts = [REQUEST_HEADER.pack(MAGIC, VERSION, op, request_id, len(moves))]
    parts += [MOVE.pack(m.src_id, m.dst_id, m.offset, m.count) for m in moves]
    return b"".join(parts)


def _clamp(value: int) -> int:
    """Results carry u64 fields; errors echo values that may be negative or huge."""
    return value & U64


def encode_reply(op: int, request_id: int, status: int, results: list[Result]) -> bytes:
    if len(results) == 1:
        try:
            return REPLY_OF_ONE.pack(MAGIC, VERSION, op & 0xFF, request_id, status, 1,
                                     *results[0])
        except struct.error:
            pass  # an error result echoing a negative or huge value: clamped below
    frame = bytearray(REPLY_HEADER.size + len(results) * RESULT.size)
    REPLY_HEADER.pack_into(frame, 0, MAGIC, VERSION, op & 0xFF, request_id, status, len(results))
    pack_into, offset = RESULT.pack_into, REPLY_HEADER.size
    for r in results:
        try:
            pack_into(frame, offset, *r)
        except struct.error:  # an error result echoing a negative or huge value
            pack_into(frame, offset, r.status, r.detail, *map(_clamp, r[2:]))
        offset += RESULT.size
    return bytes(frame)


class RequestDecoder:
    """Incremental request parser for one pipe: feed bytes, take complete requests.

    A frame with a bad magic, version or move count makes the stream untrustworthy
    (ProtocolViolation: close the pipe). An unknown op in an otherwise well-framed request is
    returned as a Request whose op the adapter rejects with a MALFORMED reply.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_request(self) -> Request | None:
        buf = self._buffer
        if len(buf) < REQUEST_HEADER.size:
            return None
        magic, version, op, request_id, n = REQUEST_HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != VERSION:
            raise ProtocolViolation(f"bad frame header: magic {magic:#x} version {version}")
        if not 1 <= n <= MAX_MOVES:
            raise ProtocolViolation(f"bad move count {n} (allowed 1..{MAX_MOVES})")
        size = REQUEST_HEADER.size + n * MOVE.size
        if len(buf) < size:
            return None
        moves: tuple[Move, ...]
        if n == 1:  # the common case: no view, no iterator
            moves = (Move._make(MOVE.unpack_from(buf, REQUEST_HEADER.size)),)
        else:
            with memoryview(buf) as view:
                moves = tuple(map(Move._make, MOVE.iter_unpack(view[REQUEST_HEADER.size:size])))
        del buf[:size]
        return Request(op, request_id, moves)


def decode_reply_header(data: bytes) -> tuple[int, int, int, int]:
    """(op, request ID, status, result count) of a reply header, validated."""
    magic, version, op, request_id, status, n = REPLY_HEADER.unpack(data)
    if magic != MAGIC or version != VERSION or n > MAX_MOVES:
        raise ProtocolViolation(f"bad reply header: magic {magic:#x} version {version} n {n}")
    return op, request_id, status, n


def decode_results(data: bytes, n: int, offset: int = 0) -> tuple[Result, ...]:
    """The `n` results at `offset` of `data` (a reply frame past its header)."""
    if n == 1:
        return (Result._make(RESULT.unpack_from(data, offset)),)
    with memoryview(data) as view:
        return tuple(map(Result._make, RESULT.iter_unpack(view[offset:offset + n * RESULT.size])))


def malformed_reply(op: int, request_id: int) -> bytes:
    return encode_reply(op, request_id, Status.MALFORMED, [])
