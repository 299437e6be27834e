"""Cluster configs refused before anything starts, in one line and without a traceback: a
config that places partitions on several hosts, started outside mpiexec, and hosts given
configs that differ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py", reason="the .[cluster] extra (mpi4py, mpich) is not installed")

from tests.integration.cluster_jobs import CONFIG, MPIEXEC, REPO, TIMEOUT_S, env, words

pytestmark = pytest.mark.usefixtures("swept")  # tests/integration/conftest.py


@pytest.mark.parametrize("argv, message", [
    (("launch",), "the config has 2 hosts (east, west): run it as `mpiexec -n 2 xpmove launch"),
    (("run",), "the config has 2 hosts (east, west): run it as `mpiexec -n 2 xpmove run"),
    (("bench",), "the config has 2 hosts (east, west): run it as `mpiexec -n 2 xpmove bench"),
    (("soak",), "xpmove soak: configs/two-hosts.toml places the partitions on 2 hosts "
                "([[host]] tables); across hosts run `mpiexec -n 2 xpmove launch|run|bench"),
])
def test_a_cluster_config_outside_mpiexec_is_one_line_naming_the_command(
        tmp_path: Path, argv: tuple[str, ...], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "scripts.cli", *argv, "--config", CONFIG],
                          cwd=REPO, env=env(tmp_path), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode != 0
    assert message in words(done.stderr) and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


def test_hosts_given_different_configs_refuse_before_anything_starts(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text((REPO / CONFIG).read_text().replace("lock_timeout_s = 1.0",
                                                         "lock_timeout_s = 2.0"))
    rank = [sys.executable, "-m", "scripts.cli", "launch", "--config"]
    done = subprocess.run([str(MPIEXEC), "-n", "1", *rank, CONFIG, ":", "-n", "1", *rank,
                           str(other)], cwd=REPO, env=env(tmp_path), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode != 0
    assert out.count("hosts west read a config that differs from host east's") == 2, out
    assert "Traceback" not in out, out
    runs = tmp_path / "runs"
    assert not runs.exists() or not [f for f in os.listdir(runs) if f.endswith(".json")]


@pytest.mark.parametrize("refused, message", [
    (("--duration", "-1"), "argument --duration: '-1'"),
    (("--config", "/no/such/config.toml"), "/no/such/config.toml"),
])
def test_a_host_that_fails_before_starting_ends_the_job_on_every_host(
        tmp_path: Path, refused: tuple[str, ...], message: str) -> None:
    """One host's command fails before it starts MPI (its arguments or its config: hosts'
    file systems differ); the other, already waiting in MPI for it, must end too, promptly,
    naming it (MPICH's launcher alone would wait for it for good)."""
    rank = [sys.executable, "-m", "scripts.cli", "launch", "--config", CONFIG]
    other = [*rank, *refused] if refused[0] != "--config" else [*rank[:-1], refused[1]]
    done = subprocess.run([str(MPIEXEC), "-n", "1", *rank, "--duration", "5", ":", "-n", "1",
                           *other], cwd=REPO, env=env(tmp_path), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode != 0
    assert message in out, out
    assert out.count("host west could not start (its error is printed above)") == 1, out
    assert "Traceback" not in out and "BAD TERMINATION" not in out, out
    runs = tmp_path / "runs"
    assert not runs.exists() or not [f for f in os.listdir(runs) if f.endswith(".json")]


def test_a_host_whose_doorbell_address_does_not_resolve_ends_the_job_on_every_host(
        tmp_path: Path) -> None:
    """The fabric's doorbell socket is made before the hosts meet: a host-only problem there
    (its $XPMOVE_FABRIC_ADDRESS, or its own name, does not resolve) ends every host at once,
    naming it, instead of leaving the others inside the fabric's first collective."""
    rank = [sys.executable, "-m", "scripts.cli", "launch", "--config", CONFIG, "--duration", "5"]
    done = subprocess.run([str(MPIEXEC), "-n", "1", *rank, ":", "-n", "1", "-env",
                           "XPMOVE_FABRIC_ADDRESS", "no-such-host.invalid", *rank], cwd=REPO,
                          env=env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode != 0
    assert "xpmove launch: host west: its fabric's doorbell socket:" in out, out
    assert out.count("host west could not start (its error is printed above)") == 2, out
    assert "Traceback" not in out and "BAD TERMINATION" not in out, out
    runs = tmp_path / "runs"
    assert not runs.exists() or not [f for f in os.listdir(runs) if f.endswith(".json")]
