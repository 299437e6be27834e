"""The hypervisor's children as it keeps them: a spawned process with its control channel and
lifecycle state (`Child`), one partition's pair of pipes to the adapter (`Pipes`), and the
error the machine raises (`MachineError`); how a child is started (`spawn`), awaited until it
is ready (`await_ready`) and reaped (`reap`). Shared by the machine (start, stop) and its
supervision (hypervisor/supervision.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hypervisor.boot import Boot
from hypervisor.control import Channel, ControlError
from hypervisor.lifecycle import ProcessEvent, ProcessState, next_state

STOP_TIMEOUT_S = 5.0
KILL_AFTER_S = 2.0  # a child that has not exited this long after being asked is killed
CALL_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 30.0  # per child, from the moment it was spawned ...
STARTUP_PER_CHILD_S = 0.5  # ... plus this for every child started with it (they share CPUs)
# glibc (2.36 here) copies blocks of 2 KiB and more with `rep movsb`, which on this machine's
# AMD cores runs about 13x slower when the destination lies 1 to 15 bytes after the source
# modulo 4 KiB (1 MiB: 300 us against 23; 64 KiB: 19 against 1.4). A record's payload lands
# at such a distance from the sender's slot in some layouts (the adapter's Fig 11 copy, a
# driver's), and so does a fill from a reference pattern. The vector loop glibc uses below the
# threshold copies as fast at every distance (22.7 us a MiB), so every child runs with the
# threshold out of reach (benchmarks/README.md, "Copies 4 KiB apart"). A value the
# environment already gives wins.
REP_MOVSB_TUNABLE = "glibc.cpu.x86_rep_movsb_threshold"
REP_MOVSB_OFF = 2**31 - 1


class MachineError(RuntimeError):
    """The machine cannot start or a child broke the control protocol."""


@dataclass
class Child:
    """A process the hypervisor spawned and supervises."""

    name: str
    network_id: int | None  # None for the adapter
    proc: subprocess.Popen
    channel: Channel
    state: ProcessState = ProcessState.STARTING
    spawned_at: float = field(default_factory=time.monotonic)
    exit_code: int | None = None  # set once its exit has been seen
    report: dict = field(default_factory=dict)  # its `finished` event: how the program ended
    # One command in flight per child: the status thread's `stats` and the main thread's calls
    # take turns, so neither reads (and drops) the other's reply. Never held while restarting.
    call_lock: threading.Lock = field(default_factory=threading.Lock)
    exited_at: float | None = None  # time.monotonic() when supervision saw it exit

    def step(self, event: ProcessEvent) -> None:
        self.state = next_state(self.state, event)


@dataclass
class Pipes:
    """One partition's two pipes to the adapter: requests one way, replies the other."""

    request_r: int
    request_w: int
    reply_r: int
    reply_w: int

    @classmethod
    def open(cls) -> Pipes:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        return cls(request_r, request_w, reply_r, reply_w)

    def adapter_ends(self) -> tuple[int, int]:
        return self.request_r, self.reply_w

    def driver_ends(self) -> tuple[int, int]:
        return self.request_w, self.reply_r

    def close(self) -> None:
        for fd in (self.request_r, self.request_w, self.reply_r, self.reply_w):
            os.close(fd)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` for a child, with REP_MOVSB_TUNABLE added to GLIBC_TUNABLES unless it is set
    there already (pure; glibc elsewhere ignores a tunable it does not know)."""
    env = dict(environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.split("=", 1)[0] == REP_MOVSB_TUNABLE for t in tunables):
        env["GLIBC_TUNABLES"] = ":".join([*tunables, f"{REP_MOVSB_TUNABLE}={REP_MOVSB_OFF}"])
    return env


def spawn(module: str, boot: Callable[[int], Boot], fds: list[int], name: str,
          network_id: int | None) -> Child:
    """Start `python -m module --boot JSON`; `boot(control_fd)` builds its boot block."""
    parent_end, child_end = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--boot", boot(child_end.fileno()).to_json()],
        pass_fds=[*fds, child_end.fileno()],
        stdin=subprocess.DEVNULL,
        env=child_environment(os.environ),
        # its own process group: a signal meant for the job (a terminal's Ctrl-C, mpiexec
        # forwarding SIGTERM with killpg) reaches the hypervisor, which stops the children
        # in order; killed with it, the adapter would be restarted mid-shutdown and a
        # thread waiting on it would wait. A child still exits if the hypervisor dies (its
        # control channel closes).
        process_group=0,
    )
    child_end.close()
    return Child(name, network_id, proc, Channel(parent_end))


def await_ready(children: list[Child]) -> None:
    """Each child has its own deadline, from its spawn, longer when many start together."""
    allowed = STARTUP_TIMEOUT_S + STARTUP_PER_CHILD_S * len(children)
    for child in children:
        deadline = child.spawned_at + allowed
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MachineError(f"{child.name} not ready within {allowed:g} s of its "
                                   f"start ({len(children)} processes starting)")
            try:
                msg = child.channel.receive(timeout=min(remaining, 0.5))
            except ControlError:
                raise MachineError(
                    f"{child.name} exited during start-up (code {child.proc.poll()})"
                ) from None
            if msg is not None and msg.get("event") == "ready":
                child.step(ProcessEvent.READY)
                break


def reap(procs: list[subprocess.Popen]) -> None:
    """Wait for exit; SIGTERM the stragglers, then SIGKILL; always reap (no zombies). Bounded:
    STOP_TIMEOUT_S for the exit, KILL_AFTER_S for SIGTERM (a SIGSTOPped child ignores it)."""
    for step in ("wait", "terminate", "kill"):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for p in alive:
            if step != "wait":
                getattr(p, step)()
        deadline = time.monotonic() + (KILL_AFTER_S if step == "terminate" else STOP_TIMEOUT_S)
        for p in alive:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
