"""The wire protocol (adapter/protocol.py): fixed binary frames, incremental decoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import Status
from adapter.protocol import (
    MAGIC,
    MAX_MOVES,
    MAX_REPLY_SIZE,
    MAX_REQUEST_SIZE,
    MOVE,
    REPLY_HEADER,
    REQUEST_HEADER,
    RESULT,
    U64,
    VERSION,
    Move,
    Op,
    ProtocolViolation,
    Request,
    RequestDecoder,
    Result,
    decode_reply_header,
    decode_results,
    encode_reply,
    encode_request,
    malformed_reply,
)

I64 = st.integers(-(2**63), 2**63 - 1)
I64_EDGES = st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**32, 2**31 - 1, -(2**31)])
FIELD = st.one_of(I64_EDGES, I64)
MOVES = st.builds(Move, FIELD, FIELD, FIELD, FIELD)
U32 = st.integers(0, 2**32 - 1)
OPS = st.integers(0, 255)


def decode_all(data: bytes, chunk: int = 1 << 30) -> list[Request]:
    decoder = RequestDecoder()
    out = []
    for i in range(0, len(data), chunk):
        decoder.feed(data[i:i + chunk])
        while (request := decoder.next_request()) is not None:
            out.append(request)
    assert decoder.buffered == 0
    return out


def test_frame_sizes():
    assert REQUEST_HEADER.size == 12 and MOVE.size == 32
    assert REPLY_HEADER.size == 16 and RESULT.size == 56
    assert MAX_REQUEST_SIZE == 12 + MAX_MOVES * 32
    assert MAX_REPLY_SIZE == 16 + MAX_MOVES * 56
    frame = encode_request(Op.MOVE, 1, [Move(1, 2, 3, 4)])
    assert frame == struct.pack("<HBBII", MAGIC, VERSION, 1, 1, 1) + struct.pack("<qqqq",
                                                                               1, 2, 3, 4)


@given(op=OPS, request_id=U32, moves=st.lists(MOVES, min_size=1, max_size=8))
def test_request_round_trip(op, request_id, moves):
    frame = encode_request(op, request_id, moves)
    assert len(frame) == REQUEST_HEADER.size + len(moves) * MOVE.size <= MAX_REQUEST_SIZE
    assert decode_all(frame) == [Request(op, request_id, tuple(moves))]


def test_a_request_of_the_maximum_size_round_trips():
    moves = [Move(i, -i, 2**63 - 1, -(2**63)) for i in range(MAX_MOVES)]
    frame = encode_request(Op.GRANT, 2**32 - 1, moves)
    assert len(frame) == MAX_REQUEST_SIZE
    assert decode_all(frame) == [Request(Op.GRANT, 2**32 - 1, tuple(moves))]


@pytest.mark.parametrize("n", [0, MAX_MOVES + 1])
def test_encode_refuses_a_bad_move_count(n):
    with pytest.raises(ValueError, match=f"1..{MAX_MOVES} moves, got {n}"):
        encode_request(Op.MOVE, 1, [Move(1, 2, 0, 1)] * n)


@pytest.mark.parametrize("move", [Move(2**63, 0, 0, 0), Move(0, 0, 0, -(2**63) - 1)])
def test_values_beyond_int64_cannot_be_encoded(move):
    with pytest.raises(struct.error):
        encode_request(Op.MOVE, 1, [move])


@given(requests=st.lists(st.tuples(OPS, U32, st.lists(MOVES, min_size=1, max_size=4)),
                         min_size=1, max_size=5),
       chunk=st.integers(1, 200))
def test_back_to_back_frames_split_anywhere(requests, chunk):
    data = b"".join(encode_request(op, rid, moves) for op, rid, moves in requests)
    expected = [Request(op, rid, tuple(moves)) for op, rid, moves in requests]
    assert decode_all(data, chunk) == expected


def test_byte_at_a_time_only_the_last_byte_completes_the_frame():
    frame = encode_request(Op.MOVE, 77, [Move(1, 2, 3, 4), Move(1, 3, 5, 6)])
    decoder = RequestDecoder()
    for i, byte in enumerate(frame):
        decoder.feed(bytes([byte]))
        request = decoder.next_request()
        if i < len(frame) - 1:
            assert request is None and decoder.buffered == i + 1
        else:
            assert request == Request(Op.MOVE, 77, (Move(1, 2, 3, 4), Move(1, 3, 5, 6)))
    assert decoder.buffered == 0 and decoder.next_request() is None


def test_a_truncated_frame_waits_and_the_rest_completes_it():
    frame = encode_request(Op.MOVE, 5, [Move(1, 2, 0, 10)])
    decoder = RequestDecoder()
    decoder.feed(frame[:20])
    assert decoder.next_request() is None and decoder.next_request() is None
    decoder.feed(frame[20:] + frame[:3])
    assert decoder.next_request() == Request(Op.MOVE, 5, (Move(1, 2, 0, 10),))
    assert decoder.next_request() is None and decoder.buffered == 3


def header(magic=MAGIC, version=VERSION, op=Op.MOVE, request_id=1, n=1) -> bytes:
    return REQUEST_HEADER.pack(magic, version, op, request_id, n)


@pytest.mark.parametrize("frame,message", [
    (header(magic=0), "bad frame header: magic 0x0 version 1"),
    (header(magic=0x584D), "magic 0x584d"),
    (header(version=0), "version 0"),
    (header(version=2), "version 2"),
    (header(version=255), "version 255"),
    (header(n=0), f"bad move count 0 (allowed 1..{MAX_MOVES})"),
    (header(n=MAX_MOVES + 1), f"bad move count {MAX_MOVES + 1}"),
    (header(n=2**32 - 1), f"bad move count {2**32 - 1}"),
    (b"GET / HTTP/1.1\r\n", "bad frame header"),
    (bytes(12), "bad frame header"),
    (b"\xff" * 12, "bad frame header"),
])
def test_bad_frames_are_protocol_violations(frame, message):
    decoder = RequestDecoder()
    decoder.feed(frame)
    with pytest.raises(ProtocolViolation, match=message.replace("(", r"\(").replace(")", r"\)")):
        decoder.next_request()


def test_a_bad_move_count_is_caught_before_the_moves_arrive():
    """The decoder must not wait for (or buffer) 4 billion moves it was promised."""
    decoder = RequestDecoder()
    decoder.feed(header(n=2**32 - 1))
    with pytest.raises(ProtocolViolation):
        decoder.next_request()


def test_a_bad_frame_after_a_good_one():
    good = encode_request(Op.MOVE, 1, [Move(1, 2, 0, 1)])
    decoder = RequestDecoder()
    decoder.feed(good + header(version=9))
    assert decoder.next_request() == Request(Op.MOVE, 1, (Move(1, 2, 0, 1),))
    with pytest.raises(ProtocolViolation):
        decoder.next_request()


def test_a_partial_header_is_not_judged_yet():
    decoder = RequestDecoder()
    decoder.feed(b"\x00" * (REQUEST_HEADER.size - 1))
    assert decoder.next_request() is None


@pytest.mark.parametrize("op", [0, 3, 99, 255])
def test_unknown_op_passes_through_for_the_adapter_to_reject(op):
    frame = encode_request(op, 9, [Move(1, 2, 0, 1)])
    assert decode_all(frame) == [Request(op, 9, (Move(1, 2, 0, 1),))]


@given(garbage=st.binary(min_size=0, max_size=300))
def test_garbage_never_escapes_as_anything_but_a_violation(garbage):
    decoder = RequestDecoder()
    decoder.feed(garbage)
    try:
        while decoder.next_request() is not None:
            pass
    except ProtocolViolation:
        pass


# -- replies ------------------------------------------------------------------------------

U64S = st.integers(0, U64)
RESULTS = st.builds(Result, I64, I64, U64S, U64S, U64S, U64S, U64S)


@given(op=OPS, request_id=U32, status=st.integers(-(2**31), 2**31 - 1),
       results=st.lists(RESULTS, max_size=8))
def test_reply_round_trip(op, request_id, status, results):
    frame = encode_reply(op, request_id, status, results)
    assert decode_reply_header(frame[:REPLY_HEADER.size]) == (op, request_id, status,
                                                              len(results))
    assert decode_results(frame[REPLY_HEADER.size:], len(results)) == tuple(results)


@given(results=st.lists(RESULTS, min_size=1, max_size=4))
def test_results_decode_in_place_past_the_header(results):
    """The driver decodes results where they lie in the reply (no copy of the tail); one
    result takes a one-call path, more go through a view: both agree with the sliced form."""
    frame = encode_reply(Op.MOVE, 1, Status.OK, results)
    assert (decode_results(frame, len(results), REPLY_HEADER.size)
            == decode_results(frame[REPLY_HEADER.size:], len(results)) == tuple(results))


def test_reply_clamps_negative_echoes_into_u64():
    frame = encode_reply(Op.MOVE, 1, Status.OK, [Result(Status.BAD_COUNT, -5, -1, 0, 0, -5, 0)])
    (result,) = decode_results(frame[REPLY_HEADER.size:], 1)
    assert result == Result(Status.BAD_COUNT, -5, U64, 0, 0, 2**64 - 5, 0)


def test_reply_op_is_masked_to_a_byte():
    frame = encode_reply(0x1FF, 1, Status.OK, [])
    assert decode_reply_header(frame)[0] == 0xFF


def test_malformed_reply_has_no_results():
    frame = malformed_reply(3, 42)
    assert len(frame) == REPLY_HEADER.size
    assert decode_reply_header(frame) == (3, 42, Status.MALFORMED, 0)


@pytest.mark.parametrize("frame", [
    REPLY_HEADER.pack(0, VERSION, 1, 1, 0, 0),
    REPLY_HEADER.pack(MAGIC, VERSION + 1, 1, 1, 0, 0),
    REPLY_HEADER.pack(MAGIC, VERSION, 1, 1, 0, MAX_MOVES + 1),
])
def test_bad_reply_headers_are_violations(frame):
    with pytest.raises(ProtocolViolation, match="bad reply header"):
        decode_reply_header(frame)
