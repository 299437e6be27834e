"""Two hosts on this machine (`mpiexec -n 2`, issue 15): all-to-all traffic in both flows
across hosts, the README's programs, the bench and leases across hosts; every packet
verified, every IPC name unlinked. Real MPI ranks, real fabrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py", reason="the .[cluster] extra (mpi4py, mpich) is not installed")

from tests.integration.cluster_jobs import (
    CONFIG,
    MPIEXEC,
    REPO,
    TIMEOUT_S,
    VERDICT,
    assert_names_gone,
    command,
    env,
    words,
)

pytestmark = pytest.mark.usefixtures("swept")  # tests/integration/conftest.py


def test_two_hosts_run_all_to_all_traffic_in_both_flows(tmp_path: Path) -> None:
    done = subprocess.run(command("--packets", "100"), cwd=REPO, env=env(tmp_path),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    verdict = VERDICT.search(words(out))
    assert verdict, out
    # 4 partitions, each to 3 peers (2 of them on the other host), 100 packets, 2 flows
    assert verdict.group(1) == verdict.group(2) == "2,400"
    # each host's fabric pulled what its partitions got from the other host: 2 x 2 x 100 x 2
    fabric = re.findall(r"fabric pulled ([\d,]+) packets in", words(out))
    assert len(fabric) == 2 and all(int(f.replace(",", "")) == 800 for f in fabric), out
    assert_names_gone(out, tmp_path)


HOSTS = '\n[[host]]\nname = "east"\npartitions = ["{}"]\n\n[[host]]\nname = "west"\n' \
        'partitions = ["{}"]\n'


@pytest.mark.parametrize("example, first, second, said", [
    ("pingpong", "pinger", "ponger", ("fig11: 200 round trips of 64 B",
                                      "fig12: 200 round trips of 64 B")),
    ("loans", "producer", "consumer", ("consumer: 400 frames, each once and in order",)),
])
def test_users_programs_run_across_hosts(tmp_path: Path, example: str, first: str,
                                         second: str, said: tuple[str, ...]) -> None:
    """`mpiexec -n 2 xpmove run`: the README's examples, one partition on each host, unchanged
    (network IDs are global; the loans go into the remote partition's proxy ring)."""
    config = REPO / "examples" / f"{example}-hosts.toml"  # the README's, for ping-pong
    if not config.exists():
        config = tmp_path / config.name
        config.write_text((REPO / "examples" / f"{example}.toml").read_text()
                          + HOSTS.format(first, second))
    done = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "run", "--config",
         str(config), "--timeout", "60"],
        cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode == 0, out
    for line in said:
        assert line in out, out
    assert f"{first} (ID 1): returned" in out and f"{second} (ID 2): returned" in out, out
    assert "every program returned" in out, out


def cluster_bench(tmp_path: Path, *options: str) -> tuple[str, list[dict]]:
    """`mpiexec -n 2 xpmove bench --config two-hosts` with `options`, 0.5 s a run: its output
    (the test fails unless it exits 0) and the runs of its JSON."""
    out_json = tmp_path / "cluster.json"
    done = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "bench", "--config",
         CONFIG, "--duration", "0.5", *options, "--json", str(out_json)],
        cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode == 0, out
    return out, json.loads(out_json.read_text())["runs"]


def test_the_bench_across_hosts_measures_every_route_and_says_each_target(
        tmp_path: Path) -> None:
    out, runs = cluster_bench(tmp_path, "--sizes", "1KiB,64KiB", "--batch", "128",
                              "--transports", "fig11,tcp")
    assert {(r["transport"], r["route"], r["size"]) for r in runs} == {
        (t, r, s) for t in ("fig11", "tcp") for r in ("cross", "local") for s in (1024, 65536)}
    assert all(r["packets"] > 0 and r["S"] > 0 and not r["problems"] for r in runs), runs
    for target in ("cross-host fig11 >= 2x cross-host tcp, 1024 B",
                   "cross-host fig11 CPU per packet within 2x of same-host, 64 KiB"):
        assert re.search(rf"(MET|MISSED): {re.escape(target)}: ", out), out
    assert_names_gone(out, tmp_path)



def test_leases_across_hosts_deliver_every_packet(tmp_path: Path) -> None:
    """A lease on a remote destination is a lease on its proxy ring here: the driver commits
    into it (batch 1: lease.send; batch 16: a run loaned under the lease, filled in place),
    the fabric carries the records over, every one verified (the bench's check)."""
    out, runs = cluster_bench(tmp_path, "--sizes", "1KiB", "--batch", "1,16",
                              "--transports", "fig12-lease")
    assert {(r["route"], r["batch"]) for r in runs} == {
        (route, b) for route in ("cross", "local") for b in (1, 16)}, runs
    assert all(r["packets"] > 0 and not r["problems"] for r in runs), runs
    assert_names_gone(out, tmp_path)


def test_a_json_that_cannot_be_written_is_one_line_and_a_failed_exit(tmp_path: Path) -> None:
    """The start-up check cannot see a full disk (/dev/full opens for writing): the bench
    runs, prints its tables, then names the file it could not write and exits non-zero,
    without a traceback, both hosts' names unlinked."""
    done = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "bench", "--config",
         CONFIG, "--duration", "0.2", "--sizes", "1KiB", "--batch", "16", "--transports",
         "fig11", "--json", "/dev/full"],
        cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode != 0, out
    assert "xpmove bench: /dev/full not written: [Errno 28] No space left on device" in out, out
    assert "Traceback" not in out, out
    assert_names_gone(out, tmp_path)
