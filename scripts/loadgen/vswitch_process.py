"""The virtual switch child (scripts/loadgen/vswitch.py) as the bench runs it: started, its
port read from the line it prints once ready, stopped by EOF on its stdin, its counters read
from its last line, always reaped."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from scripts.loadgen.benchcore import BenchError
from scripts.loadgen.options import SWITCH_TIMEOUT_S


class VSwitchProcess:
    """The virtual switch child: started and stopped (always reaped) by the bench."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.final: dict = {}

    def start(self) -> VSwitchProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "scripts.loadgen.vswitch"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = _read_line(self.proc, SWITCH_TIMEOUT_S)
        parts = line.split()
        if len(parts) != 4 or parts[:2] != ["vswitch", "listening"]:
            self.stop()
            raise BenchError(f"vswitch did not start (said {line!r}, exit {self.proc.poll()})")
        self.port = int(parts[3])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> dict:
        """EOF on its stdin stops it; it answers with its counters. Always reaped."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.final
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            line = _read_line(proc, SWITCH_TIMEOUT_S)
            try:
                self.final = json.loads(line) if line else {}
            except ValueError:
                self.final = {"unparsed": line}
            proc.wait(SWITCH_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        return self.final


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout, waiting at most `timeout` (never blocks past it)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in out:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace").strip()
