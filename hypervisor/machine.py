"""The hypervisor's machine: segment, names, pipes, and the adapter and partition processes.

One owner for OS resources (DESIGN.md): the Machine creates every shared-memory segment and
semaphore of a run, records each name in the run registry *before* creating it, and unlinks
them all on every exit path (normal stop, exception, Ctrl-C/SIGTERM via the caller's
try/finally, a child's crash). The parent closes its copies of the children's pipe ends, so a
partition's death is EOF at the adapter and the adapter's death is EOF at the drivers.

Two parts of Machine live apart, one idea each: talking to the children over their control
channels (`Calls`, hypervisor/calls.py) and supervising them (`Supervision`,
hypervisor/supervision.py). A child is spawned, awaited and reaped by hypervisor/children.py.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import posix_ipc

from hypervisor.boot import AdapterBoot, Connection, PartitionBoot
from hypervisor.calls import Calls
from hypervisor.children import (
    CALL_TIMEOUT_S,
    KILL_AFTER_S,
    STOP_TIMEOUT_S,
    Child,
    MachineError,
    Pipes,
    await_ready,
    reap,
    spawn,
)
from hypervisor.config import MachineConfig, PartitionConfig
from hypervisor.control import ControlError
from hypervisor.gateway import Gateway
from hypervisor.layout import SegmentLayout, plan_segment
from hypervisor.lifecycle import Outcome, ProcessEvent, ProcessState
from hypervisor.memory import PhysicalMemory
from hypervisor.names import RunRegistry, ipc_name, new_run_prefix, unlink_quietly
from hypervisor.room import check_shm_room, preallocation_error, shm_free_bytes
from hypervisor.status import StatusServer, machine_status, open_lock_reader
from hypervisor.supervision import Supervision

__all__ = ["Child", "Machine", "MachineError", "Pipes", "check_shm_room", "preallocation_error",
           "shm_free_bytes"]

WAIT_POLL_S = 0.2  # Machine.wait looks at the children at least this often
# The children, named by module: the platform starts them but never imports them (layers).
ADAPTER_MODULE = "adapter.server"
PARTITION_MODULE = "partitions.main"


def _startup_error(prefix: str, exc: BaseException) -> MachineError:
    """Any failure to start, as one line naming the cause (and the fix, where there is one)."""
    if isinstance(exc, MachineError):
        return MachineError(f"run {prefix} could not start: {exc}")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return MachineError(f"run {prefix} could not start: too many open files (the limit is "
                            f"{soft}; raise it with `ulimit -n`, or use fewer partitions)")
    return MachineError(f"run {prefix} could not start: {type(exc).__name__}: {exc}")


@dataclass
class Names:
    segment: str
    locks: dict[int, str] = field(default_factory=dict)
    bells: dict[int, str] = field(default_factory=dict)
    recalls: dict[int, str] = field(default_factory=dict)  # per partition: "give your lease back"
    # per partition living here: "room was freed in your ring" (its receiver posts it for the
    # senders waiting, partitions/waiting.py); none for a proxy of another host's partition
    rooms: dict[int, str] = field(default_factory=dict)

    def semaphores(self) -> list[str]:
        return [*self.locks.values(), *self.bells.values(), *self.recalls.values(),
                *self.rooms.values()]


class Machine(Calls, Supervision):
    """A running machine: the segment, the adapter and one process per partition.

    `with Machine(load_config("my.toml")) as m: outcomes = m.wait(timeout=60)` starts it, runs
    every partition's program until all return (or the timeout), and on leaving the block stops
    every process and unlinks every IPC name, whatever happened. `call(network_id, message)`
    sends a command to a partition's program (see `Port.on_command`); `poll()` supervises
    (restarts per the config's policy); `outcomes()` says how each program ended.
    """

    def __init__(self, config: MachineConfig, registry: RunRegistry | None = None,
                 gateway: Gateway | None = None):
        self.config = config
        # partitions living on other hosts: no process here, their driver is the gateway's
        self.gateway = gateway
        proxies = gateway.network_ids if gateway is not None else frozenset()
        self.local = tuple(p for p in config.partitions if p.network_id not in proxies)
        self.layout: SegmentLayout = plan_segment(config)
        self.registry = registry or RunRegistry()
        self.prefix = new_run_prefix()
        ids = [p.network_id for p in config.partitions]
        self.names = Names(
            segment=ipc_name(self.prefix, "mem"),
            locks={i: ipc_name(self.prefix, f"lock-{i}") for i in ids},
            bells={i: ipc_name(self.prefix, f"bell-{i}") for i in ids},
            recalls={i: ipc_name(self.prefix, f"recall-{i}") for i in ids},
            rooms={p.network_id: ipc_name(self.prefix, f"room-{p.network_id}")
                   for p in self.local},
        )
        self.memory: PhysicalMemory | None = None
        self._semaphores: list[posix_ipc.Semaphore] = []
        self.adapter: Child | None = None
        self.partitions: dict[int, Child] = {}
        self._started = False
        self._stopped = False
        self._call_ids = itertools.count(1)  # next() is atomic: ids stay unique across threads
        self._owner = threading.current_thread()  # supervision runs on this thread only
        self._status: StatusServer | None = None
        self.started_at: float | None = None  # time.time() of start(), for `xpmove status`
        self.events: list[str] = []  # what supervision did, for the operator
        self.restarts: dict[int | str, int] = {}
        self.retired: set[int] = set()  # partitions that ended and will not be restarted
        self._stopping = False  # stop() began: nothing is restarted any more
        self._init_supervision()

    # -- start ---------------------------------------------------------------------------
    def start(self) -> Machine:
        """Create memory and names, spawn the adapter and every partition, await readiness.

        Every failure to start is a MachineError naming the cause, raised after every child
        was reaped and every name unlinked; /dev/shm's room is checked before anything is
        created."""
        try:
            check_shm_room(self.layout.total_size, shm_free_bytes(),
                           sum(p.memory_size for p in self.config.partitions))
        except MachineError as exc:
            raise MachineError(f"run {self.prefix} could not start: {exc}") from None
        self._started = True
        self._owner = threading.current_thread()
        self.started_at = time.time()
        try:
            self._create_resources()
            self._spawn_all()
            await_ready(self.children())
            self._start_status()
        except (MachineError, OSError, posix_ipc.Error, ValueError) as exc:
            self.stop()
            raise _startup_error(self.prefix, exc) from None
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
        try:
            self.memory = PhysicalMemory.create(self.names.segment, self.layout.total_size)
        except OSError as exc:
            raise preallocation_error(exc, self.layout.total_size, shm_free_bytes()) from None
        for name in self.names.locks.values():
            self._semaphores.append(posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 1))
        for name in [*self.names.bells.values(), *self.names.recalls.values(),
                     *self.names.rooms.values()]:
            self._semaphores.append(posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0))

    def _start_status(self) -> None:
        """Serve `xpmove status` on <registry dir>/<prefix>.sock (hypervisor/status.py). A
        socket that cannot be made costs the live view, never the run: noted in `events`."""
        path = self.registry.status_socket_path(self.prefix)
        self.registry.record_status_socket(
            self.prefix, path, started=self.started_at or time.time(),
            partitions=[p.name for p in self.config.partitions])
        value_of, close_locks = open_lock_reader(self.names.locks)
        server = StatusServer(path, lambda: machine_status(self, value_of), on_stop=close_locks)
        try:
            server.start()
        except OSError as exc:
            server.stop()
            self.events.append(f"status socket not served: {exc}")
            return
        self._status = server

    def _stop_status(self) -> None:
        server, self._status = self._status, None
        if server is not None:
            server.stop()

    def _boot_names(self) -> dict:
        return {"segment": self.names.segment, "layout": self.layout,
                "locks": self.names.locks, "bells": self.names.bells,
                "recalls": self.names.recalls, "rooms": self.names.rooms}

    def _spawn_adapter(self, pipes: dict[int, Pipes]) -> Child:
        connections = tuple(Connection(nid, p.request_r, p.reply_w) for nid, p in pipes.items())

        def boot(control_fd: int) -> AdapterBoot:
            return AdapterBoot(**self._boot_names(), control_fd=control_fd,
                               lock_timeout_s=self.config.lock_timeout_s,
                               connections=connections, retired=tuple(sorted(self.retired)),
                               run_prefix=self.prefix, run_dir=self.registry.directory)

        fds = [fd for p in pipes.values() for fd in p.adapter_ends()]
        return spawn(ADAPTER_MODULE, boot, fds, "adapter", None)

    def _spawn_partition(self, p: PartitionConfig, pipes: Pipes) -> Child:
        def boot(control_fd: int) -> PartitionBoot:
            return PartitionBoot(**self._boot_names(), control_fd=control_fd,
                                 network_id=p.network_id, request_fd=pipes.request_w,
                                 reply_fd=pipes.reply_r, cpus=p.cpus, program=p.program)

        return spawn(PARTITION_MODULE, boot, list(pipes.driver_ends()), p.name, p.network_id)

    def _spawn_all(self) -> None:
        pipes: dict[int, Pipes] = {}
        try:
            for p in self.config.partitions:
                pipes[p.network_id] = Pipes.open()
            self.adapter = self._spawn_adapter(pipes)
            self._connect_gateway(pipes)
            for p in self.local:
                self.partitions[p.network_id] = self._spawn_partition(p, pipes[p.network_id])
        finally:
            for ends in pipes.values():  # children have their copies; EOF must mean death
                ends.close()

    def _connect_gateway(self, pipes: dict[int, Pipes]) -> None:
        """Hand the proxies' driver ends to the gateway (its own copies: ours get closed)."""
        if self.gateway is None:
            return
        for nid in sorted(self.gateway.network_ids):
            request_w, reply_r = pipes[nid].driver_ends()
            self.gateway.connect(nid, os.dup(request_w), os.dup(reply_r))

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and self.adapter is not None

    def children(self) -> list[Child]:
        return ([self.adapter] if self.adapter else []) + list(self.partitions.values())

    # -- talking to children (the calls themselves: hypervisor/calls.py) -----------------
    def outcomes(self) -> dict[int, Outcome]:
        """How each partition's program ended (or that it is still running), by network ID."""
        result = {}
        for nid, child in self.partitions.items():
            report = child.report
            if child.state is ProcessState.FINISHED:
                outcome = Outcome(child.name, nid, report.get("outcome", "returned"),
                                  report.get("error", ""), report.get("message", ""),
                                  child.exit_code, report.get("traceback", ""))
            elif child.state is ProcessState.DEAD:
                outcome = Outcome(child.name, nid, "killed", exit_code=child.exit_code)
            elif child.state in (ProcessState.STOPPING, ProcessState.STOPPED):
                raised = report.get("outcome") == "raised"
                outcome = Outcome(child.name, nid, "raised" if raised else "stopped",
                                  report.get("error", ""), report.get("message", ""),
                                  child.exit_code, report.get("traceback", ""))
            else:
                outcome = Outcome(child.name, nid, "running")
            result[nid] = outcome
        return result

    def wait(self, timeout: float | None = None) -> dict[int, Outcome]:
        """Supervise until every partition program has ended (returned, raised, or died and
        was not restarted), or `timeout` seconds pass; how each ended, by network ID (only
        partitions that have a program: the others run nothing until the machine stops)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = (ProcessState.FINISHED, ProcessState.DEAD, ProcessState.STOPPED)
        programs = {p.network_id for p in self.config.partitions if p.program is not None}
        while True:
            self.poll(liveness=True)  # a hung adapter is replaced, not waited on forever
            left = WAIT_POLL_S if deadline is None else min(WAIT_POLL_S,
                                                             deadline - time.monotonic())
            if left <= 0 or all(c.state in ended and c.exit_code is not None
                                for nid, c in self.partitions.items() if nid in programs):
                return {nid: o for nid, o in self.outcomes().items() if nid in programs}
            channels = [c.channel.sock for c in self.partitions.values()
                        if c.state is ProcessState.RUNNING]
            if channels:
                select.select(channels, [], [], left)  # an event, or the next look
            else:
                time.sleep(left)  # only exits to reap: look again shortly

    def adapter_stats(self, timeout: float = CALL_TIMEOUT_S) -> dict:
        if self.adapter is None:
            raise MachineError("no adapter")
        reply = self._call(self.adapter, {"cmd": "stats"}, timeout)
        return reply["stats"]

    def kill(self, network_id: int | None = None, sig: int = signal.SIGKILL) -> None:
        """Signal a child (the adapter by default); a no-op if it was already reaped, so a
        recycled pid is never hit."""
        child = self.adapter if network_id is None else self.partitions[network_id]
        assert child is not None
        child.proc.send_signal(sig)

    def pid(self, network_id: int | None = None) -> int:
        child = self.adapter if network_id is None else self.partitions[network_id]
        assert child is not None
        return child.proc.pid

    # -- supervision: hypervisor/supervision.py (poll, check_adapter, restart_*) ----------

    # -- stop ----------------------------------------------------------------------------
    def stop(self) -> dict[int, Outcome]:
        """Stop every child and unlink every name; idempotent, bounded (a child that does not
        leave in time, even a SIGSTOPped one, is killed) and never raises. Returns how each
        program ended (a program still running when stopped is "stopped")."""
        if self._stopped:
            return self.outcomes()
        self._stopping = True  # from here on nothing is restarted
        try:
            self._stop_children()
        finally:
            self._stopped = True
            self._release_names()
        return self.outcomes()

    def _stop_children(self) -> None:
        try:
            self._stop_status()  # first: no snapshot reads the segment or calls the adapter
        except Exception as exc:  # stop() goes on whatever a part of it did
            self.events.append(f"status socket stop failed: {exc}")
        for child in self.children():  # programs that ended before the stop say how
            self._drain_events(child)
        self._stopped = True
        running = [nid for nid, c in self.partitions.items() if c.state is ProcessState.RUNNING]
        try:  # all at once: one stuck partition does not hold up the others
            replies = self._call_all({nid: ({"cmd": "stop"}, ()) for nid in running},
                                     STOP_TIMEOUT_S)
            for nid, reply in replies.items():
                if reply.get("outcome") == "raised" or reply.get("error"):  # it failed while
                    self.partitions[nid].report = reply  # stopping (sends it had queued could
                    # not go out), or its wait was cut short by the stop (outcome "stopped")
        except Exception as exc:
            self.events.append(f"stopping partitions: {exc}")
        adapter = self.adapter
        if adapter is not None and adapter.state is ProcessState.RUNNING:
            try:  # the adapter goes first, so partitions leaving is not news to it
                adapter.channel.send({"cmd": "stop"})
                adapter.proc.wait(KILL_AFTER_S)
            except (ControlError, OSError, subprocess.TimeoutExpired):
                adapter.proc.kill()  # hung or stopped: it cannot be asked
        children = self.children()
        for child in children:
            if child.state in (ProcessState.STARTING, ProcessState.RUNNING):
                child.step(ProcessEvent.STOP)
            try:
                child.channel.close()  # EOF tells the child to exit
            except OSError:
                pass
        reap([c.proc for c in children])
        try:
            self.poll()
        except Exception as exc:
            self.events.append(f"final poll: {exc}")

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
