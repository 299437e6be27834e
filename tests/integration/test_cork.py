"""Per-packet sends through the cork (partitions/cork.py), with real partitions, adapter, pipes
and memory: each packet arrives exactly once, in order, with consecutive sequence numbers, in far
fewer adapter requests than packets; a queued move that fails surfaces from `flush` naming what
failed; what a program queued is flushed when it returns, and reported when the machine stops
it before it could be."""

from __future__ import annotations

import zlib

import pytest

from tests.integration.conftest import TIMEOUT, KiB, small_config, wait_for
from tests.integration.probe_cork import cork_payload


def requests(machine) -> int:
    return machine.adapter_stats()["counters"].get("requests", 0)


def received(machine, nid: int, count: int, timeout: float = TIMEOUT) -> list:
    return machine.call(nid, {"cmd": "receive_all", "count": count, "timeout": timeout},
                        timeout=timeout + 5)["packets"]


def check_delivered(got: list, sent: list[tuple[int, int, int]]) -> None:
    """`got` (source, seq, length, crc) holds exactly the packets `sent` (src, i, length) in
    order per source, with consecutive sequence numbers from 1."""
    by_source: dict[int, list] = {}
    for source, seq, length, crc in got:
        by_source.setdefault(source, []).append((seq, length, crc))
    want: dict[int, list] = {}
    for src, i, length in sent:
        want.setdefault(src, []).append((length, zlib.crc32(cork_payload(i, length))))
    assert set(by_source) == set(want)
    for src, rows in by_source.items():
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), f"seqs from {src}"
        assert [(r[1], r[2]) for r in rows] == want[src], f"payloads from {src}"


def cork_send(machine, **msg) -> dict:
    """Per-packet sends on partition 1 in the background while the test receives; the sends'
    result once they are all done."""
    machine.call(1, {"cmd": "cork_send", "background": True, **msg})
    state = wait_for(lambda: machine.call(1, {"cmd": "cork_state"})["result"],
                     what="the per-packet sends to end")
    return state


@pytest.mark.parametrize("flow", ["fig11", "fig12"])
def test_per_packet_sends_arrive_once_in_order_in_few_requests(make_machine, flow):
    m = make_machine(small_config(2))
    n, size = 3000, 200
    before = requests(m)
    m.call(1, {"cmd": "cork_send", "dsts": [2], "lengths": [size], "flows": [flow],
               "count": n, "timeout": TIMEOUT, "background": True})
    got = received(m, 2, n)
    result = m.call(1, {"cmd": "cork_state"})["result"]
    assert not result["raised"] and len(result["queued"]) == n
    assert m.call(1, {"cmd": "flush", "timeout": TIMEOUT})["done"]
    check_delivered(got, [(1, i, size) for i in range(n)])
    made = requests(m) - before
    assert made <= n // 5, f"{made} adapter requests for {n} per-packet sends"


def test_mixed_destinations_lengths_and_flows_are_all_delivered(make_machine):
    m = make_machine(small_config(4))
    n, dsts, lengths = 1500, [2, 3, 4, 2, 2], [1, 7, 64, 1000, 3000, 24]
    m.call(1, {"cmd": "cork_send", "dsts": dsts, "lengths": lengths, "background": True,
               "flows": ["fig11", "fig12", "fig11"], "count": n, "timeout": TIMEOUT})
    for dst in (2, 3, 4):
        mine = [(1, i, lengths[i % len(lengths)]) for i in range(n) if dsts[i % len(dsts)] == dst]
        check_delivered(received(m, dst, len(mine)), mine)
    result = m.call(1, {"cmd": "cork_state"})["result"]
    assert not result["raised"] and len(result["queued"]) == n
    assert m.call(1, {"cmd": "flush", "timeout": TIMEOUT})["done"]


def test_packets_to_alternating_destinations_share_requests(make_machine):
    """One packet to each peer in turn: every packet starts a run, and the lone packets to
    different destinations go several to a request (Driver.send_many), in order per pair."""
    m = make_machine(small_config(4))
    n, dsts, size = 1500, [2, 3, 4], 100
    before = requests(m)
    m.call(1, {"cmd": "cork_send", "dsts": dsts, "lengths": [size], "flows": ["fig12"],
               "count": n, "timeout": TIMEOUT, "background": True})
    for dst in dsts:
        mine = [(1, i, size) for i in range(n) if dsts[i % 3] == dst]
        check_delivered(received(m, dst, len(mine)), mine)
    assert m.call(1, {"cmd": "flush", "timeout": TIMEOUT})["done"]
    made = requests(m) - before
    assert made <= n // 2, f"{made} adapter requests for {n} packets to 3 destinations in turn"


def test_a_failed_queued_move_surfaces_from_flush_naming_it(make_machine):
    """The destination never drains: the packets past its ring fail with DestinationFull after
    their timeout. Every queued packet is delivered once or named in a failure, never both."""
    m = make_machine(small_config(2))
    n, size = 600, KiB  # a 256 KiB ring holds about 250 of them
    reply = cork_send(m, dsts=[2], lengths=[size], count=n, timeout=0.5)
    flushed = m.call(1, {"cmd": "flush", "timeout": TIMEOUT})
    reports = [r for r in [*reply["raised"], flushed["failed"]] if r and "failures" in r]
    assert flushed["failed"] is not None or reply["raised"], (reply, flushed)
    failures = [f for r in reports for f in r["failures"]]
    assert failures and all(f["dst"] == 2 and f["flow"] == "fig11"
                            and f["error"] == "DestinationFull" for f in failures)
    assert all("to network ID 2 by fig11" in r["message"] and "DestinationFull" in r["message"]
               for r in reports)
    failed = {k for f in failures for k in range(f["first"], f["last"] + 1)}
    queued = {number: i for i, number in reply["queued"]}
    assert failed <= set(queued)
    moved = [queued[k] for k in sorted(set(queued) - failed)]
    got = received(m, 2, len(moved))
    check_delivered(got, [(1, i, size) for i in moved])
    assert failures[0]["after_seq"] == len([k for k in queued if k < failures[0]["first"]])


def test_a_returning_program_flushes_what_it_queued(make_machine):
    m = make_machine(small_config(2))
    n, size = 2000, 300
    m.call(1, {"cmd": "cork_send", "dsts": [2], "lengths": [size], "count": n,
               "timeout": TIMEOUT, "background": True, "then_return": True})
    got = received(m, 2, n)
    check_delivered(got, [(1, i, size) for i in range(n)])
    wait_for(lambda: m.poll() or m.outcomes()[1].state != "running",
             what="partition 1's program to end")
    assert m.outcomes()[1].state == "returned", m.outcomes()[1]


def test_stopping_with_queued_packets_reports_the_ones_not_moved(make_machine):
    """The destination's ring is full and never drains, so packets stay queued; stopping the
    machine moves none of them twice and names every one it could not move."""
    m = make_machine(small_config(2))
    m.call(1, {"cmd": "cork_send", "dsts": [2], "lengths": [KiB], "count": 2000,
               "timeout": None, "background": True})

    def refusals() -> int:
        return sum(m.adapter_stats()["partitions"]["1"]["errors"].values())

    def full():  # the sender waiting for room
        state = m.call(1, {"cmd": "cork_state"})
        return state if state["waiting"] else None

    def stuck():
        """Full, and a move refused after that with nothing accepted in between: the run in
        flight does not fit the ring, and nothing drains it (every run is the same size)."""
        before, refused = wait_for(full, what="full buffers"), refusals()
        wait_for(lambda: refusals() > refused, what="a refused move")
        after = full()
        return after if after and after["last_seq"] == before["last_seq"] else None

    state = wait_for(stuck, what="a full ring and full buffers")
    accepted = state["last_seq"]["2"]
    outcome = m.stop()[1]
    assert outcome.state == "raised" and outcome.error == "QueuedSendFailed", outcome
    assert outcome.message.startswith(f"{state['submitted'] - accepted} queued packets were "
                                      f"not moved: packets #{accepted + 1}-"), outcome.message
    assert f"after its seq {accepted}: DestinationFull" in outcome.message


@pytest.mark.parametrize("flow", ["fig11", "fig12"])
def test_a_lone_send_from_an_idle_port_is_written_by_the_sending_thread(make_machine, flow):
    """Nothing queued or in flight: the sender's own thread writes the request to the adapter
    (no hand-off to the flusher thread on the packet's way); the flusher only reads the reply.
    Each packet still arrives once, in order, one request each."""
    m = make_machine(small_config(2))
    n, size = 20, 64
    before = requests(m)
    reply = m.call(1, {"cmd": "lone_sends", "dst": 2, "length": size, "flow": flow,
                       "count": n})
    assert reply["ok"], reply
    assert reply["writers"] == [reply["me"]] * n, reply
    check_delivered(received(m, 2, n), [(1, i, size) for i in range(n)])
    assert requests(m) - before == n


def test_a_lone_send_while_another_thread_holds_a_loan_waits_for_it(make_machine):
    """The driver is busy (another thread of the partition holds a loan): the lone packet is
    queued instead (the flusher sends it once the loan ends), after the loan's record."""
    m = make_machine(small_config(2))
    held = m.call(1, {"cmd": "loan", "dst": 2, "count": 100, "hex": "ab" * 100,
                      "end": "hold", "timeout": TIMEOUT})
    assert held["ok"] and held["seq"] == 1, held
    m.call(1, {"cmd": "cork_send", "dsts": [2], "lengths": [64], "count": 1,
               "timeout": TIMEOUT, "background": True})
    wait_for(lambda: m.call(1, {"cmd": "cork_state"})["result"], what="the queued send")
    assert m.call(1, {"cmd": "cork_state"})["queued"] == 1  # waiting for the driver
    assert m.call(1, {"cmd": "loan_end"})["seq"] == 1
    assert m.call(1, {"cmd": "flush", "timeout": TIMEOUT})["done"]
    got = received(m, 2, 2)
    assert [(source, seq, length) for source, seq, length, _ in got] == [(1, 1, 100),
                                                                           (1, 2, 64)]
    assert got[1][3] == zlib.crc32(cork_payload(0, 64))
