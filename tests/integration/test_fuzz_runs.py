"""Multiple-write runs against a real adapter process (the checks in fuzz_checks.py): runs at
the very end of the segment, runs of too many packets, and fuzzed runs, honest or with a
lying descriptor."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.errors import Status
from adapter.protocol import Op
from tests.integration.conftest import small_config
from tests.integration.fuzz_checks import frame, parse_replies, raw

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
