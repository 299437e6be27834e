"""The examples in `examples/` and `xpmove run` itself, as a user runs them: a real
`xpmove run` subprocess per test (its own run registry under tmp_path), exit code and report
checked, and no IPC name of the run left in /dev/shm afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 60
RUN_PREFIX = re.compile(r"machine up: run (xpm-[0-9a-f]{8})")


def xpmove_run(config: Path, cwd: Path, tmp_path: Path, timeout: float = RUN_TIMEOUT_S,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`xpmove run --config CONFIG --timeout T` in `cwd`; checks that the run's names are gone."""
    env = {**os.environ, "XPMOVE_RUN_DIR": str(tmp_path / "runs"),
           "COLUMNS": "250",  # the report is one line per partition, not wrapped at 80
           **(extra_env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "run", "--config", str(config),
         "--timeout", str(timeout)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout + 30)
    output = proc.stdout + proc.stderr
    started = RUN_PREFIX.search(output)
    assert started, f"no 'machine up' line in the output:\n{output}"
    left = [n for n in os.listdir("/dev/shm") if started.group(1) in n]
    assert not left, f"IPC names of run {started.group(1)} left behind: {left}"
    records = list((tmp_path / "runs").iterdir())
    assert not records, f"run registry records left behind: {records}"
    return proc


def partitions(config: Path) -> list[tuple[str, int]]:
    with open(config, "rb") as f:
        return [(p["name"], p["network_id"]) for p in tomllib.load(f)["partition"]]


@pytest.mark.parametrize("example", ["pingpong", "pipeline", "fanout", "loans"])
def test_example_runs_and_every_program_returns(example: str, tmp_path: Path) -> None:
    config = REPO / "examples" / f"{example}.toml"
    proc = xpmove_run(config, REPO, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for name, nid in partitions(config):
        assert f"{name} (ID {nid}): returned" in proc.stdout, output
    assert "every program returned" in proc.stdout
    if example == "loans":
        assert "consumer: 400 frames, each once and in order" in proc.stdout, output
    if example == "pingpong":
        for flow in ("fig11", "fig12", "lease"):
            assert re.search(rf"^{flow}: .*p50 [0-9.]+ us, p99 [0-9.]+ us", proc.stdout,
                             re.MULTILINE), output


@pytest.mark.parametrize("mode", ["fill", "none", "stream:65536"])
def test_the_run_cost_benchmark_reports_each_side_in_each_mode(mode: str, tmp_path: Path
                                                               ) -> None:
    """benchmarks/run_cost.py, a few runs: both sides report their CPU a run and its split
    (a bad packet would make the receiver raise, and the run fail)."""
    proc = xpmove_run(REPO / "benchmarks" / "run_cost.toml", REPO, tmp_path, extra_env={
        "XPMOVE_RUN_COST": mode, "XPMOVE_RUN_COST_RUNS": "20",
        "XPMOVE_RUN_COST_PACKETS": "16", "XPMOVE_RUN_COST_SIZE": "4096"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for side in ("sender", "receiver"):
        assert re.search(rf"^{side} \({re.escape(mode)}, 20 runs of 16 x 4096 B\): [0-9.]+ us "
                         r"CPU a run, work [0-9.]+, the lease path [0-9.]+$", proc.stdout,
                         re.MULTILINE), output


def write_machine(tmp_path: Path, program: str,
                  partitions: tuple[tuple[str, int, str], ...] = (("one", 1, "main"),
                                                                  ("two", 2, "main"))) -> Path:
    """A config in tmp_path of 1 MiB partitions (256 KiB receive areas), one per (name,
    network ID, function), each running `prog:function` of `program` (written, dedented, to
    tmp_path/prog.py)."""
    (tmp_path / "prog.py").write_text(textwrap.dedent(program))
    config = tmp_path / "machine.toml"
    config.write_text("".join(
        f'[[partition]]\nname = "{name}"\nnetwork_id = {nid}\nmemory = "1MiB"\n'
        f'receive_area = "256KiB"\nprogram = "prog:{function}"\n\n'
        for name, nid, function in partitions))
    return config


def test_a_program_that_raises_fails_the_run(tmp_path: Path) -> None:
    config = write_machine(tmp_path, """
        def main(port):
            if port.network_id == 2:
                raise ValueError("bad input 42")
    """)
    proc = xpmove_run(config, tmp_path, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "one (ID 1): returned" in proc.stdout
    assert "two (ID 2): raised ValueError: bad input 42" in proc.stdout
    assert "not every program returned" in proc.stdout


def test_timeout_stops_a_program_that_never_returns(tmp_path: Path) -> None:
    config = write_machine(tmp_path, """
        import time

        def main(port):
            if port.network_id == 2:
                while True:  # ignores port.stop: the machine must still end it
                    time.sleep(0.05)
    """)
    proc = xpmove_run(config, tmp_path, tmp_path, timeout=1)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "one (ID 1): returned" in proc.stdout
    assert re.search(r"two \(ID 2\): .*stopped", proc.stdout), proc.stdout


def test_the_loaded_floor_benchmark_prints_each_size_alone_and_at_once() -> None:
    """benchmarks/loaded_floor.py, one short repeat: the floor alone and one per CPU at once."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/loaded_floor.py", "--sizes", "1024,65536", "--repeats", "1",
         "--seconds", "0.02", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for size in (1024, 65536):
        assert re.search(rf"^{size} B: alone [0-9,]+; \d+ at once [0-9,]+( / [0-9,]+)*: "
                         rf"[0-9.]+% of alone$", proc.stdout, re.MULTILINE), proc.stdout
        assert re.search(rf"^{size} B: at once / alone, median of 1: [0-9.]+% \(range ",
                         proc.stdout, re.MULTILINE), proc.stdout
