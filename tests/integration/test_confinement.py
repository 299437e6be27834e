"""A partition process maps and opens no more than its role needs (issue 12, the threat model;
partitions/mapping.py): another partition's private memory is not readable through its
driver's mapping, while its own memory, the peers' receive areas and both flows still work."""

from __future__ import annotations

import os
import signal

import pytest

from hypervisor.machine import MachineError
from tests.integration.conftest import small_config, wait_for
from tests.integration.test_machine import receive, send

MARKER = b"private to p2"


def peek(m, nid: int, address: int, count: int = len(MARKER)) -> dict:
    return m.call(nid, {"cmd": "peek", "address": address, "count": count})


def test_a_peers_private_memory_is_not_mapped(make_machine):
    """p1 reads p2's receive area and its own memory through its driver's mapping, moves to p2
    in both flows; reading p2's send space kills p1 with SIGSEGV, and p2 is untouched."""
    m = make_machine(small_config(n=3))
    me, peer = m.layout.by_id()[1], m.layout.by_id()[2]
    assert m.call(2, {"cmd": "write", "offset": 0, "hex": MARKER.hex()})["ok"]
    assert m.call(1, {"cmd": "write", "offset": 0, "hex": b"mine".hex()})["ok"]
    assert bytes.fromhex(peek(m, 1, me.base, 4)["hex"]) == b"mine"
    assert peek(m, 1, peer.receive_base)["ok"]  # Fig 12 moves land here
    for flow in ("fig11", "fig12"):
        reply = send(m, 1, 2, f"via {flow}".encode(), flow, offset=64)
        assert reply["ok"], reply
        assert bytes.fromhex(receive(m, 2)["hex"]) == f"via {flow}".encode()
    with pytest.raises(MachineError):
        peek(m, 1, peer.base)

    def dead():
        m.poll()
        outcome = m.outcomes()[1]
        return outcome if outcome.state == "killed" else None

    outcome = wait_for(dead, what="p1 to be reported dead")
    assert outcome.exit_code == -signal.SIGSEGV, outcome.describe()
    assert outcome.describe() == "killed (signal 11)"
    assert bytes.fromhex(m.call(2, {"cmd": "read", "offset": 0, "count": len(MARKER)})["hex"]
                         ) == MARKER
    assert send(m, 3, 2, b"still moving", "fig12")["ok"]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_what_a_partition_process_maps_and_opens(make_machine):
    """/proc/PID/maps of partition 1: the peers' private ranges are mapped without access,
    everything else of the segment read-write; the semaphores mapped are the peers' locks,
    every doorbell, its own recall semaphore (its leases) and every room semaphore, not its own
    lock nor another partition's recall semaphore."""
    m = make_machine(small_config(n=3))
    with open(f"/proc/{m.pid(1)}/maps") as f:
        lines = [line.split() for line in f]
    segment = m.names.segment.lstrip("/")
    spans = sorted((int(r.split("-")[0], 16), int(r.split("-")[1], 16), perms)
                   for r, perms, *_, path in (x for x in lines if len(x) >= 6)
                   if path.endswith(f"/{segment}"))
    origin = spans[0][0]
    hidden = [(start - origin, end - origin) for start, end, perms in spans if perms == "---s"]
    assert hidden == [(p.base, p.receive_base) for p in m.layout.partitions
                      if p.network_id != 1], spans
    assert {perms for *_, perms in spans} == {"---s", "rw-s"}, spans
    assert spans[-1][1] - origin == m.layout.total_size
    sems = {x[-1].rsplit("/sem.", 1)[1] for x in lines if len(x) >= 6 and "/sem." in x[-1]}
    assert sems == {n.lstrip("/") for nid, n in m.names.locks.items() if nid != 1} | {
        n.lstrip("/") for n in m.names.bells.values()} | {m.names.recalls[1].lstrip("/")} | {
        n.lstrip("/") for n in m.names.rooms.values()}
