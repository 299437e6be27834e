"""The machine end to end: real processes, segment, semaphores and pipes (Figs 10-12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hypervisor.machine import Machine
from tests.integration.conftest import TIMEOUT, KiB, names_exist, small_config, wait_for

FLOWS = ("fig11", "fig12")


def payload(src: int, dst: int, n: int, salt: int = 0) -> bytes:
    return bytes((src * 31 + dst * 7 + salt + i) & 0xFF for i in range(n))


def send(machine: Machine, src: int, dst: int, data: bytes, flow: str, offset: int = 0,
         **extra) -> dict:
    assert machine.call(src, {"cmd": "write", "offset": offset, "hex": data.hex()})["ok"]
    return machine.call(src, {"cmd": "send", "dst": dst, "offset": offset, "count": len(data),
                              "flow": flow, **extra})


def receive(machine: Machine, nid: int, timeout: float = TIMEOUT) -> dict | None:
    return machine.call(nid, {"cmd": "receive", "timeout": timeout})["packet"]


def checksums(machine: Machine) -> dict[int, int]:
    return {nid: machine.call(nid, {"cmd": "checksum"})["crc32"] for nid in machine.partitions}


@pytest.mark.parametrize("flow", FLOWS)
def test_move_arrives_byte_for_byte(machine, flow):
    data = payload(1, 2, 3000)
    reply = send(machine, 1, 2, data, flow, offset=4096)
    assert reply == {"ok": True, "seq": 1}
    packet = receive(machine, 2)
    assert packet == {"source_id": 1, "seq": 1, "hex": data.hex()}
    assert receive(machine, 2, timeout=0) is None


def test_all_to_all_both_flows_in_order(machine):
    ids = list(machine.partitions)
    for salt in range(3):
        for src in ids:
            for dst in ids:
                if src != dst:
                    for flow in FLOWS:
                        assert send(machine, src, dst, payload(src, dst, 100 + salt, salt),
                                    flow)["ok"]
    for dst in ids:
        got: dict[int, list[int]] = {}
        for _ in range(3 * 2 * (len(ids) - 1)):
            p = receive(machine, dst)
            assert p is not None
            got.setdefault(p["source_id"], []).append(p["seq"])
            salt = (p["seq"] - 1) // 2
            assert bytes.fromhex(p["hex"]) == payload(p["source_id"], dst, 100 + salt, salt)
        assert all(seqs == list(range(1, 7)) for seqs in got.values()), got
        assert sorted(got) == [i for i in ids if i != dst]
    stats = machine.adapter_stats()
    assert stats["counters"]["moves"] == 3 * 2 * len(ids) * (len(ids) - 1)
    assert set(stats["locks"].values()) == {"free"}


def test_launch_traffic_all_to_all(machine):
    """The built-in workload: every partition to every other, both flows, all verified."""
    from rich.console import Console

    from scripts.launch import run_traffic, totals
    from scripts.shares import Shares

    stats = run_traffic(machine, Shares(machine, size=2000, packets=40, duration=None),
                        Console(file=open(os.devnull, "w")))
    sent, received = totals(stats)
    assert sent == received == 40 * 2 * 4 * 3
    assert all(s["corrupt"] == s["gaps"] == s["duplicates"] == 0 for s in stats.values())
    assert all(not s["errors"] for s in stats.values())


BAD_MOVES = [
    # (dst, offset, count, error type, text that must be in the message)
    (9, 0, 10, "UnknownNetworkId", "network ID 9"),
    (1, 0, 10, "OwnNetworkId", "network ID 1"),
    (-1, 0, 10, "UnknownNetworkId", "-1"),
    (2, 0, 0, "BadCount", "count 0"),
    (2, 0, -5, "BadCount", "count -5"),
    (2, -1, 10, "BadOffset", "offset -1"),
    (2, 1024 * KiB - 5, 10, "OutOfBounds", "[1048571, 1048581)"),
    (2, 2**63 - 1, 2**63 - 1, "OutOfBounds", str(2**63 - 1)),
    (2, 0, 256 * KiB, "TooLarge", "count 262144"),
]


@pytest.mark.parametrize("flow", FLOWS)
def test_bad_input_named_and_nothing_changes(machine, flow):
    before = checksums(machine)
    for dst, offset, count, error, text in BAD_MOVES:
        reply = machine.call(1, {"cmd": "send", "dst": dst, "offset": offset, "count": count,
                                 "flow": flow})
        assert reply["ok"] is False and reply["error"] == error, (dst, offset, count, reply)
        assert text in reply["message"], reply["message"]
    assert checksums(machine) == before
    # the adapter still serves everyone, the failed requests left no lock taken
    assert send(machine, 3, 4, b"still alive", flow)["ok"]
    assert bytes.fromhex(receive(machine, 4)["hex"]) == b"still alive"
    stats = machine.adapter_stats()
    assert set(stats["locks"].values()) == {"free"}
    # the port refuses a range outside its own memory itself (no request); the rest reach the
    # adapter, which counts each
    local = {"BadCount", "BadOffset", "OutOfBounds"}
    assert sum(stats["errors"].values()) == sum(m[3] not in local for m in BAD_MOVES)


def test_vector_request_reports_each_move(machine):
    machine.call(1, {"cmd": "write", "offset": 0, "hex": payload(1, 2, 64).hex()})
    reply = machine.call(1, {"cmd": "send_many", "flow": "fig12",
                             "moves": [[2, 0, 64], [9, 0, 64], [3, 0, 64], [2, 0, 32]]})
    outcomes = reply["outcomes"]
    assert [o["ok"] for o in outcomes] == [True, False, True, True]
    assert outcomes[1]["error"] == "UnknownNetworkId"
    assert [o.get("seq") for o in outcomes] == [1, None, 1, 2]
    assert bytes.fromhex(receive(machine, 2)["hex"]) == payload(1, 2, 64)
    assert bytes.fromhex(receive(machine, 2)["hex"]) == payload(1, 2, 64)[:32]
    assert bytes.fromhex(receive(machine, 3)["hex"]) == payload(1, 2, 64)


def test_user_view_is_isolated(machine):
    """User code sees exactly its region: every access past it fails and changes nothing."""
    before = checksums(machine)
    size = machine.layout.by_id()[1].size
    for cmd in ({"cmd": "read", "offset": size, "count": 1},
                {"cmd": "read", "offset": -1, "count": 2},
                {"cmd": "read", "offset": size - 1, "count": 2},
                {"cmd": "write", "offset": size - 1, "hex": "0102"},
                {"cmd": "write", "offset": -4096, "hex": "01"},
                {"cmd": "mvcl", "destination": size - 10, "source": 0, "count": 20},
                {"cmd": "mvcl", "destination": 0, "source": -1, "count": 20}):
        reply = machine.call(1, cmd)
        assert reply["ok"] is False and reply["error"] in ("OutOfBounds", "BadOffset"), cmd
    assert checksums(machine) == before
    assert machine.call(1, {"cmd": "mvcl", "destination": 100, "source": 0, "count": 10})["ok"]


@pytest.mark.parametrize("flow", FLOWS)
def test_ring_full_back_pressure_nothing_lost(machine, flow):
    """A full receive area refuses (retryable) instead of overwriting; waiting senders resume."""
    record = 60 * KiB
    accepted = []
    for i in range(10):
        reply = send(machine, 1, 2, payload(1, 2, record, i), flow)
        if not reply["ok"]:
            assert reply["error"] == "DestinationFull" and reply["retryable"], reply
            assert "free" in reply["message"]
            break
        accepted.append(i)
    assert 3 <= len(accepted) < 10  # a 256 KiB ring holds four 60 KiB records
    # consume one record: exactly the space for one more appears
    first = receive(machine, 2)
    assert bytes.fromhex(first["hex"]) == payload(1, 2, record, accepted[0])
    assert send(machine, 1, 2, payload(1, 2, record, 99), flow, timeout=TIMEOUT)["ok"]
    expected = [payload(1, 2, record, i) for i in accepted[1:]] + [payload(1, 2, record, 99)]
    for data in expected:
        assert bytes.fromhex(receive(machine, 2)["hex"]) == data
    assert receive(machine, 2, timeout=0) is None


def test_wrapping_ring_keeps_order_and_bytes(machine):
    """Many odd-sized records through a small ring: wrap with padding, nothing torn."""
    sizes = [1000 + (i * 7919) % 50_000 for i in range(40)]
    for i, n in enumerate(sizes):
        flow = FLOWS[i % 2]
        assert send(machine, 3, 1, payload(3, 1, n, i), flow)["ok"]
        packet = receive(machine, 1)
        assert packet["seq"] == i + 1
        assert bytes.fromhex(packet["hex"]) == payload(3, 1, n, i)


def no_run_registered(runs) -> bool:
    """A run registers its prefix before it creates any name: no record, no name."""
    return not runs.exists() or not list(runs.iterdir())


def test_config_errors_before_anything_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[partition]]\nname = "a"\nnetwork_id = 1\nmemory = "1MiB"\n'
                   'receive_area = "256KiB"\nmemroy = 5\n')
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "scripts.cli", "launch", "--config",
                             str(bad)], capture_output=True, text=True, timeout=TIMEOUT,
                            env={**os.environ, "XPMOVE_RUN_DIR": str(runs)})
    assert result.returncode != 0
    assert "memroy" in result.stderr
    assert no_run_registered(runs)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_launch_stops_cleanly_on_signal(tmp_path, how):
    env = {**os.environ, "XPMOVE_RUN_DIR": str(tmp_path / "runs")}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", "launch", "--duration",
                             "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()  # "machine up: run xpm-..., ..." once everything started
        assert "machine up" in line, line
        prefix = line.split("run ")[1].split(",")[0]
        proc.send_signal(how)
        out, _ = proc.communicate(timeout=TIMEOUT * 2)
        assert proc.returncode == 130, out
        assert "all IPC names unlinked" in out
        assert not [n for n in os.listdir("/dev/shm") if prefix in n]
        wait_for(lambda: not _processes_of_run(prefix), what="the run's processes to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _processes_of_run(prefix: str) -> list[int]:
    """Pids whose command line carries the run's prefix (adapter and partitions do)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(prefix in arg for arg in (p.info["cmdline"] or ())):
            found.append(p.pid)
    return found


def test_every_child_runs_without_rep_movsb(machine):
    """The adapter and every partition get the glibc tunable that keeps their copies off
    `rep movsb` (hypervisor/children.py), read from their real environment."""
    from hypervisor.children import REP_MOVSB_OFF, REP_MOVSB_TUNABLE

    for child in machine.children():
        with open(f"/proc/{child.proc.pid}/environ", "rb") as f:
            environ = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        tunables = environ.get(b"GLIBC_TUNABLES", b"").decode().split(":")
        assert f"{REP_MOVSB_TUNABLE}={REP_MOVSB_OFF}" in tunables, (child.name, tunables)


def test_stop_unlinks_every_name(make_machine):
    m = make_machine(small_config(n=2))
    assert names_exist(m)
    pids = [c.proc.pid for c in m.children()]
    m.stop()
    assert not names_exist(m)
    assert all(c.proc.poll() is not None for c in m.children())
    assert len(pids) == 3


@pytest.mark.parametrize("flow", FLOWS)
def test_multiple_write_run_arrives_as_packets(machine, flow):
    """Multiple-write: one request, one record, one MVXL (by the adapter, or by the driver with
    the granted lock); every packet delivered with its own seq. `receive` takes one packet at a
    time, so the run is also drained in pieces."""
    payloads = [payload(1, 2, 13, i) for i in range(4)]  # 13 bytes: padded to 16 in the run
    assert send(machine, 1, 2, b"single", flow)["seq"] == 1
    reply = machine.call(1, {"cmd": "send_run", "dst": 2, "offset": 8, "flow": flow,
                             "payloads": [p.hex() for p in payloads]})
    assert reply == {"ok": True, "seq": 2, "records": 4}
    assert bytes.fromhex(receive(machine, 2)["hex"]) == b"single"
    for seq, data in enumerate(payloads, start=2):
        packet = receive(machine, 2)
        assert (packet["source_id"], packet["seq"], bytes.fromhex(packet["hex"])) == (1, seq, data)
    assert receive(machine, 2, timeout=0) is None
    assert machine.call(2, {"cmd": "stats"})["pending_bytes"] == 0  # the run was freed


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("descriptor", [
    [4, 0], [4, 4000], [0, 64], [5, 64], [3, 64], [4, 65], [2**32 - 1, 64], [4, 2**32 - 1],
])
def test_multiple_write_run_that_lies_is_refused(machine, descriptor, flow):
    """A descriptor that does not tile the run exactly is refused by name; nothing moves."""
    before = checksums(machine)
    reply = machine.call(1, {"cmd": "send_run", "dst": 2, "offset": 0, "descriptor": descriptor,
                             "flow": flow,
                             "payloads": [payload(1, 2, 64, i).hex() for i in range(4)]})
    assert reply["ok"] is False and reply["error"] == "BadCount", reply
    assert receive(machine, 2, timeout=0) is None
    after = checksums(machine)
    assert after[2] == before[2] and after[3] == before[3]  # nothing moved anywhere
    assert set(machine.adapter_stats()["locks"].values()) == {"free"}


def test_multiple_write_run_is_one_record_however_many_packets(machine):
    """A run of 50 packets costs the adapter one request and one move of one record."""
    before = machine.adapter_stats()["counters"]
    payloads = [payload(3, 4, 64, i) for i in range(50)]
    reply = machine.call(3, {"cmd": "send_run", "dst": 4, "offset": 0,
                             "payloads": [p.hex() for p in payloads]})
    assert reply == {"ok": True, "seq": 1, "records": 50}
    after = machine.adapter_stats()["counters"]
    assert after["requests"] - before.get("requests", 0) == 1
    assert after["moves"] - before.get("moves", 0) == 50
    for seq, data in enumerate(payloads, start=1):
        packet = receive(machine, 4)
        assert (packet["source_id"], packet["seq"], bytes.fromhex(packet["hex"])) == (3, seq, data)


@pytest.mark.parametrize("command, size", [("launch", "10"), ("launch", "3000000"),
                                           ("soak", "0")])
def test_launch_refuses_a_packet_size_the_machine_cannot_carry(command, size, tmp_path):
    """A bad option value, known bad once the config is read: one line, exit 2 (README)."""
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "scripts.cli", command, "--size", size],
                            capture_output=True, text=True, timeout=TIMEOUT,
                            env={**os.environ, "XPMOVE_RUN_DIR": str(runs)})
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"xpmove {command}: --size {size} must be in [24, 2097128] for "
                             f"this config (sender area and half a receive ring)\n")
    assert no_run_registered(runs)


def test_a_call_from_another_thread_survives_polling(machine):
    """A thread's call waits for its reply while the owner thread polls: supervision must not
    read that reply off the channel and drop it (it did: the call then timed out, which made
    tests with a sender thread and a polling loop flaky)."""
    import threading
    import time

    got: list[dict] = []

    def calls() -> None:  # a few, each replied after 0.3 s: a race the old code lost often
        for _ in range(5):
            got.append(machine.call(2, {"cmd": "receive", "timeout": 0.3}, timeout=3.0))

    caller = threading.Thread(target=calls)
    caller.start()
    try:
        deadline = time.monotonic() + TIMEOUT + 10
        while caller.is_alive() and time.monotonic() < deadline:
            machine.poll()  # as often as it can: the replies come while it looks
    finally:
        caller.join(TIMEOUT)
    assert got == [{"ok": True, "packet": None}] * 5


def test_partitions_run_on_the_cpus_their_config_names(make_machine):
    """`cpus` (what `xpmove bench --placement pairs` sets per route) pins the process."""
    from dataclasses import replace

    cpus = sorted(os.sched_getaffinity(0))
    config = small_config(2)
    pinned = replace(config, partitions=(replace(config.partitions[0], cpus=(cpus[-1],)),
                                         config.partitions[1]))
    m = make_machine(pinned)
    assert os.sched_getaffinity(m.pid(1)) == {cpus[-1]}
    assert os.sched_getaffinity(m.pid(2)) == set(cpus)
