"""Two hosts on this machine as one MPI job, `mpiexec -n 2` (issue 15), for the
test_cluster_*.py files: the job's command line and environment, its output read until
traffic flows, a host's processes found under mpiexec, and the check that both hosts' runs
left no IPC name and no run record."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
CONFIG = "configs/two-hosts.toml"
TIMEOUT_S = 120
RUN = re.compile(r"host (\w+) \(run (xpm-[0-9a-f]+)\)")
VERDICT = re.compile(r"clean: ([\d,]+) of ([\d,]+) accepted packets verified, 0 refused, "
                     r"0 corrupt/gap/duplicate, dead: none")
INTERVAL = re.compile(r"\]\s+([\d,]+) verified")


def command(*argv: str, config: str | Path = CONFIG) -> list[str]:
    return [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "launch",
            "--config", str(config), *argv]


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XPMOVE_RUN_DIR": str(tmp_path / "runs")}


def words(text: str) -> str:
    return " ".join(text.split())


def assert_names_gone(out: str, tmp_path: Path) -> None:
    runs = dict(RUN.findall(words(out)))
    assert sorted(runs) == ["east", "west"], out
    left = [n for n in os.listdir("/dev/shm") if any(p in n for p in runs.values())]
    assert left == []
    assert not [f for f in os.listdir(tmp_path / "runs") if f.endswith(".json")]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:  # the test failed: end the job cleanly (mpiexec forwards SIGTERM)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def traffic_flows(proc: subprocess.Popen, deadline: float) -> bytes:
    """Read the launch's output until its progress lines show packets verified across the
    hosts (traffic is flowing); the output so far."""
    def flowing(text: str) -> bool:
        seen = INTERVAL.findall(text)
        return bool(seen) and int(seen[-1].replace(",", "")) > 1000
    return read_until(proc, flowing, deadline)


def read_until(proc: subprocess.Popen, done: Callable[[str], bool], deadline: float) -> bytes:
    """Read the job's output until `done(output so far)`; the output."""
    assert proc.stdout is not None
    out = b""
    while True:
        if done(out.decode(errors="replace")):
            return out
        assert time.monotonic() < deadline, out.decode()
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
        assert chunk or not ready, f"output ended before traffic:\n{out.decode()}"
        out += chunk


def of_rank(rank: int, launcher: psutil.Process) -> Iterator[tuple[psutil.Process, list[str]]]:
    """Each process of MPI rank `rank` (host `rank`) under the mpiexec `launcher`, with its
    command line."""
    for proc in launcher.children(recursive=True):
        try:
            if proc.environ().get("PMI_RANK") == str(rank):
                yield proc, proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def adapter_of(rank: int, launcher: psutil.Process) -> psutil.Process | None:
    """The adapter process of MPI rank `rank` (host `rank`) under the mpiexec `launcher`."""
    return next((p for p, argv in of_rank(rank, launcher) if "adapter.server" in argv), None)
