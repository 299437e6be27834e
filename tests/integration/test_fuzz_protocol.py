"""Property-based fuzzing of the adapter's wire protocol against a REAL adapter process (what
every example checks is in fuzz_checks.py): fuzzed requests, whole or split anywhere, get
exact answers; broken streams, garbage and floods hurt only the partition that sent them; a
request parked behind a grant keeps its validation errors."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapter.errors import Status
from adapter.protocol import MAGIC, MAX_MOVES, MOVE, REQUEST_HEADER, VERSION, Op
from adapter.ring import max_payload
from tests.integration.conftest import IDS, TIMEOUT, KiB, Lease, Rig
from tests.integration.fuzz_checks import (
    FUZZ,
    SILENCE_S,
    adapter_alive,
    check_results,
    checksums,
    complete_grants,
    drain_and_verify,
    frame,
    memory_unchanged,
    no_lock_taken,
    others_served,
    parse_replies,
    raw,
)

# -- strategies ----------------------------------------------------------------------------------

SIZE = 1024 * KiB
RECEIVE = 256 * KiB
OWN_DATA = SIZE - RECEIVE
LIMIT = max_payload(RECEIVE)
I64_MAX, I64_MIN = 2**63 - 1, -(2**63)
EDGES = [0, 1, -1, I64_MAX, I64_MIN, 2**63, 2**64 - 1, 2**63 + 1, 2**32, 2**32 - 1, 2**31]

odd_ids = st.sampled_from([0, 4, 65535, 65536, 2**16 + 2, 2**32 + 2, 2**32 + 3, -2, *EDGES])
ids = st.one_of(st.sampled_from([2, 3]), st.just(1), odd_ids)  # 1 = the offender's own ID
offsets = st.one_of(st.integers(0, OWN_DATA - 1), st.sampled_from(
    [SIZE - 1, SIZE, SIZE + 1, SIZE - LIMIT, OWN_DATA, -4096, *EDGES]))
counts = st.one_of(st.integers(1, 4096), st.sampled_from(
    [LIMIT, LIMIT + 1, LIMIT - 1, SIZE, SIZE + 1, 2 * KiB, -8, *EDGES]))
valid_moves = st.integers(1, 4096).flatmap(lambda n: st.tuples(
    st.just(1), st.sampled_from([2, 3]), st.integers(0, OWN_DATA - n), st.just(n)))
fuzzy_moves = st.one_of(
    st.tuples(st.just(1), ids, offsets, counts),  # one field or more at an edge
    st.tuples(st.just(1), st.sampled_from([2, 3]), offsets, counts),
    st.tuples(odd_ids, st.sampled_from([2, 3]), st.integers(0, 64), st.integers(1, 64)))
moves_lists = st.lists(st.one_of(valid_moves, fuzzy_moves), min_size=1, max_size=4)
ops = st.sampled_from([Op.MOVE, Op.GRANT, Op.MOVE, Op.GRANT, 0, max(Op) + 1, 255])  # 3 unknown
request_ids = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 2**32 - 1]))


def with_offender(moves, offender: int):
    """Field value 1 stands for 'the offender's own ID' (the offender changes per machine)."""
    return [(offender if m[0] == 1 else m[0], m[1] if m[1] != 1 else offender, m[2], m[3])
            for m in moves]


def serve_one(rig: Rig, lease: Lease, op: int, rid: int, moves, pieces: list[int]) -> None:
    """Send one well-formed request in `pieces` (byte counts), check everything."""
    m, off = lease.machine, lease.offender
    before = checksums(m)
    data = frame(op, rid, moves)
    sent, checked = 0, set()
    for i, n in enumerate(pieces):
        last = i == len(pieces) - 1
        chunk = data[sent:] if last else data[sent:sent + n]
        sent += len(chunk)
        # only the final incomplete piece waits out the silence; the others just look
        wait = TIMEOUT if last else SILENCE_S if i == len(pieces) - 2 else 0.0
        reply = raw(m, off, chunk, replies=1, timeout=wait)
        assert not reply["closed"], "the adapter closed a well-formed stream"
        if not last:
            assert reply["frames"] == 0 and reply["hex"] == "", "answered an incomplete frame"
            if i == 0:
                adapter_alive(rig)
                others_served(rig, lease)  # a half-sent frame blocks nobody else
                checked.add(lease.receiver)
        assert reply["written"] == len(chunk)
    assert reply["frames"] == 1, reply
    ((rop, rrid, status, results),) = parse_replies(bytes.fromhex(reply["hex"]))
    assert (rop, rrid) == (op, rid)
    accepted = []
    if op in (Op.MOVE, Op.GRANT):
        assert status == Status.OK
        accepted = check_results(rig, off, op, moves, results)
        if op == Op.GRANT:
            complete_grants(m, accepted)
    else:
        assert (status, results) == (Status.MALFORMED, ())
    received = drain_and_verify(rig, off, accepted)
    memory_unchanged(m, before, received | checked)
    adapter_alive(rig)
    no_lock_taken(m)
    others_served(rig, lease)


# -- the tests -----------------------------------------------------------------------------------


@settings(FUZZ, max_examples=100)
@given(op=ops, rid=request_ids, moves=moves_lists)
@example(op=Op.MOVE, rid=1, moves=[(1, 2, I64_MAX, I64_MAX)])  # offset + count overflows int64
@example(op=Op.MOVE, rid=1, moves=[(1, 2, 2**64 - 1, 2)])  # offset -1 after the wrap
@example(op=Op.MOVE, rid=1, moves=[(1, 2, 0, 2**63)])  # count = min int64
@example(op=Op.GRANT, rid=1, moves=[(1, 2**32 + 2, 0, 10)])  # must not truncate to ID 2
@example(op=Op.MOVE, rid=1, moves=[(1, 2, 0, LIMIT), (1, 2, 0, LIMIT), (1, 2, 0, LIMIT)])
@example(op=Op.GRANT, rid=2**32 - 1, moves=[(1, 3, 0, 64), (1, 2, 64, 64), (1, 3, 128, 64)])
@example(op=0, rid=5, moves=[(1, 2, 0, 10)])
def test_fuzzed_requests_get_exact_answers(rig, op, rid, moves):
    lease = rig.lease()
    serve_one(rig, lease, op, rid, with_offender(moves, lease.offender), [len(frame(op, 0,
                                                                                  moves))])
    rig.done()


@settings(FUZZ, max_examples=20)
@given(op=st.sampled_from([Op.MOVE, Op.GRANT, 7]),
       moves=st.lists(st.one_of(valid_moves, fuzzy_moves), min_size=1, max_size=2),
       data=st.data())
def test_split_frames_are_reassembled(rig, op, moves, data):
    """A frame split anywhere (down to single bytes) is answered once, when complete."""
    lease = rig.lease()
    moves = with_offender(moves, lease.offender)
    total = len(frame(op, 0, moves))
    cuts = data.draw(st.one_of(
        st.just(list(range(1, total))),  # a byte at a time
        st.lists(st.integers(1, total - 1), min_size=1, max_size=4, unique=True).map(sorted)))
    pieces = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    serve_one(rig, lease, op, 77, moves, pieces)
    rig.done()


def test_vector_of_max_moves(rig):
    """MAX_MOVES moves in one frame, each either good or bad, each answered in order."""
    lease = rig.lease()
    off = lease.offender
    others = [n for n in IDS if n != off]
    moves = [(off, others[i % 2], 64 * i, 16) if i % 3 else (off, 99, 0, 16)
             for i in range(MAX_MOVES)]
    serve_one(rig, lease, Op.MOVE, 9, moves, [len(frame(Op.MOVE, 9, moves))])
    rig.done()


POISON = {
    # framing errors: MALFORMED reply, then the adapter closes the offender's pipes
    "bad magic": lambda src, dst: frame(Op.MOVE, 1, [(src, dst, 0, 8)], magic=0x584D),
    "zero header": lambda src, dst: bytes(REQUEST_HEADER.size + MOVE.size),
    "bad version": lambda src, dst: frame(Op.MOVE, 1, [(src, dst, 0, 8)], version=VERSION + 1),
    "zero moves": lambda src, dst: frame(Op.MOVE, 1, [], n=0),
    "too many moves": lambda src, dst: frame(Op.MOVE, 1, [(src, dst, 0, 8)], n=MAX_MOVES + 1),
    "4G moves": lambda src, dst: frame(Op.GRANT, 1, [], n=2**32 - 1),
    "http": lambda src, dst: b"GET / HTTP/1.1\r\nHost: adapter\r\n\r\n",
    "good then bad": lambda src, dst: frame(Op.MOVE, 1, [(src, dst, 0, 8)]) + b"\xff" * 40,
}
TRUNCATED = {  # never completed: the offender is left mid-frame, silence is the right answer
    "1 byte": 1, "partial header": REQUEST_HEADER.size - 1, "header only": REQUEST_HEADER.size,
    "one byte short": REQUEST_HEADER.size + MOVE.size - 1,
}


@pytest.mark.parametrize("case", list(POISON) + list(TRUNCATED))
def test_broken_streams_hurt_only_the_sender(rig, case):
    lease = rig.lease()
    m, off = lease.machine, lease.offender
    before = checksums(m)
    if case in POISON:
        data = POISON[case](off, lease.receiver)
        reply = raw(m, off, data, replies=-1)  # read until the adapter closes the pipe
        assert reply["closed"], reply
        frames = parse_replies(bytes.fromhex(reply["hex"]))
        *good, last = frames
        assert last[2] == Status.MALFORMED and last[3] == ()
        assert [f[2] for f in good] == [Status.OK] * len(good)  # "good then bad": 1 answered
        rig.state[off] = "closed"
        received = drain_and_verify(rig, off, [(lease.receiver, 0, r)
                                               for *_, results in good for r in results])
    else:
        data = frame(Op.MOVE, 1, [(off, lease.receiver, 0, 8)])[:TRUNCATED[case]]
        reply = raw(m, off, data, replies=1, timeout=SILENCE_S)
        assert (reply["frames"], reply["closed"]) == (0, False), reply
        rig.state[off] = "silent"
        received = set()
    adapter_alive(rig)
    memory_unchanged(m, before, received)
    no_lock_taken(m)
    others_served(rig, lease)
    if case in POISON:  # the adapter knows the closed partition is gone: it refuses to deliver
        reply = m.call(lease.sender, {"cmd": "send", "dst": off, "offset": 0, "count": 8})
        assert (reply["ok"], reply["error"], reply["retryable"]) == (
            False, "DestinationDown", True), reply
    rig.done()


@settings(FUZZ, max_examples=4)
@given(garbage=st.binary(min_size=REQUEST_HEADER.size, max_size=200).filter(
    lambda b: struct.unpack_from("<H", b)[0] != MAGIC))
def test_garbage_closes_the_pipe_and_nothing_else(rig, garbage):
    lease = rig.lease()
    m, off = lease.machine, lease.offender
    before = checksums(m)
    reply = raw(m, off, garbage, replies=-1)
    assert reply["closed"]
    assert [f[2] for f in parse_replies(bytes.fromhex(reply["hex"]))] == [Status.MALFORMED]
    rig.state[off] = "closed"
    adapter_alive(rig)
    memory_unchanged(m, before, set())
    others_served(rig, lease)
    rig.done()


def test_flood_without_reading_replies_blocks_only_the_flooder(rig):
    """The adapter reads one request at a time per partition and stops reading while a reply
    is unsent: a flooder fills its own pipes and stalls itself, never the adapter."""
    lease = rig.lease()
    m, off = lease.machine, lease.offender
    before = checksums(m)
    n = 6000  # 264 KB of requests, 456 KB of replies: far more than both pipes hold
    dst = lease.receiver
    moves = [[(off, dst, (i * 8) % 4096, 8)] if i % 4 == 0 else [(off, 99, 0, 8)]
             for i in range(n)]
    flood = b"".join(frame(Op.MOVE, i, mv) for i, mv in enumerate(moves))
    first = raw(m, off, flood, replies=0, timeout=0.5)
    assert first["written"] < len(flood), "back-pressure never reached the flooder"
    adapter_alive(rig)
    # the adapter keeps serving everyone else while the flooder's replies pile up
    for _ in range(3):
        others_served(rig, Lease(m, off, lease.sender, off))
    rest = raw(m, off, flood[first["written"]:], replies=n, timeout=4 * TIMEOUT)
    assert rest["frames"] == n and not rest["closed"], {k: rest[k] for k in ("frames", "closed")}
    replies = parse_replies(bytes.fromhex(rest["hex"]))
    assert [r[1] for r in replies] == list(range(n)), "replies out of order or lost"
    accepted = []
    for (_, _, status, results), mv in zip(replies, moves, strict=True):
        assert status == Status.OK
        accepted += check_results(rig, off, Op.MOVE, mv, results)
    assert len(accepted) == n // 4, "a good move of the flood was refused"
    # the offender's checks above received at `off` itself; drain the flood at `dst`
    received = drain_and_verify(rig, off, accepted)
    memory_unchanged(m, before, received | {off})
    no_lock_taken(m)
    others_served(rig, lease)
    rig.done()


def test_too_large_message_names_the_real_limit(rig):
    lease = rig.lease()
    m = lease.machine
    reply = m.call(lease.sender, {"cmd": "send", "dst": lease.receiver, "offset": 0,
                                  "count": LIMIT + 1})
    rig.done()
    assert reply["error"] == "TooLarge"
    assert f"({LIMIT} bytes)" in reply["message"], reply["message"]


def park_behind_a_grant(rig: Rig) -> tuple[list[dict], int]:
    """The offender holds a Fig 12 grant on the receiver while another partition sends it a
    request with one good and one invalid move; the request parks until the lock timeout.
    Returns that request's outcomes and how much the adapter's unknown_id counter grew."""
    lease = rig.lease()
    m, off, dst = lease.machine, lease.offender, lease.receiver
    reply = raw(m, off, frame(Op.GRANT, 1, [(off, dst, 0, 64)]), replies=1)
    ((_, _, status, results),) = parse_replies(bytes.fromhex(reply["hex"]))
    accepted = check_results(rig, off, Op.GRANT, [(off, dst, 0, 64)], results)
    assert status == Status.OK and len(accepted) == 1
    unknown_before = m.adapter_stats()["errors"].get("unknown_id", 0)
    try:
        outcomes = m.call(lease.sender, {"cmd": "send_many",
                                         "moves": [[dst, 0, 8], [99, 0, 8]]})["outcomes"]
    finally:
        complete_grants(m, accepted)  # the holder frees the lock: everything comes back
    drain_and_verify(rig, off, accepted)
    no_lock_taken(m)
    others_served(rig, lease)
    counted = m.adapter_stats()["errors"].get("unknown_id", 0) - unknown_before
    rig.done()
    assert (outcomes[0]["error"], outcomes[0]["retryable"]) == ("LockTimeout", True)
    return outcomes, counted


def test_a_parked_request_keeps_its_validation_errors(rig):
    outcomes, _ = park_behind_a_grant(rig)
    assert outcomes[1]["error"] == "UnknownNetworkId", outcomes


def test_a_parked_request_counts_its_errors_once(rig):
    _, counted = park_behind_a_grant(rig)
    assert counted == 1, f"one invalid move counted {counted} times"
