"""SIGTERM to `mpiexec -n 2` (as Ctrl-C or a batch system sends it), under traffic or while
the cluster bench measures: every host ends the run, without MPI_Abort, and leaves nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("mpi4py", reason="the .[cluster] extra (mpi4py, mpich) is not installed")

from tests.integration.cluster_jobs import (
    CONFIG,
    MPIEXEC,
    REPO,
    TIMEOUT_S,
    command,
    env,
    read_until,
    stop,
    traffic_flows,
    words,
)
from tests.integration.conftest import mpi_runtime_names, wait_for

pytestmark = pytest.mark.usefixtures("swept")  # tests/integration/conftest.py

# a host ended by its own signal, or by the other's ending if that came first
ENDED = re.compile(r"host (?:east|west): (?:interrupted \(Ctrl-C or SIGTERM\)|HostEnding\b[^;]*); "
                   r"ending the MPI job")


def test_sigterm_during_a_bench_run_ends_it_on_every_host(tmp_path: Path) -> None:
    """SIGTERM while the cluster bench measures its second run (the hosts sleep between two
    looks): both hosts end the run together, without MPI_Abort, and leave nothing."""
    proc = subprocess.Popen(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "bench", "--config",
         CONFIG, "--sizes", "1KiB", "--batch", "128", "--duration", "4", "--transports",
         "fig11"], cwd=REPO, env=env(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        out = read_until(proc, lambda text: "[1/2] fig11 cross" in text,
                         time.monotonic() + TIMEOUT_S)
        proc.terminate()
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        stop(proc)
    text = words((out + rest).decode())
    assert "[2/2]" not in text, text  # ended inside the second run, not after it
    assert_every_host_ended(proc, text, tmp_path)


def assert_every_host_ended(proc: subprocess.Popen, text: str, tmp_path: Path) -> None:
    """After SIGTERM to mpiexec: each host said how it ended the run (its own signal, or the
    other's ending), none by MPI_Abort, and no host's run record (its names) is left."""
    assert proc.returncode != 0, text
    assert len(ENDED.findall(text)) == 2, text
    assert "Abort(" not in text, text
    assert not [f for f in os.listdir(tmp_path / "runs") if f.endswith(".json")], \
        "a host's run record (its names) was left behind"


def test_sigterm_under_traffic_stops_every_host_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM to mpiexec (as Ctrl-C or a batch system would send) reaches every rank: each
    stops its machine before the job ends, so no host leaves a process or an IPC name."""
    proc = subprocess.Popen(command("--duration", "30"), cwd=REPO, env=env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = traffic_flows(proc, time.monotonic() + TIMEOUT_S)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.terminate()
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        stop(proc)
    text = words((out + rest).decode())
    assert_every_host_ended(proc, text, tmp_path)
    psutil.wait_procs(children, timeout=10)
    assert not [p for p in children if p.is_running() and p.status() != "zombie"]
    east = re.search(r"host east: run (xpm-[0-9a-f]+)", text)
    assert east and not [n for n in os.listdir("/dev/shm") if east.group(1) in n]


def test_mpiexec_killed_by_its_output_pipe_leaves_nothing(tmp_path: Path) -> None:
    """The job's output piped into `head`: once the reader is gone mpiexec dies (SIGPIPE) and
    takes the ranks with it, so no hypervisor stops its machine. Each host's adapter sees its
    hypervisor gone and sweeps the run: its names, its record and the MPI runtime's shared
    memory its rank mapped are all gone without any cleanup run."""
    before = mpi_runtime_names()
    proc = subprocess.Popen(command("--duration", "30"), cwd=REPO, env=env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = traffic_flows(proc, time.monotonic() + TIMEOUT_S)
        runs = [f[:-5] for f in os.listdir(tmp_path / "runs") if f.endswith(".json")]
        assert len(runs) == 2, runs
        job = mpi_runtime_names() - before  # the MPI runtime's, recorded with the runs
        assert job
        assert proc.stdout is not None
        proc.stdout.close()  # as `head` does once it has its lines
        proc.wait(TIMEOUT_S)
        assert proc.returncode != 0, words(out.decode())

        def left() -> list[str]:
            return [n for n in os.listdir("/dev/shm") if any(r in n for r in runs) or n in job]

        wait_for(lambda: not left(), what="the adapters to unlink both runs' names")
        assert not [f for f in os.listdir(tmp_path / "runs") if f.endswith(".json")]
    finally:
        stop(proc)
