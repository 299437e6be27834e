"""The hypervisor's machine: segment, names, pipes, and the adapter and partition processes.

One owner for OS resources (DESIGN.md): the Machine creates every shared-memory segment and
semaphore of a run, records each name in the run registry *before* creating it, and unlinks
them all on every exit path (normal stop, exception, Ctrl-C/SIGTERM via the caller's
try/finally, a child's crash). The parent closes its copies of the children's pipe ends, so a
partition's death is EOF at the adapter and the adapter's death is EOF at the drivers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import posix_ipc

from hypervisor.config import MachineConfig
from hypervisor.control import Channel, ControlError
from hypervisor.layout import SegmentLayout, plan_segment
from hypervisor.lifecycle import ProcessEvent, ProcessState, next_state
from hypervisor.memory import PhysicalMemory
from hypervisor.names import RunRegistry, ipc_name, new_run_prefix, unlink_quietly

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 30.0


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
    exit_code: int | None = None

    def step(self, event: ProcessEvent) -> None:
        self.state = next_state(self.state, event)


@dataclass
class Names:
    segment: str
    locks: dict[int, str] = field(default_factory=dict)
    bells: dict[int, str] = field(default_factory=dict)

    def semaphores(self) -> list[str]:
        return [*self.locks.values(), *self.bells.values()]


class Machine:
    def __init__(self, config: MachineConfig, registry: RunRegistry | None = None):
        self.config = config
        self.layout: SegmentLayout = plan_segment(config)
        self.registry = registry or RunRegistry()
        self.prefix = new_run_prefix()
        ids = [p.network_id for p in config.partitions]
        self.names = Names(
            segment=ipc_name(self.prefix, "mem"),
            locks={i: ipc_name(self.prefix, f"lock-{i}") for i in ids},
            bells={i: ipc_name(self.prefix, f"bell-{i}") for i in ids},
        )
        self.memory: PhysicalMemory | None = None
        self._semaphores: list[posix_ipc.Semaphore] = []
        self.adapter: Child | None = None
        self.partitions: dict[int, Child] = {}
        self._started = False
        self._stopped = False
        self._call_id = 0

    # -- start ---------------------------------------------------------------------------
    def start(self) -> Machine:
        """Create memory and names, spawn the adapter and every partition, await readiness."""
        self._started = True
        try:
            self._create_resources()
            self._spawn_all()
            self._await_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Machine:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _create_resources(self) -> None:
        self.registry.sweep()  # names a killed earlier run left behind
        self.registry.register(self.prefix, os.getpid())
        self.registry.add(self.prefix, shm=[self.names.segment], sem=self.names.semaphores())
        self.memory = PhysicalMemory.create(self.names.segment, self.layout.total_size)
        for name in self.names.locks.values():
            self._semaphores.append(posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 1))
        for name in self.names.bells.values():
            self._semaphores.append(posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0))

    def _common_boot(self) -> dict:
        return {
            "segment": self.names.segment,
            "layout": self.layout.to_dict(),
            "locks": self.names.locks,
            "bells": self.names.bells,
        }

    def _spawn(self, module: str, boot: dict, fds: list[int], name: str,
               network_id: int | None) -> Child:
        parent_end, child_end = socket.socketpair()
        boot = {**boot, "control_fd": child_end.fileno()}
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--boot", json.dumps(boot)],
            pass_fds=[*fds, child_end.fileno()],
            stdin=subprocess.DEVNULL,
        )
        child_end.close()
        return Child(name, network_id, proc, Channel(parent_end))

    def _spawn_all(self) -> None:
        common = self._common_boot()
        pipes: dict[int, tuple[int, int, int, int]] = {}
        try:
            for p in self.config.partitions:
                req_r, req_w = os.pipe()
                rep_r, rep_w = os.pipe()
                pipes[p.network_id] = (req_r, req_w, rep_r, rep_w)
            adapter_boot = {
                **common,
                "lock_timeout_s": self.config.lock_timeout_s,
                "connections": [
                    {"network_id": nid, "request_fd": fds[0], "reply_fd": fds[3]}
                    for nid, fds in pipes.items()
                ],
            }
            adapter_fds = [fd for fds in pipes.values() for fd in (fds[0], fds[3])]
            self.adapter = self._spawn("adapter.server", adapter_boot, adapter_fds, "adapter", None)
            for p in self.config.partitions:
                _, req_w, rep_r, _ = pipes[p.network_id]
                boot = {**common, "network_id": p.network_id, "request_fd": req_w,
                        "reply_fd": rep_r, "cpus": list(p.cpus) if p.cpus else None}
                self.partitions[p.network_id] = self._spawn(
                    "partitions.main", boot, [req_w, rep_r], p.name, p.network_id)
        finally:
            for fds in pipes.values():  # children have their copies; EOF must mean death
                for fd in fds:
                    os.close(fd)

    def children(self) -> list[Child]:
        return ([self.adapter] if self.adapter else []) + list(self.partitions.values())

    def _await_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for child in self.children():
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MachineError(f"{child.name} not ready within {STARTUP_TIMEOUT_S} s")
                try:
                    msg = child.channel.receive(timeout=min(remaining, 0.5))
                except ControlError:
                    raise MachineError(
                        f"{child.name} exited during start-up (code {child.proc.poll()})"
                    ) from None
                if msg is not None and msg.get("event") == "ready":
                    child.step(ProcessEvent.READY)
                    break

    # -- talking to children -------------------------------------------------------------
    def call(self, network_id: int, message: dict, timeout: float = CALL_TIMEOUT_S) -> dict:
        """Send a command to a partition and return its reply."""
        return self._call(self.partitions[network_id], message, timeout)

    def _call(self, child: Child, message: dict, timeout: float) -> dict:
        """One command, one reply. Replies carry the command's id, so a reply left over from
        an interrupted call (Ctrl-C mid-call) is recognised and dropped, never mistaken."""
        self._call_id += 1
        call_id = self._call_id
        deadline = time.monotonic() + timeout
        try:
            child.channel.send({**message, "id": call_id})
            while True:
                reply = child.channel.receive(max(0.0, deadline - time.monotonic()))
                if reply is None:
                    raise MachineError(f"{child.name} did not answer {message.get('cmd')!r} "
                                       f"within {timeout} s")
                if reply.pop("id", None) == call_id:
                    return reply
        except ControlError as exc:
            self.poll()
            raise MachineError(f"{child.name}: {exc}") from None

    def adapter_stats(self, timeout: float = CALL_TIMEOUT_S) -> dict:
        if self.adapter is None:
            raise MachineError("no adapter")
        reply = self._call(self.adapter, {"cmd": "stats"}, timeout)
        return reply["stats"]

    def pid(self, network_id: int | None = None) -> int:
        child = self.adapter if network_id is None else self.partitions[network_id]
        assert child is not None
        return child.proc.pid

    # -- supervision ---------------------------------------------------------------------
    def poll(self) -> list[Child]:
        """Reap children that exited; return those that died without being asked to."""
        died = []
        for child in self.children():
            code = child.proc.poll()
            if code is None or child.state in (ProcessState.STOPPED, ProcessState.DEAD):
                continue
            child.exit_code = code
            was_running = child.state is not ProcessState.STOPPING
            child.step(ProcessEvent.EXITED)
            if was_running:
                died.append(child)
        return died

    # -- stop ----------------------------------------------------------------------------
    def stop(self) -> dict[int, dict]:
        """Stop every child and unlink every name; idempotent. Returns final partition stats."""
        if self._stopped:
            return {}
        self._stopped = True
        final: dict[int, dict] = {}
        for nid, child in self.partitions.items():
            if child.state is ProcessState.RUNNING:
                try:
                    reply = self._call(child, {"cmd": "stop"}, STOP_TIMEOUT_S)
                    final[nid] = reply.get("stats", {})
                except MachineError:
                    pass
        if self.adapter is not None and self.adapter.state is ProcessState.RUNNING:
            try:  # the adapter goes first, so partitions leaving is not news to it
                self.adapter.channel.send({"cmd": "stop"})
                self.adapter.proc.wait(STOP_TIMEOUT_S)
            except (ControlError, subprocess.TimeoutExpired):
                pass
        children = self.children()
        for child in children:
            if child.state in (ProcessState.STARTING, ProcessState.RUNNING):
                child.step(ProcessEvent.STOP)
            try:
                child.channel.close()  # EOF tells the child to exit
            except OSError:
                pass
        _reap([c.proc for c in children])
        self.poll()
        self._release_names()
        return final

    def _release_names(self) -> None:
        for sem in self._semaphores:
            try:
                sem.close()
            except posix_ipc.ExistentialError:
                pass
        self._semaphores.clear()
        if self.memory is not None:
            self.memory.close()
        if self._started:
            unlink_quietly(shm=[self.names.segment], sem=self.names.semaphores())
            self.registry.remove(self.prefix)


def _reap(procs: list[subprocess.Popen]) -> None:
    """Wait for exit; SIGTERM the stragglers, then SIGKILL; always reap (no zombies)."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for signal_name in ("wait", "terminate", "kill"):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for p in alive:
            if signal_name != "wait":
                getattr(p, signal_name)()
        for p in alive:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
