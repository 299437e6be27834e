"""Fuzzing the adapter's wire protocol against a REAL adapter process: the raw frames the
offender writes, and what every example of the test_fuzz_*.py files checks.

One partition (the offender) writes raw bytes on its request pipe through the `raw` test hook
of tests/integration/probe.py; the others use the ordinary driver. After every example:

* the adapter is the same live process (no crash, no restart);
* the offender got the reply the protocol promises (per-move statuses that match a model of
  the translate-and-check rules, MALFORMED for an unknown op), or MALFORMED and a closed pipe
  for a framing error, or silence for a frame that is still incomplete;
* every move the adapter accepted arrived intact, once, in order; nothing else arrived;
* every partition's memory is unchanged except the receive areas that legitimately received;
* no lock is left taken, and another partition can still send and receive normally.

The machines come from the `rig` fixture (tests/integration/conftest.py).
"""

from __future__ import annotations

import struct
import zlib

import posix_ipc
from hypothesis import HealthCheck, event, settings
from hypothesis.errors import InvalidArgument

from adapter import receive_area
from adapter.errors import Status
from adapter.moves import mvxl
from adapter.protocol import (
    MAGIC,
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
from tests.integration.conftest import IDS, TIMEOUT, KiB, Lease, Rig, pattern

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
