"""A partition process: maps the segment, builds its driver, receiver and `Port`, runs its program.

Started by the hypervisor as `python -m partitions.main --boot JSON`. The partition's life is
the call `program(port)` (the config's `program = "package.module:function"`, imported here,
from the directory the machine was started in and from sys.path), run on its own thread while
this process's main thread serves the control channel:

* `stop`      set `port.stop`, give the program STOP_GRACE_S to return, answer with its outcome;
* `reconnect` take fresh adapter pipes after an adapter restart (handled at once: a request
              blocked on the dead adapter is waiting for exactly this);
* `ping`      answer with the pid;
* anything else goes to the handler the program registered with `port.on_command`, on one
  worker thread, in arrival order.

When the program returns or raises, loans it left open are given back (LoanLeftOpen), then
what it queued with per-packet sends is flushed (until done, or within FLUSH_GRACE_S once the
machine stops it; runs that failed or were left are QueuedSendFailed naming them): either turns
the outcome into "raised" (partitions/program_report.py). Then the outcome is reported to the
hypervisor (`finished` event, or the answer to `stop`: "returned", "raised" with the exception's
type, message and traceback, or "stopped" when the machine's stop cut a wait of it short) and
the process exits (0, or 1 if it raised). Without a program the partition runs nothing until
stopped. The process also exits when the hypervisor's end of the control channel closes.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

import posix_ipc

from adapter.errors import XpmoveError
from hypervisor.boot import PartitionBoot
from hypervisor.control import Channel, ControlError, unless_undone
from hypervisor.memory import PhysicalMemory
from partitions import program_report
from partitions.cork import QueuedFailure, QueuedSendFailed
from partitions.driver import Driver
from partitions.loan import LoanError, LoanLeftOpen
from partitions.mapping import hidden_ranges, hide, semaphores_needed
from partitions.memory import PartitionView
from partitions.port import Port
from partitions.receiver import Receiver

STOP_GRACE_S = 3.0  # how long a stopped program may take to return before we exit anyway
FLUSH_GRACE_S = 2.0  # of it, how long queued sends may take to go out once stopped
WATCH_S = 0.05  # how often the control loop looks whether the program has returned


def error_reply(exc: BaseException) -> dict:
    return {"ok": False, "error": type(exc).__name__, "message": str(exc),
            "retryable": bool(getattr(exc, "retryable", False))}


class ProgramError(ImportError):
    """The config's program cannot be imported or is not callable."""


def load_program(ref: str) -> Callable[[Port], object]:
    """The function named by "package.module:function"."""
    module_name, _, function = ref.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProgramError(f"program {ref!r}: cannot import {module_name!r}: {exc}") from None
    target = getattr(module, function, None)
    if not callable(target):
        raise ProgramError(f"program {ref!r}: {module_name} has no function {function!r}")
    return target


class ProgramReport:
    """How the program ended, as the `finished` event reports it (the hypervisor turns it into
    a hypervisor.lifecycle.Outcome)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.report: dict = {"outcome": "running"}

    def finish(self, report: dict) -> None:
        self.report = report
        self.done.set()


class Partition:
    def __init__(self, boot: PartitionBoot):
        self.boot = boot
        self.network_id = boot.network_id
        self.own = boot.layout.by_id()[self.network_id]
        self.memory = PhysicalMemory.attach(boot.segment)
        # no more than the role needs (partitions/mapping.py): peers' private memory hidden
        hide(self.memory.view, hidden_ranges(boot.layout, self.network_id))
        lock_ids, bell_ids = semaphores_needed(self.network_id, boot.bells)
        locks = {k: posix_ipc.Semaphore(boot.locks[k]) for k in lock_ids}
        bells = {k: posix_ipc.Semaphore(boot.bells[k]) for k in bell_ids}
        recall = posix_ipc.Semaphore(boot.recalls[self.network_id])  # its leases' recalls
        # every room semaphore of this host: its own to post, its destinations' to wait on
        rooms = {k: posix_ipc.Semaphore(name) for k, name in boot.rooms.items()}
        self.driver = Driver(self.network_id, self.memory.view, boot.layout,
                             boot.request_fd, boot.reply_fd, locks, bells, recall, rooms)
        self.driver.start_keeper()
        self.receiver = Receiver(self.memory.view, boot.layout, self.network_id,
                                 bells[self.network_id], rooms.get(self.network_id))
        names = {p.network_id: p.name for p in boot.layout.partitions}
        self.port = Port(self.driver, self.receiver, PartitionView(self.memory.view, self.own),
                         names)
        self.control = Channel(socket.socket(fileno=boot.control_fd))
        self.outcome = ProgramReport()
        self._commands: queue.Queue[dict | None] = queue.Queue()

    # -- the program ------------------------------------------------------------------------
    def _run_program(self) -> None:
        try:
            if self.boot.program is None:
                self.port.stop.wait()
            else:
                load_program(self.boot.program)(self.port)
            report = {"outcome": "returned"}
        except BaseException as exc:  # the program's failure is reported, never re-raised
            report = program_report.raised(exc, self.port.stop.is_set())
        try:  # the program's frames are gone (no traceback kept): so are its views of loans
            report = self._settle(report)
        finally:
            self.port.commands_ready.set()  # commands waiting for a handler get their answer
            self.outcome.finish(report)

    def _settle(self, report: dict) -> dict:
        """`report` with what the program left: loans still open are given back (each holds
        a lock, and the queue waits behind it), then the queue is moved; either is a failure
        (nothing accepted is silently dropped: partitions/program_report.py)."""
        problems: list[XpmoveError] = []
        left_open = self.port.give_back_loans()
        if left_open:
            problems.append(LoanLeftOpen(f"the program ended with {len(left_open)} loan(s) "
                                         f"open: {'; '.join(left_open)}"))
        try:
            failures = self._drain_queue()
        except LoanError as exc:  # a loan that could not end holds the queue behind it
            problems.append(exc)
            failures = self.port.unflushed()
        if failures:  # accepted packets that were not moved: the program did not succeed
            problems.append(QueuedSendFailed(failures))
        return program_report.with_problems(report, problems)

    def _drain_queue(self) -> list[QueuedFailure]:
        """Move what the program queued (per-packet sends) before the partition reports: until
        done while the machine runs (each queued move ends at its own timeout), within
        FLUSH_GRACE_S once it stops. The runs that failed or were left, else []."""
        failures: list[QueuedFailure] = []
        deadline = None
        while True:
            if deadline is None and self.port.stop.is_set():
                deadline = time.monotonic() + FLUSH_GRACE_S
            left = WATCH_S if deadline is None else min(WATCH_S, deadline - time.monotonic())
            try:
                if self.port.flush(max(0.0, left)):
                    return failures
            except QueuedSendFailed as exc:
                failures += exc.failures
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return failures + self.port.unflushed()

    # -- commands ---------------------------------------------------------------------------
    def _work(self) -> None:
        """Run the program's commands in order, once it has registered its handler."""
        while (msg := self._commands.get()) is not None:
            self.port.commands_ready.wait()
            handler = self.port.command_handler()
            if handler is None:
                reply = {"ok": False, "error": "UnknownCommand",
                         "message": f"cmd {msg.get('cmd')!r}: the program of network ID "
                                    f"{self.network_id} takes no commands"}
            else:
                try:
                    reply = handler(msg)
                except Exception as exc:  # a bad command is answered, never the end of it
                    reply = error_reply(exc)
            self._send({**reply, "id": msg.get("id")})

    def _send(self, message: dict) -> None:
        try:
            self.control.send(message)
        except ControlError:
            pass  # the hypervisor is gone: the control loop sees it too

    def _on_control(self, msg: dict) -> bool:
        """Handle one control message; False when the partition should exit."""
        cmd = msg.get("cmd")
        if cmd == "reconnect":
            request_fd, reply_fd = msg["fds"]
            self.driver.reconnect(request_fd, reply_fd)
            self._send({"ok": True, "id": msg.get("id")})
        elif cmd == "ping":
            self._send({"ok": True, "pid": os.getpid(), "id": msg.get("id")})
        elif cmd == "stop":
            self.port.stop.set()
            self.driver.close()
            self.outcome.done.wait(STOP_GRACE_S)
            self._send({"ok": True, **self.outcome.report, "id": msg.get("id")})
        else:
            self._commands.put(msg)
        return True

    def run(self) -> int:
        """Serve the control channel while the program runs; the exit code."""
        threading.Thread(target=self._work, daemon=True, name="commands").start()
        program = threading.Thread(target=self._run_program, daemon=True, name="program")
        self._send({"event": "ready", "pid": os.getpid()})
        program.start()
        try:
            while not (self.outcome.done.is_set() and not self.port.stop.is_set()):
                msg = self.control.receive(WATCH_S)
                if msg is not None:
                    self._on_control(msg)
            self._send({"event": "finished", **self.outcome.report})
        except ControlError:
            pass  # the hypervisor is gone: so are we
        finally:
            self._commands.put(None)
            if not self.port.stop.is_set():  # a stop command already gave the grace
                self.port.stop.set()
                self.driver.close()
                self.outcome.done.wait(STOP_GRACE_S)
        return 1 if self.outcome.report["outcome"] == "raised" else 0


def set_affinity(cpus: tuple[int, ...] | None) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xpmove partition (started by the hypervisor)")
    parser.add_argument("--boot", required=True, help="JSON boot block from the hypervisor")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hypervisor coordinates shutdown
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 pid` dumps every thread's stack
    boot = PartitionBoot.from_json(args.boot)
    set_affinity(boot.cpus)
    partition = unless_undone(lambda: Partition(boot), boot.control_fd)
    if partition is None:  # the start was undone before we attached (a Ctrl-C): nothing to do
        return 0
    code = partition.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # daemon threads (a program ignoring stop) must not hold the exit


if __name__ == "__main__":
    sys.exit(main())
