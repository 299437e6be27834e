"""Failures: a partition or the adapter killed with SIGKILL, the launcher killed (issue 4)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import posix_ipc
import psutil
import pytest

from hypervisor.names import RunRegistry
from tests.integration.cluster_jobs import read_until
from tests.integration.conftest import TIMEOUT, booted_partition, small_config, wait_for
from tests.integration.test_machine import _processes_of_run, receive, send
from tests.integration.xpmove_command import reap_group, shm_names, tiny_config, xpmove


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def restarted(machine, name_or_id) -> bool:
    machine.poll()
    return machine.restarts.get(name_or_id, 0) > 0


@pytest.mark.parametrize("packets", [None, 40])
def test_partition_killed_holding_a_lock(make_machine, packets):
    """kill -9 mid Fig 12 move (one packet, or a multiple-write run of 40): lock comes back,
    torn record invisible, sequence intact (a run's 40 sequence numbers are given back)."""
    m = make_machine(small_config(restart="always"))
    assert send(m, 1, 2, b"first", "fig12")["seq"] == 1
    assert receive(m, 2)["seq"] == 1
    hold = {"cmd": "hold_grant", "dst": 2, "count": 100 if packets else 5000, "packets": packets}
    reply = m.call(1, hold)
    assert reply["ok"], reply
    assert m.adapter_stats()["locks"]["2"] == "granted"
    killed_at = time.monotonic()
    kill(m.pid(1))
    # another partition's move to the same destination goes through: the lock came back
    assert send(m, 3, 2, b"from three", "fig11", timeout=TIMEOUT)["ok"]
    assert time.monotonic() - killed_at < 1.5
    packet = receive(m, 2)
    assert (packet["source_id"], bytes.fromhex(packet["hex"])) == (3, b"from three")
    assert receive(m, 2, timeout=0) is None  # the torn record never became visible
    stats = m.adapter_stats()
    assert stats["counters"]["locks_reclaimed"] == 1
    assert stats["counters"]["grants_abandoned"] == 1
    # the partition is restarted under the same network ID; its pair's sequence continues
    wait_for(lambda: restarted(m, 1), what="partition 1 to restart")
    assert send(m, 1, 2, b"second", "fig12")["seq"] == 2
    packet = receive(m, 2)
    assert (packet["seq"], bytes.fromhex(packet["hex"])) == (2, b"second")
    assert set(m.adapter_stats()["locks"].values()) == {"free"}


def test_adapter_restart_idle(make_machine):
    """kill -9 the idle adapter: restarted from the partition table, drivers reconnect."""
    m = make_machine(small_config())
    assert send(m, 1, 2, b"before", "fig11")["seq"] == 1
    old = m.pid()
    killed_at = time.monotonic()
    kill(old)
    wait_for(lambda: restarted(m, "adapter"), what="adapter restart")
    assert time.monotonic() - killed_at < 1.0  # the bound: back within 1 s
    assert m.pid() != old
    for flow in ("fig11", "fig12"):
        assert send(m, 1, 2, flow.encode(), flow, timeout=TIMEOUT)["ok"]
    assert [receive(m, 2)["seq"] for _ in range(3)] == [1, 2, 3]
    assert set(m.adapter_stats()["locks"].values()) == {"free"}


def test_a_share_command_repeated_is_answered_as_the_first(make_machine):
    """launch repeats a share command whose reply it lost (scripts/shares.py names it after
    the process): the workload answers it as the first instead of refusing it, and still
    refuses any other traffic command while it sends."""
    m = make_machine(small_config(2))
    command = {"cmd": "traffic", "peers": [2], "flows": ["fig11"], "size": 512,
               "duration": 30.0, "share": 4242}
    assert m.call(1, command) == {"ok": True}
    assert m.call(1, {**command, "duration": 29.5}) == {"ok": True, "repeated": True}
    for other in ({**command, "share": 4243}, {k: v for k, v in command.items() if k != "share"}):
        reply = m.call(1, other)
        assert reply["ok"] is False and "already sending" in reply["message"], reply


def test_a_share_repeated_after_its_traffic_ended_sends_nothing_again(make_machine):
    """The repeat of a share whose traffic already ended (its reply lost, the traffic short)
    is answered as the first was: the share is not sent twice."""
    m = make_machine(small_config(2))
    command = {"cmd": "traffic", "peers": [2], "flows": ["fig11"], "size": 512, "packets": 20,
               "share": 77}
    assert m.call(1, command) == {"ok": True}

    def stats() -> dict:
        return m.call(1, {"cmd": "stats"})["stats"]

    wait_for(lambda: stats()["sender_done"], what="the share's 20 packets sent")
    assert m.call(1, command) == {"ok": True, "repeated": True}
    assert sum(stats()["sent"].values()) == 20 and stats()["sender_done"]


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("flow", ["fig11", "fig12"])
def test_adapter_killed_under_load(make_machine, flow, batch):
    """kill -9 the adapter during traffic (single moves, or multiple-write runs): restarted,
    drivers reconnect, nothing lost or doubled."""
    m = make_machine(small_config())
    for nid in m.partitions:
        peers = [p for p in m.partitions if p != nid]
        assert m.call(nid, {"cmd": "traffic", "peers": peers, "flows": [flow], "size": 512,
                            "duration": 2.0, "send_timeout": TIMEOUT, "batch": batch})["ok"]
    wait_for(lambda: sum(sum(m.call(n, {"cmd": "stats"})["stats"]["received"].values())
                         for n in m.partitions) > 200, what="traffic to flow")
    old = m.pid()
    kill(old)
    wait_for(lambda: restarted(m, "adapter"), timeout=TIMEOUT, what="adapter restart")
    assert m.pid() != old

    def settled():
        stats = {n: m.call(n, {"cmd": "stats"})["stats"] for n in m.partitions}
        if not all(s["sender_done"] for s in stats.values()):
            return None
        sent = sum(sum(s["sent"].values()) for s in stats.values())
        got = sum(sum(s["received"].values()) for s in stats.values())
        return stats if sent == got else None

    stats = wait_for(settled, timeout=TIMEOUT * 2, what="every accepted packet delivered")
    for s in stats.values():
        assert s["corrupt"] == s["gaps"] == s["duplicates"] == 0, s
        assert not s["errors"], s
    assert set(m.adapter_stats()["locks"].values()) == {"free"}


def test_killed_launcher_leaves_no_name(tmp_path):
    """SIGKILL the launcher under traffic: its children exit, and the adapter, seeing the
    hypervisor gone, unlinks the run's names and drops its record: no sweep needed."""
    env = {**os.environ, "XPMOVE_RUN_DIR": str(tmp_path / "runs")}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", "launch", "--duration",
                             "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:  # until the first progress line: traffic flows
        out = read_until(proc, lambda text: " verified " in text, time.monotonic() + TIMEOUT)
        found = re.search(r"machine up: run (xpm-[0-9a-f]+),", out.decode())
        assert found, out.decode()
        prefix = found.group(1)
        proc.kill()
        proc.wait(TIMEOUT)
        wait_for(lambda: not _processes_of_run(prefix), what="children to notice and exit")
        wait_for(lambda: not [n for n in os.listdir("/dev/shm") if prefix in n],
                 what="the adapter to unlink the run's names")
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.SharedMemory(f"/{prefix}-mem")
        assert not RunRegistry(str(tmp_path / "runs")).records()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        RunRegistry(str(tmp_path / "runs")).sweep()


def test_restarted_receiver_never_hands_over_a_record_twice(make_machine):
    """A record consumed by a killed incarnation (delivered table says so) but not yet freed
    (tail not advanced) is skipped by the next one: delivery stays exactly once."""
    from adapter import receive_area

    m = make_machine(small_config())
    for i in range(3):
        assert send(m, 1, 2, bytes([i]) * 10, "fig11")["seq"] == i + 1
    layout = m.layout
    words = receive_area.words(m.memory.view)
    src, dst = layout.by_id()[1], layout.by_id()[2]
    words[layout.delivered_address(src.index, dst.index) >> 3] = 2  # "consumed up to seq 2"
    packet = receive(m, 2)
    assert (packet["seq"], bytes.fromhex(packet["hex"])) == (3, bytes([2]) * 10)
    assert receive(m, 2, timeout=0) is None
    assert receive_area.read_head(words, dst) == receive_area.read_tail(words, dst)
    assert m.call(2, {"cmd": "stats"})["redelivered"] == 2


def test_restarted_receiver_resumes_inside_a_run(make_machine):
    """A multiple-write run is one record: a killed incarnation that handed over part of it
    (delivered table) leaves the record in the ring; the next one hands over the rest only,
    one packet at a time here, and frees the record after the last."""
    from adapter import receive_area

    m = make_machine(small_config())
    payloads = [bytes([i]) * 40 for i in range(10)]
    reply = m.call(1, {"cmd": "send_run", "dst": 2, "offset": 0,
                       "payloads": [p.hex() for p in payloads]})
    assert reply == {"ok": True, "seq": 1, "records": 10}
    layout = m.layout
    words = receive_area.words(m.memory.view)
    src, dst = layout.by_id()[1], layout.by_id()[2]
    words[layout.delivered_address(src.index, dst.index) >> 3] = 4  # "handed over 1..4"
    for seq in range(5, 11):
        assert receive_area.read_head(words, dst) != receive_area.read_tail(words, dst)
        packet = receive(m, 2)
        assert (packet["seq"], bytes.fromhex(packet["hex"])) == (seq, payloads[seq - 1])
    assert receive(m, 2, timeout=0) is None
    assert receive_area.read_head(words, dst) == receive_area.read_tail(words, dst)
    assert m.call(2, {"cmd": "stats"})["redelivered"] == 4


@pytest.mark.parametrize("run", [False, True])
def test_a_record_from_no_partition_is_a_corrupt_ring(make_machine, run):
    """Only the adapter and granted drivers write records, always with a partition's ID. A
    record claiming another source (here the test writes it into the receive area) is
    reported as RingCorrupt: neither handed over nor dropped, even one packet at a time."""
    import struct

    m = make_machine(small_config())
    if run:
        reply = m.call(1, {"cmd": "send_run", "dst": 2, "offset": 0,
                           "payloads": [(bytes([i]) * 40).hex() for i in range(3)]})
        assert reply["ok"], reply
    else:
        assert send(m, 1, 2, b"x" * 10, "fig11")["seq"] == 1
    dst = m.layout.by_id()[2]
    struct.pack_into("<I", m.memory.view, dst.receive_base + 4, 99)  # the record's source
    reply = m.call(2, {"cmd": "receive", "timeout": 1.0})
    assert reply["ok"] is False and reply["error"] == "RingCorrupt", reply
    assert "source network ID 99" in reply["message"], reply
    assert m.call(2, {"cmd": "stats"})["pending_bytes"] > 0  # still there, not dropped


@pytest.mark.parametrize("batch", [1, 64])
def test_soak_short_run(registry, batch):
    """`xpmove soak` in small: kills partitions and the adapter, loses and doubles nothing,
    with single moves and with multiple-write runs, in every flow (fig11, fig12 and leases,
    which every partition's three peers keep recalling from each other)."""
    from rich.console import Console

    from scripts.soak import soak

    report = soak(small_config(), duration=4.0, kill_every=0.5, size=512, seed=7,
                  console=Console(file=open(os.devnull, "w")), registry=registry, batch=batch)
    assert report.kills >= 4 and report.adapter_kills >= 1, report
    assert report.accepted > 0 and report.accepted == report.delivered, report
    assert report.lost == report.duplicated == report.corrupt == 0, report
    assert report.locks_free, report


def test_recovered_grant_ends_when_its_holder_asks_again(make_machine):
    """The adapter dies while a live driver holds a Fig 12 grant it will never finish: the
    restarted adapter keeps the lock granted (it cannot know the driver is not mid-move) until
    that driver sends its next request, then takes it back and undoes the half-done record."""
    m = make_machine(small_config(lock_timeout_s=5.0))
    assert m.call(1, {"cmd": "hold_grant", "dst": 2, "count": 4000})["ok"]
    kill(m.pid())
    wait_for(lambda: restarted(m, "adapter"), what="adapter restart")
    assert m.adapter_stats()["locks"]["2"] == "granted"
    # the holder's next request (to anyone) proves it is not moving: the lock comes back
    assert send(m, 1, 3, b"next request", "fig11")["ok"]
    assert send(m, 4, 2, b"after the take-back", "fig11", timeout=TIMEOUT)["seq"] == 1
    packet = receive(m, 2)
    assert (packet["source_id"], bytes.fromhex(packet["hex"])) == (4, b"after the take-back")
    assert receive(m, 2, timeout=0) is None  # the held record never became visible
    assert send(m, 1, 2, b"holder again", "fig12")["seq"] == 1  # its seq was rolled back
    assert set(m.adapter_stats()["locks"].values()) == {"free"}


@pytest.mark.parametrize("flow", ["fig11", "fig12"])
def test_a_partition_that_will_not_come_back_is_gone_at_once(make_machine, flow):
    """restart = never: a killed partition is retired; a send to it fails at once with the
    non-retryable DestinationGone instead of retrying DestinationDown for its whole timeout."""
    m = make_machine(small_config(3, restart="never"))
    kill(m.pid(2))
    wait_for(lambda: m.poll() or 2 in m.retired, what="partition 2 retired")
    assert m.partitions[2].state.value == "dead"
    started = time.monotonic()
    reply = send(m, 1, 2, b"x" * 64, flow, timeout=8.0)
    assert reply["error"] == "DestinationGone" and not reply["retryable"], reply
    assert "will not be restarted" in reply["message"]
    assert time.monotonic() - started < 4.0  # not the 8 s of retrying a DestinationDown
    assert send(m, 1, 3, b"y" * 64, flow)["ok"]  # the others are untouched


PARTITIONS = 3


@pytest.mark.parametrize("bound", [("--packets", "6000"), ("--duration", "5")],
                         ids=["packets", "duration"])
def test_launch_continues_the_share_of_a_partition_restarted_under_traffic(tmp_path, bound):
    """restart = "on-failure": p2 SIGKILLed while it sends is restarted; its new incarnation
    sends what is left of its share (the segment's books say what was accepted) and receives
    its own. The run ends clean, every accepted packet verified once; with --packets exactly
    the packets asked for."""
    config = tmp_path / "restart.toml"
    config.write_text('[machine]\nrestart = "on-failure"\n\n'
                      + tiny_config(tmp_path / "tiny.toml", PARTITIONS).read_text())
    proc = xpmove(["launch", *bound, "--config", str(config)], tmp_path, start_new_session=True)
    try:
        assert proc.stdout is not None
        out, deadline = "", time.monotonic() + 60
        while not re.search(r"\]\s+[1-9][\d,]* verified", out):  # traffic flows
            assert time.monotonic() < deadline, out
            line = proc.stdout.readline()
            assert line, f"launch ended before its traffic:\n{out}"
            out += line
        prefix = re.search(r"machine up: run (xpm-[0-9a-f]+)", out).group(1)
        victim = next(c for c in psutil.Process(proc.pid).children()
                      if booted_partition(c.cmdline()) == 2)
        victim.kill()
        rest, err = proc.communicate(timeout=90)
        out += rest
    finally:
        reap_group(proc, tmp_path)
    assert proc.returncode == 0, (out[-3000:], err[-2000:])
    assert "p2 died (exit code -9)" in out
    # the kill came while p2 still had packets to send: the path under test
    assert re.search(r"p2 restarted: it continues its share( \([1-9][\d,]* packets left\))?",
                     out), out[-3000:]
    verdict = re.search(r"clean: ([\d,]+) of ([\d,]+) accepted packets verified, 0 refused, "
                        r"0 corrupt/gap/duplicate, dead: none", out)
    assert verdict, out[-3000:]
    verified, accepted = (int(g.replace(",", "")) for g in verdict.groups())
    assert verified == accepted
    if bound[0] == "--packets":
        assert accepted == 6000 * 2 * PARTITIONS * (PARTITIONS - 1)
    assert not shm_names(prefix)
