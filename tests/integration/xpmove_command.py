"""`xpmove` run as a command by a test: with its own run registry (under the test's
tmp_path), on a tiny config, and its process group reaped, with every IPC name of its run,
whatever the test did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from hypervisor.names import RunRegistry
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


def reap_group(proc: subprocess.Popen, tmp_path: Path) -> None:
    """Whatever the test did: nothing of the group outlives it, and no IPC name either (a
    launcher killed here cannot unlink its run's names: the sweep does, as `xpmove cleanup`)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(TIMEOUT)
    RunRegistry(str(tmp_path / "runs")).sweep()
