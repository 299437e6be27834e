"""`xpmove status` against a real machine: the status socket answers while traffic flows,
the command finds the run in the registry, and nothing is left behind after the stop."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from hypervisor.config import with_program
from scripts.workload.program import PROGRAM
from tests.integration.conftest import TIMEOUT, small_config, wait_for

XPMOVE = [sys.executable, "-m", "scripts.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def xpmove_status(registry, *args: str, columns: int | None = None
                  ) -> subprocess.CompletedProcess:
    env = {**os.environ, "XPMOVE_RUN_DIR": registry.directory}
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([*XPMOVE, "status", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT * 3)


def start_traffic(machine, duration: float) -> None:
    ids = list(machine.partitions)
    for nid in ids:
        reply = machine.call(nid, {"cmd": "traffic", "peers": [p for p in ids if p != nid],
                                   "flows": ["fig11", "fig12"], "size": 1024, "packets": None,
                                   "duration": duration})
        assert reply.get("ok"), reply


def sent_so_far(machine) -> bool:
    stats = [machine.call(nid, {"cmd": "stats"})["stats"] for nid in machine.partitions]
    return all(sum(s.get("sent", {}).values()) > 0 for s in stats)


def test_status_once_json_while_traffic_flows(make_machine, registry):
    machine = make_machine(with_program(small_config(2), PROGRAM))
    start_traffic(machine, duration=30.0)  # far longer than the test: still flowing below
    wait_for(lambda: sent_so_far(machine), what="both partitions sending")
    (record,) = [r for r in registry.records() if r["prefix"] == machine.prefix]
    path = record["status_socket"]
    assert path == os.path.join(registry.directory, f"{machine.prefix}.sock")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    result = xpmove_status(registry, "--once", "--json")
    assert result.returncode == 0, result.stderr
    snap = json.loads(result.stdout)
    assert snap["prefix"] == machine.prefix and snap["owner_pid"] == os.getpid()
    parts = {p["network_id"]: p for p in snap["partitions"]}
    assert set(parts) == set(machine.partitions)
    for nid, p in parts.items():
        assert p["packets_out"] > 0, p
        assert p["pid"] == machine.pid(nid) and p["state"] == "running"
        assert p["ring_size"] == 256 * 1024 and 0 <= p["ring_used"] <= p["ring_size"]
        assert set(p["lock"]) == {"value", "holder", "state", "waits"}
    adapter = snap["adapter"]
    assert adapter["stats_error"] is None and adapter["pid"] == machine.pid()
    assert adapter["counters"]["requests"] > 0 and isinstance(adapter["errors"], dict)
    # the traffic is undisturbed: the machine still answers and keeps moving packets
    before = machine.adapter_stats()["counters"]["requests"]
    wait_for(lambda: machine.adapter_stats()["counters"]["requests"] > before,
             what="traffic still flowing after the status call")
    # by prefix (a unique leading part), in the table form: at $COLUMNS = 80 it fits them;
    # in a pipe without it, every column is shown (none dropped for a "narrow terminal")
    result = xpmove_status(registry, machine.prefix[:8], "--once", columns=80)
    assert result.returncode == 0, result.stderr
    assert machine.prefix in result.stdout and "…" not in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    wide = xpmove_status(registry, machine.prefix[:8], "--once")
    assert wide.returncode == 0 and "narrow terminal" not in wide.stdout, wide.stdout


def test_several_runs_are_listed_and_picked_by_prefix(make_machine, registry):
    one = make_machine(small_config(2, program=None))
    two = make_machine(small_config(2, program=None))
    listing = xpmove_status(registry, "--json")
    assert listing.returncode == 0, listing.stderr
    assert {r["prefix"] for r in json.loads(listing.stdout)["runs"]} == {one.prefix, two.prefix}
    picked = xpmove_status(registry, two.prefix, "--once", "--json")
    assert picked.returncode == 0, picked.stderr
    assert json.loads(picked.stdout)["prefix"] == two.prefix
    unknown = xpmove_status(registry, "xpm-zzzz", "--once")
    assert unknown.returncode == 1
    assert one.prefix in unknown.stderr and two.prefix in unknown.stderr


def test_no_live_run_says_so_and_the_socket_is_gone_after_stop(make_machine, registry):
    machine = make_machine(small_config(2, program=None))
    path = registry.status_socket_path(machine.prefix)
    assert os.path.exists(path)
    machine.stop()
    assert not os.path.exists(path)
    result = xpmove_status(registry, "--once")
    assert result.returncode == 1
    assert "no running machine" in result.stderr


def test_watching_notes_the_end_of_the_run_and_exits_0(make_machine, registry):
    machine = make_machine(small_config(2, program=None))
    env = {**os.environ, "XPMOVE_RUN_DIR": registry.directory}
    proc = subprocess.Popen([*XPMOVE, "status", "--json", "--interval", "0.1"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # a snapshot came: it is watching
        assert json.loads(first)["prefix"] == machine.prefix
        machine.stop()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"run {machine.prefix} ended" in err
