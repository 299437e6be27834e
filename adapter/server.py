"""The adapter process: a thin I/O shell around the request engine (adapter/engine.py).

The shell boots from the hypervisor's AdapterBoot, wraps the POSIX semaphores into the
engine's Lock interface, and runs one single-threaded epoll loop over every partition's
request pipe and the control channel: it reads and decodes frames, hands each request to the
engine, writes the engine's replies, and tells the engine when a partition comes or goes.
Everything a request does to memory and locks is the engine's.

A request whose destination lock is busy (granted to a Fig 12 driver) is parked in the engine,
never waited on, so one busy destination cannot stall the others; parked requests are retried
each turn and fail with LOCK_TIMEOUT at their deadline. Each partition has at most one request
in flight at the adapter (the pipe is not read while one is parked or a reply is unsent), which
bounds memory whatever a partition floods us with.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import posix_ipc

from adapter.engine import Engine
from adapter.protocol import MAX_REQUEST_SIZE, ProtocolViolation, RequestDecoder, malformed_reply
from adapter.translation import PartitionState
from hypervisor.boot import AdapterBoot
from hypervisor.control import Channel, ControlError, unless_undone
from hypervisor.memory import PhysicalMemory
from hypervisor.names import RunRegistry

PARKED_POLL_S = 0.0002  # how often parked requests retry a busy lock
READ_CHUNK = 65536


class SemaphoreLock(posix_ipc.Semaphore):
    """A destination lock as the engine's Lock: the semaphore itself (release and value stay
    the C methods), plus a try_acquire that never blocks."""

    __slots__ = ()

    def try_acquire(self) -> bool:
        try:
            self.acquire(0)
        except posix_ipc.BusyError:
            return False
        return True


@dataclass
class Connection:
    """One partition's pair of pipes, as seen by the adapter."""

    network_id: int
    request_fd: int
    reply_fd: int
    decoder: RequestDecoder = field(default_factory=RequestDecoder)
    outbox: bytearray = field(default_factory=bytearray)
    open: bool = True


class Adapter:
    """The process shell: pipes, poller, control channel; the engine decides everything else."""

    def __init__(self, boot: AdapterBoot):
        self.boot = boot
        self.orphaned = False  # the hypervisor's end of the control channel closed
        self.memory = PhysicalMemory.attach(boot.segment)
        locks = {k: SemaphoreLock(v) for k, v in boot.locks.items()}
        bells = {k: posix_ipc.Semaphore(v) for k, v in boot.bells.items()}
        recalls = {k: posix_ipc.Semaphore(v) for k, v in boot.recalls.items()}
        self.engine = Engine(self.memory.view, boot.layout, locks, bells, boot.lock_timeout_s,
                             recalls)
        self.control = Channel(socket.socket(fileno=boot.control_fd))
        # select.epoll itself, not `selectors`: its Python wrapper builds a key and a list
        # entry per ready fd, on every request
        self.poller = select.epoll()
        self.poller.register(self.control.sock.fileno(), select.EPOLLIN)
        self.connections: dict[int, Connection] = {}
        self._watched: dict[int, tuple[str, Connection]] = {}  # fd -> what it is for
        self.engine.recover(time.monotonic(), connected=[c.network_id for c in boot.connections])
        for network_id in boot.retired:
            self.engine.retire(network_id)
        for c in boot.connections:
            self.attach(c.network_id, c.request_fd, c.reply_fd)
        self.running = True

    def stats(self) -> dict:
        return self.engine.stats(time.monotonic())

    # -- connections -------------------------------------------------------------------
    def attach(self, network_id: int, request_fd: int, reply_fd: int) -> None:
        old = self.connections.get(network_id)
        if old is not None and old.open:
            self.close_connection(old, "replaced by a new incarnation")
        os.set_blocking(reply_fd, False)
        conn = Connection(network_id, request_fd, reply_fd)
        self.connections[network_id] = conn
        self.engine.attach(network_id)
        self.watch(conn)

    def ready_for_request(self, conn: Connection) -> bool:
        return conn.open and not conn.outbox and not self.engine.is_parked(conn.network_id)

    def watch(self, conn: Connection) -> None:
        """Read requests only while ready for one; watch the reply pipe while a reply waits.

        Not reading is the back-pressure: a partition that floods us fills its own pipe.
        """
        if not conn.open:
            return
        want_read = self.ready_for_request(conn) and conn.decoder.buffered < MAX_REQUEST_SIZE
        want_write = bool(conn.outbox)
        watched = self._watched
        if want_read != (conn.request_fd in watched):  # the common case: nothing changes
            self._set_watch(conn.request_fd, select.EPOLLIN, want_read, ("request", conn))
        if want_write != (conn.reply_fd in watched):
            self._set_watch(conn.reply_fd, select.EPOLLOUT, want_write, ("reply", conn))

    def _set_watch(self, fd: int, events: int, wanted: bool, data: tuple[str, Connection]
                   ) -> None:
        registered = fd in self._watched
        if wanted and not registered:
            self.poller.register(fd, events)
            self._watched[fd] = data
        elif not wanted and registered:
            self.poller.unregister(fd)
            del self._watched[fd]

    def close_connection(self, conn: Connection, why: str, expected: bool = False) -> None:
        """The partition left, died or broke the protocol: free what it holds, stop serving it.
        Only the unexpected is logged (a partition leaving is the hypervisor's news to tell)."""
        if not conn.open:
            return
        conn.open = False
        for fd in (conn.request_fd, conn.reply_fd):
            if fd in self._watched:
                self.poller.unregister(fd)
                del self._watched[fd]
            try:
                os.close(fd)
            except OSError:
                pass
        self.engine.detach(conn.network_id)
        if self.running and not expected:
            self._log(f"closed connection of network ID {conn.network_id}: {why}")

    # -- replies -------------------------------------------------------------------------
    def _reply(self, conn: Connection, frame: bytes) -> None:
        conn.outbox += frame
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        while conn.outbox and conn.open:
            try:
                n = os.write(conn.reply_fd, conn.outbox)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EBADF):
                    self.close_connection(conn, "reply pipe closed")
                    return
                raise
            del conn.outbox[:n]

    # -- loop --------------------------------------------------------------------------
    def serve(self, conn: Connection, now: float) -> None:
        """Hand the engine as many buffered requests of `conn` as it may have in flight."""
        engine = self.engine
        while self.ready_for_request(conn):
            try:
                request = conn.decoder.next_request()
            except ProtocolViolation as exc:
                engine.errors["malformed"] += 1
                engine.counters["frames_rejected"] += 1
                self._reply(conn, malformed_reply(0, 0))
                self.close_connection(conn, str(exc))
                return
            if request is None:
                return
            try:
                frame = engine.submit(conn.network_id, request, now)
            except Exception as exc:  # the adapter outlives any one request, whatever it was
                engine.errors["internal"] += 1
                self._log(f"request {request.request_id} of network ID {conn.network_id} "
                          f"failed: {type(exc).__name__}: {exc}")
                self._reply(conn, malformed_reply(request.op, request.request_id))
                self.close_connection(conn, "internal error")
                return
            if frame is not None:  # else parked: its reply comes from retry_parked
                self._reply(conn, frame)

    def retry_parked(self, now: float) -> None:
        """Send the replies of parked requests that got their locks or timed out, then serve
        what their partitions sent meanwhile."""
        for network_id, frame in self.engine.retry_parked(now):
            conn = self.connections[network_id]
            self._reply(conn, frame)
            self.serve(conn, now)
            self.watch(conn)

    def read_from(self, conn: Connection, now: float) -> None:
        try:
            data = os.read(conn.request_fd, READ_CHUNK)
        except OSError as exc:
            self.close_connection(conn, f"read failed: {exc}")
            return
        if not data:
            self.close_connection(conn, "request pipe EOF (partition gone)", expected=True)
            return
        conn.decoder.feed(data)
        self.serve(conn, now)

    def on_control(self, message: dict) -> None:
        cmd = message.get("cmd")
        if cmd == "stats":
            self.control.send({"id": message.get("id"), "stats": self.stats()})
        elif cmd == "stop":
            self.running = False
        elif cmd == "retire":  # a partition that ended and will not be restarted
            self.engine.retire(int(message["network_id"]))
            self.control.send({"id": message.get("id"), "ok": True})
        elif cmd == "state":  # a partition of another host: active, dead or gone there
            self.engine.set_remote_state(int(message["network_id"]),
                                         PartitionState(message["state"]))
            self.control.send({"id": message.get("id"), "ok": True})
        elif cmd == "attach":  # a (re)started partition's fresh pipes
            request_fd, reply_fd = message["fds"]
            self.attach(int(message["network_id"]), request_fd, reply_fd)
            self.control.send({"id": message.get("id"), "ok": True})

    def run(self) -> None:
        self.control.send({"event": "ready", "pid": os.getpid()})
        control_fd, watched = self.control.sock.fileno(), self._watched
        while self.running:
            parked = self.engine.has_parked()
            for fd, _ in self.poller.poll(PARKED_POLL_S if parked else -1):
                now = time.monotonic()
                if fd == control_fd:
                    self.on_control_readable()
                    break  # an attach may reuse a closed fd of this batch: poll again
                watch = watched.get(fd)
                if watch is None:  # closed or unwatched earlier in this batch
                    continue
                kind, conn = watch
                if kind == "request":
                    self.read_from(conn, now)
                else:
                    self._flush(conn)
                    self.serve(conn, now)
                self.watch(conn)
            if parked:
                self.retry_parked(time.monotonic())
        self.shutdown()

    def on_control_readable(self) -> None:
        if not self.control.feed_available():
            self.running = False  # the hypervisor is gone: so are we
            self.orphaned = True
            return
        while (message := self.control.pending()) is not None:
            self.on_control(message)

    def shutdown(self) -> None:
        self.running = False
        for conn in list(self.connections.values()):
            self.close_connection(conn, "adapter stopping")
        self.poller.close()
        self.memory.close()

    @staticmethod
    def _log(text: str) -> None:
        print(f"adapter: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xpmove adapter (started by the hypervisor)")
    parser.add_argument("--boot", required=True, help="JSON boot block from the hypervisor")
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group: the hypervisor coordinates
    # shutdown (as for the partitions), so an adapter that left on its own would be restarted
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    boot = AdapterBoot.from_json(args.boot)
    adapter = unless_undone(lambda: Adapter(boot), boot.control_fd)
    if adapter is None:  # the start was undone before we attached (a Ctrl-C): nothing to do
        return 0
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 pid` dumps every thread's stack
    try:
        adapter.run()
    except KeyboardInterrupt:
        adapter.shutdown()
    except ControlError:  # a send to a hypervisor that is gone, or that stopped the machine
        adapter.orphaned = True  # while it started (a Ctrl-C before "ready"): as at EOF
        adapter.shutdown()
    if adapter.orphaned:
        sweep_orphaned_run(adapter.boot)
    return 0


def sweep_orphaned_run(boot: AdapterBoot) -> None:
    """The hypervisor died without stopping the run (killed: SIGKILL, the OOM killer, or
    mpiexec's proxies when mpiexec dies): nobody else is left to unlink the run's names, so
    the adapter does, once the hypervisor is dead (the run registry's sweep of that one run).
    The partitions leave on their own as their control channels close."""
    if not boot.run_prefix or not boot.run_dir:
        return
    try:
        RunRegistry(boot.run_dir).sweep_orphan(boot.run_prefix)
    except (OSError, ValueError) as exc:  # the next start's sweep, or `xpmove cleanup`
        print(f"adapter: could not unlink the names of run {boot.run_prefix}: {exc}",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
