"""Supervision that notices, startup and shutdown (issue 12, items 5, 6, 8, 10): real
processes, deadlines polled, everything started is reaped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import TIMEOUT

REPO = Path(__file__).resolve().parents[2]


def tiny_config(path: Path, n: int = 2) -> Path:
    path.write_text("".join(f'[[partition]]\nname = "p{i}"\nnetwork_id = {i}\n'
                            f'memory = "1MiB"\nreceive_area = "256KiB"\n\n'
                            for i in range(1, n + 1)))
    return path


def shm_names(prefix: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if prefix in n]


def xpmove(args: list[str], tmp_path: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "XPMOVE_RUN_DIR": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "scripts.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def reap_group(proc: subprocess.Popen) -> None:
    """Whatever the test did: nothing of the group outlives it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(TIMEOUT)


# -- item 8: Ctrl-C in a terminal ----------------------------------------------------------------
def test_ctrl_c_to_the_process_group_stops_launch_cleanly(tmp_path):
    proc = xpmove(["launch", "--duration", "30", "--config",
                   str(tiny_config(tmp_path / "tiny.toml"))], tmp_path, start_new_session=True)
    try:
        assert proc.stdout is not None
        prefix = None
        deadline = time.monotonic() + 30
        for line in proc.stdout:  # blocking reads end with launch's output (killed at worst)
            if m := re.search(r"machine up: run (xpm-[0-9a-f]+)", line):
                prefix = m.group(1)
            if prefix and re.match(r"\[\s*[\d.]+-\s*[\d.]+ s\]", line):
                break  # traffic runs
            assert time.monotonic() < deadline, "no interval line within 30 s"
        assert prefix, "no 'machine up' line"
        interrupted_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("launch still running 10 s after Ctrl-C")
        took = time.monotonic() - interrupted_at
        assert proc.returncode == 130, (proc.returncode, err[-2000:])
        assert "Traceback" not in err, err[-3000:]
        assert "interrupted" in out
        assert took < 10
        assert not shm_names(prefix)
    finally:
        reap_group(proc)
