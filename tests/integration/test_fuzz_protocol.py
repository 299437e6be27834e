"""Property-based fuzzing of the adapter's wire protocol against a REAL adapter process.

One partition (the offender) writes raw bytes on its request pipe through the `raw` test hook
of partitions/main.py; the others use the ordinary driver. After every example:

* the adapter is the same live process (no crash, no restart);
* the offender got the reply the protocol promises (per-move statuses that match a model of
  the translate-and-check rules, MALFORMED for an unknown op), or MALFORMED and a closed pipe
  for a framing error, or silence for a frame that is still incomplete;
* every move the adapter accepted arrived intact, once, in order; nothing else arrived;
* every partition's memory is unchanged except the receive areas that legitimately received;
* no lock is left taken, and another partition can still send and receive normally.

Machines are shared across examples (starting one costs ~1.5 s); a partition whose pipe the
adapter closed (or whose request stream was left mid-frame) is not used as the offender again,
and a new machine is started when too few healthy partitions remain.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import posix_ipc
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from adapter import receive_area
from adapter.errors import Status
from adapter.moves import mvxl
from adapter.protocol import (
    MAGIC,
    MAX_MOVES,
    MOVE,
    REPLY_HEADER,
    REQUEST_HEADER,
    VERSION,
    Op,
    Result,
    decode_reply_header,
    decode_results,
)
from adapter.ring import max_payload
from hypervisor.machine import Machine
from hypervisor.names import RunRegistry
from tests.integration.conftest import TIMEOUT, KiB, names_exist, small_config

IDS = (1, 2, 3)
U64_MOVE = struct.Struct("<QQQQ")  # the MOVE layout with every field as raw 64 bits
assert U64_MOVE.size == MOVE.size
SILENCE_S = 0.15  # how long an incomplete frame must stay unanswered (bounded wait, not a sync)
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                print_blob=True)


def signed(v: int) -> int:
    """What the adapter sees when 64 raw bits arrive in a signed MOVE field."""
    return v - (1 << 64) if v >= 1 << 63 else v


def frame(op: int, request_id: int, moves: list[tuple[int, int, int, int]],
          n: int | None = None, magic: int = MAGIC, version: int = VERSION) -> bytes:
    head = REQUEST_HEADER.pack(magic, version, op, request_id, len(moves) if n is None else n)
    return head + b"".join(U64_MOVE.pack(*(v & ((1 << 64) - 1) for v in m)) for m in moves)


def parse_replies(data: bytes) -> list[tuple[int, int, int, tuple[Result, ...]]]:
    out, pos = [], 0
    while pos < len(data):
        op, rid, status, n = decode_reply_header(data[pos:pos + REPLY_HEADER.size])
        pos += REPLY_HEADER.size
        results = decode_results(data[pos:], n)
        pos += n * 56
        out.append((op, rid, status, results))
    assert pos == len(data)
    return out


# -- the machine(s) under test -------------------------------------------------------------------


@dataclass
class Lease:
    machine: Machine
    offender: int
    sender: int  # a healthy partition that checks the adapter still serves others
    receiver: int


@dataclass
class Rig:
    """Hands out (machine, offender, sender, receiver); restarts when it must."""

    registry: RunRegistry
    machine: Machine | None = None
    adapter_pid: int = 0
    state: dict[int, str] = field(default_factory=dict)  # ok | silent (mid-frame) | closed
    last_seq: dict[tuple[int, int], int] = field(default_factory=dict)
    dirty: bool = False  # an example did not finish: its machine's state is unknown
    machines: list[Machine] = field(default_factory=list)
    checks: int = 0

    def lease(self) -> Lease:
        if self.dirty:
            self.retire()
        self.dirty = True
        for _ in range(2):
            if self.machine is not None:
                for off in IDS:
                    if self.state[off] != "ok":
                        continue
                    for snd in IDS:
                        if snd == off or self.state[snd] != "ok":
                            continue
                        for rcv in IDS:
                            if rcv not in (off, snd) and self.state[rcv] != "closed":
                                return Lease(self.machine, off, snd, rcv)
            self.retire()
            self.start()
        raise AssertionError("no usable partitions on a fresh machine")

    def start(self) -> None:
        m = Machine(small_config(3), registry=self.registry)
        self.machines.append(m)
        m.start()
        self.machine = m
        self.adapter_pid = m.pid()
        self.state = {nid: "ok" for nid in IDS}
        self.last_seq = {}
        for nid in IDS:  # every region's own data gets a pattern, so moves carry real bytes
            p = m.layout.by_id()[nid]
            m.memory.view[p.base:p.receive_base] = pattern(nid, p.receive_base - p.base)

    def retire(self) -> None:
        if self.machine is not None:
            self.machine.stop()
            assert not names_exist(self.machine)
        self.machine = None
        self.dirty = False

    def done(self) -> None:
        self.dirty = False

    def close(self) -> None:
        for m in self.machines:
            m.stop()
        leaked = [n for m in self.machines for n in names_exist(m)]
        assert not leaked, f"names left behind: {leaked}"


def pattern(nid: int, n: int) -> bytes:
    unit = bytes((nid * 37 + i * 11) & 0xFF for i in range(251))  # prime period: no alignment
    return (unit * (n // len(unit) + 1))[:n]


@pytest.fixture(scope="module")
def rig_module(tmp_path_factory) -> Iterator[Rig]:
    rig = Rig(RunRegistry(str(tmp_path_factory.mktemp("fuzz") / "runs")))
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def rig(rig_module) -> Iterator[Rig]:
    yield rig_module
    if rig_module.dirty:  # the test failed mid-example: do not hand that machine on
        rig_module.retire()


# -- what every example checks -------------------------------------------------------------------


def raw(m: Machine, nid: int, data: bytes = b"", replies: int = 0,
        timeout: float = TIMEOUT) -> dict:
    reply = m.call(nid, {"cmd": "raw", "hex": data.hex(), "replies": replies,
                         "timeout": timeout})
    assert reply["ok"], reply
    return reply


def checksums(m: Machine) -> dict[int, int]:
    return {nid: m.call(nid, {"cmd": "checksum"})["crc32"] for nid in IDS}


def own_data_crc(m: Machine, nid: int) -> int:
    p = m.layout.by_id()[nid]
    return zlib.crc32(m.memory.view[p.base:p.receive_base])


def memory_unchanged(m: Machine, before: dict[int, int], received: set[int]) -> None:
    """Regions identical, except the receive areas of partitions that legitimately received."""
    after = checksums(m)
    for nid in IDS:
        if nid in received:
            p = m.layout.by_id()[nid]
            assert own_data_crc(m, nid) == zlib.crc32(pattern(nid, p.receive_base - p.base)), nid
        else:
            assert after[nid] == before[nid], f"region of {nid} changed"


def adapter_alive(rig: Rig) -> None:
    m = rig.machine
    assert m.adapter.proc.poll() is None, "the adapter died"
    assert m.pid() == rig.adapter_pid, "the adapter was restarted"


def no_lock_taken(m: Machine) -> None:
    locks = m.adapter_stats()["locks"]
    assert set(locks.values()) <= {"free"}, locks


def others_served(rig: Rig, lease: Lease) -> None:
    """A normal send from another partition still works, byte for byte, in both flows."""
    m = lease.machine
    rig.checks += 1
    data = bytes((rig.checks * 7 + i) & 0xFF for i in range(100 + rig.checks % 300))
    flow = ("fig11", "fig12")[rig.checks % 2]
    offset = 8 * KiB  # past the pattern's first page; restored below
    saved = m.call(lease.sender, {"cmd": "read", "offset": offset, "count": len(data)})["hex"]
    assert m.call(lease.sender, {"cmd": "write", "offset": offset, "hex": data.hex()})["ok"]
    reply = m.call(lease.sender, {"cmd": "send", "dst": lease.receiver, "offset": offset,
                                  "count": len(data), "flow": flow})
    assert reply["ok"], reply
    packet = m.call(lease.receiver, {"cmd": "receive", "timeout": TIMEOUT})["packet"]
    assert packet is not None and packet["source_id"] == lease.sender
    assert bytes.fromhex(packet["hex"]) == data
    assert m.call(lease.sender, {"cmd": "write", "offset": offset, "hex": saved})["ok"]


def expected_status(m: Machine, offender: int, move: tuple[int, int, int, int],
                    dead: set[int]) -> Status:
    """The translate-and-check rules, in the adapter's order, on the values it decodes."""
    src, dst, offset, count = (signed(v & ((1 << 64) - 1)) for v in move)
    by_id = m.layout.by_id()
    if src != offender:
        return Status.SOURCE_MISMATCH
    if dst not in by_id:
        return Status.UNKNOWN_ID
    if dst == src:
        return Status.OWN_ID
    if count <= 0:
        return Status.BAD_COUNT
    if offset < 0:
        return Status.BAD_OFFSET
    if offset + count > by_id[src].size:
        return Status.OUT_OF_BOUNDS
    if count > max_payload(by_id[dst].receive_size):
        return Status.TOO_LARGE
    if dst in dead:
        return Status.DESTINATION_DOWN
    return Status.OK


def tally(what: str) -> None:
    """Count outcomes for --hypothesis-show-statistics (only inside a hypothesis test)."""
    try:
        event(what)
    except InvalidArgument:
        pass


def check_results(rig: Rig, offender: int, op: int, moves, results) -> list[tuple[int, int,
                                                                                  Result]]:
    """Each result against the model; returns the accepted moves as (dst, offset, result)."""
    m = rig.machine
    dead = {nid for nid, state in rig.state.items() if state == "closed"}
    by_id = m.layout.by_id()
    src = by_id[offender]
    assert len(results) == len(moves)
    accepted = []
    for move, r in zip(moves, results, strict=True):
        want = expected_status(m, offender, move, dead)
        tally(f"op {op} status {Status(r.status).name}")
        dst, offset, count = signed(move[1]), signed(move[2]), signed(move[3])
        if want is Status.OK:
            assert r.status in (Status.OK, Status.DESTINATION_FULL), (move, r)
        else:
            assert r.status == want, (move, r, want)
        if r.status == Status.SOURCE_MISMATCH:
            assert r.detail == offender
        if r.status == Status.OUT_OF_BOUNDS:
            assert r.detail == src.size
        if r.status == Status.DESTINATION_FULL:
            assert 0 <= r.detail < by_id[dst].receive_size
        if r.status != Status.OK:
            assert (r.seq, r.src_address, r.dst_address, r.count) == (0, 0, 0, 0)
            continue
        # Invariant 1: the addresses are the source range and a slot in the receive area
        d = by_id[dst]
        assert r.count == count and r.src_address == src.base + offset
        assert d.receive_base <= r.dst_address and r.dst_address + count <= \
            d.receive_base + d.receive_size
        if op == Op.GRANT:
            assert r.commit_value > 0
        accepted.append((dst, offset, r))
    return accepted


def complete_grants(m: Machine, accepted) -> None:
    """Play the Fig 12 driver: MVXL each granted move, publish the commit, prove the
    release (the grant's token as `released`), free, ring."""
    commits: dict[int, int] = {}
    for dst, _, r in accepted:
        mvxl(m.memory.view, r.dst_address, r.src_address, r.count)
        commits[dst] = max(commits.get(dst, 0), r.commit_value)
    for dst, head in commits.items():
        words = receive_area.words(m.memory.view)
        receive_area.publish_head(words, m.layout.by_id()[dst].control, head)
        receive_area.prove_release(words, receive_area.RingWords.of(m.layout.by_id()[dst]))
        for names in (m.names.locks, m.names.bells):
            sem = posix_ipc.Semaphore(names[dst])
            try:
                sem.release()
            finally:
                sem.close()


def drain_and_verify(rig: Rig, offender: int, accepted) -> set[int]:
    """Every accepted move arrives once, in order, with the source's bytes; nothing else."""
    m = rig.machine
    src = m.layout.by_id()[offender]
    source = pattern(offender, src.receive_base - src.base)
    for dst, offset, r in accepted:
        packet = m.call(dst, {"cmd": "receive", "timeout": TIMEOUT})["packet"]
        assert packet is not None, f"accepted move to {dst} never arrived"
        assert (packet["source_id"], packet["seq"]) == (offender, r.seq)
        data = bytes.fromhex(packet["hex"])
        end = offset + r.count
        expected = source[offset:end] if end <= len(source) else bytes(
            m.memory.view[src.base + offset:src.base + end])  # a range in its own receive area
        assert data == expected, f"payload of seq {r.seq} to {dst} differs"
        key = (offender, dst)
        assert r.seq > rig.last_seq.get(key, 0), "sequence numbers went backwards"
        rig.last_seq[key] = r.seq
    for nid in IDS:
        if rig.state[nid] != "closed":
            leftover = m.call(nid, {"cmd": "receive", "timeout": 0})["packet"]
            assert leftover is None, f"unexpected packet at {nid}: {leftover}"
    return {dst for dst, _, _ in accepted}


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


RUN_EDGES = [(8, 8), (16, 16), (40, 40), (41, 40), (24, 24), (48, 40)]


@pytest.mark.parametrize("back, count", RUN_EDGES)
def test_a_run_at_the_end_of_the_segment_is_refused_not_crashing(make_machine, back, count):
    """Multiple-write runs too small to hold a record, at the very end of the last region:
    refused by name before any read, and the adapter keeps serving."""
    m = make_machine(small_config(n=3))
    last = m.layout.partitions[-1]
    pid = m.pid()
    reply = raw(m, last.network_id,
                frame(Op.MOVE_RUN, 7, [(last.network_id, 1, last.size - back, count)]), replies=1)
    [(op, rid, status, results)] = parse_replies(bytes.fromhex(reply["hex"]))
    assert (op, rid, status) == (Op.MOVE_RUN, 7, Status.OK)
    assert results[0].status == Status.BAD_COUNT, results
    assert m.adapter.proc.poll() is None and m.pid() == pid
    assert m.call(1, {"cmd": "write", "offset": 0, "hex": "ab" * 8})["ok"]
    assert m.call(1, {"cmd": "send", "dst": 2, "offset": 0, "count": 8})["ok"]


def test_a_run_of_too_many_packets_is_refused(make_machine):
    """The work a run hands a receiver is bounded: a run may not hold more than
    MAX_RUN_RECORDS packets (here: MAX_RUN_RECORDS + 1 packets of one byte, honestly laid out)."""
    from adapter.ring import MAX_RUN_RECORDS, RUN_DESCRIPTOR

    m = make_machine(small_config(n=3, memory=2 * 1024 * 1024, receive=1024 * 1024))
    n = MAX_RUN_RECORDS + 1
    blob = RUN_DESCRIPTOR.pack(n, 1) + bytes(8 * n)
    for at in range(0, len(blob), 60_000):
        assert m.call(1, {"cmd": "write", "offset": at, "hex": blob[at:at + 60_000].hex()})["ok"]
    reply = raw(m, 1, frame(Op.MOVE_RUN, 1, [(1, 2, 0, len(blob))]), replies=1)
    [(_, _, _, results)] = parse_replies(bytes.fromhex(reply["hex"]))
    assert results[0].status == Status.BAD_COUNT
    assert m.adapter.proc.poll() is None


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(packets=st.integers(1, 40), length=st.integers(1, 300),
       lie=st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
       flow=st.sampled_from(("fig11", "fig12")))
def test_fuzzed_multiple_write_runs(rig, packets, length, lie, flow):
    """Random runs, honest or with a lying descriptor: an honest run arrives packet by packet,
    byte for byte, with consecutive sequence numbers; a lying one is either refused (BadCount)
    or, if the lie still tiles the run, delivered as the packets it describes. Either way the
    adapter lives, no lock stays taken and nothing lands outside the destination's ring."""
    lease = rig.lease()
    m, src, dst = lease.machine, lease.sender, lease.receiver
    payloads = [bytes((i * 7 + j) & 0xFF for j in range(length)) for i in range(packets)]
    others = [n for n in m.partitions if n not in (src, dst)]
    before = {n: m.call(n, {"cmd": "checksum"})["crc32"] for n in others}
    reply = m.call(src, {"cmd": "send_run", "dst": dst, "offset": 0, "descriptor": lie,
                         "flow": flow, "payloads": [p.hex() for p in payloads]})
    got = []
    while (packet := m.call(dst, {"cmd": "receive", "timeout": 0})["packet"]) is not None:
        got.append(packet)
    if lie is None or tuple(lie) == (packets, length):
        assert reply["ok"] and reply["records"] == packets, reply
        assert [bytes.fromhex(p["hex"]) for p in got] == payloads
        assert [p["seq"] for p in got] == list(range(reply["seq"], reply["seq"] + packets))
    elif reply["ok"]:
        assert len(got) == reply["records"] == lie[0]
        assert all(len(bytes.fromhex(p["hex"])) == lie[1] for p in got)
    else:
        assert reply["error"] == "BadCount" and not got, reply
    assert m.adapter.proc.poll() is None and m.pid() == rig.adapter_pid
    after = {n: m.call(n, {"cmd": "checksum"})["crc32"] for n in others}
    assert after == before  # no byte outside the sender's own writes and the destination
    assert set(m.adapter_stats()["locks"].values()) == {"free"}
