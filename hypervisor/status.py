"""The status socket: a running machine answers "how are you" to another terminal.

`Machine.start()` starts a `StatusServer`: a daemon thread listening on an AF_UNIX socket in
the run registry's directory (`<registry dir>/<prefix>.sock`, mode 0600, recorded in the
run's registry record). A client connects and the thread writes ONE control message (a 4-byte
length, then JSON: the framing of hypervisor/control.py) holding a snapshot, then closes.

The snapshot never disturbs the traffic. It is built from what the hypervisor already knows
(its children: pid, state, restarts, exit code, how a program ended), from words of the
segment's control area READ WITHOUT ANY LOCK (per-pair sequence and delivered words, each
ring's head, tail and holder), from each lock semaphore's value (sem_getvalue: never acquired
or released) and from the adapter's `stats` control message, which the adapter answers
between requests. Words read without the lock may be a moment apart from each other: a ring
may show a head of one instant and a tail of the next. They are counters, not a consistent
cut.

`segment_status` is pure (a words view and the layout in, dicts out) so it is unit-tested on a
bytearray. The word offsets of a ring control block belong to the commit protocol
(adapter/receive_area.py), which the platform must not import: they are repeated here and
tests/unit/test_status.py asserts they are equal.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import posix_ipc

from hypervisor.control import ControlError, encode_message
from hypervisor.layout import SegmentLayout
from hypervisor.lifecycle import ProcessState

if TYPE_CHECKING:
    from hypervisor.machine import Child, Machine

log = logging.getLogger(__name__)

# Words of a ring control block that status reads (adapter.receive_area owns their meaning).
HEAD_OFFSET = 0
HOLDER_OFFSET = 32
TAIL_OFFSET = 64

STATUS_VERSION = 1
STATS_TIMEOUT_S = 1.0  # how long a snapshot waits for the adapter's counters
SEND_TIMEOUT_S = 2.0  # a client that does not read its snapshot is dropped after this
# sun_path holds 108 bytes on Linux, 104 on macOS, including the NUL
MAX_SOCKET_PATH = 103


def segment_status(words: memoryview, layout: SegmentLayout) -> list[dict]:
    """Per partition (layout order): packets out (committed to every destination), in
    (consumed from every source), queued (committed to it, not consumed yet), ring bytes in
    use and the ring's holder word. `words` is the segment cast to native u64 ('Q')."""
    parts = layout.partitions
    out = []
    for p in parts:
        sent = sum(words[layout.seq_address(p.index, d.index) >> 3] for d in parts)
        committed_in = sum(words[layout.seq_address(s.index, p.index) >> 3] for s in parts)
        consumed = sum(words[layout.delivered_address(s.index, p.index) >> 3] for s in parts)
        head = words[(p.control + HEAD_OFFSET) >> 3]
        tail = words[(p.control + TAIL_OFFSET) >> 3]
        out.append({
            "network_id": p.network_id,
            "packets_out": sent,
            "packets_in": consumed,
            "packets_queued": max(0, committed_in - consumed),
            "ring_used": max(0, head - tail),  # two loads, no lock: clamp a torn pair
            "ring_size": p.receive_size,
            "ring_bytes_in": head,  # bytes ever committed to the ring, headers included
            "holder": words[(p.control + HOLDER_OFFSET) >> 3],
        })
    return out


def _child_status(child: Child | None, restarts: int) -> dict:
    if child is None:
        return {"pid": None, "state": "absent", "restarts": restarts, "exit_code": None}
    return {"pid": child.proc.pid, "state": child.state.value, "restarts": restarts,
            "exit_code": child.exit_code}


def machine_status(machine: Machine, lock_values: Callable[[int], int | None]) -> dict:
    """The snapshot a client gets (see docs/protocol.md, The status socket)."""
    partitions = []
    adapter = machine.adapter
    stats: dict = {}
    stats_error = None
    if adapter is not None and adapter.state is ProcessState.RUNNING:
        try:
            stats = machine.adapter_stats(timeout=STATS_TIMEOUT_S)
        except Exception as exc:  # it died or is restarting: the rest is still worth showing
            stats_error = f"{type(exc).__name__}: {exc}"
    else:
        stats_error = f"adapter {adapter.state.value if adapter else 'absent'}"
    assert machine.memory is not None
    with machine.memory.view.cast("Q") as words:
        segment = segment_status(words, machine.layout)
    locks, waits = stats.get("locks", {}), stats.get("lock_waits", {})
    moved = stats.get("partitions", {})
    children = dict(machine.partitions)
    for p, seg in zip(machine.layout.partitions, segment, strict=True):
        nid = p.network_id
        child = children.get(nid)
        entry = {"name": p.name, "network_id": nid,
                 **_child_status(child, machine.restarts.get(nid, 0)), **seg}
        entry["lock"] = {"value": lock_values(nid), "holder": entry.pop("holder"),
                         "state": locks.get(str(nid)), "waits": waits.get(str(nid))}
        traffic = moved.get(str(nid), {})  # from the adapter: bytes and its requests' errors
        entry["bytes_out"] = traffic.get("bytes_out")
        entry["bytes_in"] = traffic.get("bytes_in")
        entry["errors"] = traffic.get("errors", {})
        report = child.report if child is not None else {}
        entry["outcome"] = report.get("outcome")
        entry["error"] = report.get("error") or None
        partitions.append(entry)
    return {
        "version": STATUS_VERSION,
        "prefix": machine.prefix,
        "owner_pid": os.getpid(),
        "time": time.time(),
        "started": machine.started_at,
        "lock_timeout_s": machine.config.lock_timeout_s,
        "restart": machine.config.restart,
        "partitions": partitions,
        "adapter": {
            **_child_status(adapter, machine.restarts.get("adapter", 0)),
            "counters": stats.get("counters", {}),
            "errors": stats.get("errors", {}),
            "stats_error": stats_error,
        },
        "events": machine.events[-10:],
    }


class StatusServer:
    """One daemon thread answering one snapshot per connection on an AF_UNIX socket.

    `stop()` wakes the thread at once (a self-pipe), joins it and unlinks the socket; it is
    idempotent. A snapshot that raises is answered as {"error": ...}: the thread never dies of
    a bad snapshot, and never takes the machine down.
    """

    def __init__(self, path: str, snapshot: Callable[[], dict],
                 on_stop: Callable[[], None] | None = None):
        self.path = path
        self._snapshot = snapshot
        self._on_stop = on_stop
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Bind (0600) and listen; OSError if the socket cannot be made."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise OSError(f"status socket path {self.path} is over {MAX_SOCKET_PATH} bytes")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            os.chmod(self.path, 0o600)  # the directory is 0700 already; this is the file
            listener.listen(8)
        except BaseException:
            listener.close()
            self._unlink()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="xpmove-status", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._stopping.is_set() or self._wake_r in ready:
                return
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        try:
            message = self._snapshot()
        except Exception as exc:
            log.warning("status snapshot failed: %s", exc, exc_info=True)
            message = {"version": STATUS_VERSION, "error": f"{type(exc).__name__}: {exc}"}
        try:
            data = encode_message(message)
        except (ControlError, TypeError, ValueError) as exc:
            data = encode_message({"version": STATUS_VERSION, "error": str(exc)})
        try:
            conn.settimeout(SEND_TIMEOUT_S)
            conn.sendall(data)
        except OSError:
            pass  # the client went away: its loss

    def stop(self, timeout: float = STATS_TIMEOUT_S + SEND_TIMEOUT_S + 1.0) -> None:
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._listener = None
        self._unlink()
        if self._on_stop is not None:
            on_stop, self._on_stop = self._on_stop, None
            on_stop()

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def open_lock_reader(names: dict[int, str]) -> tuple[Callable[[int], int | None],
                                                      Callable[[], None]]:
    """(value_of(network_id), close) over the lock semaphores, opened once by name. The value
    is read with sem_getvalue, which neither takes nor frees the lock; None where the
    platform has no sem_getvalue (macOS) or the semaphore is gone."""
    sems: dict[int, posix_ipc.Semaphore] = {}
    for nid, name in names.items():
        try:
            sems[nid] = posix_ipc.Semaphore(name)
        except posix_ipc.Error:
            continue

    def value_of(nid: int) -> int | None:
        sem = sems.get(nid)
        if sem is None:
            return None
        try:
            return int(sem.value)
        except (AttributeError, posix_ipc.Error, OSError):
            return None

    def close() -> None:
        for sem in sems.values():
            try:
                sem.close()
            except posix_ipc.Error:
                pass
        sems.clear()

    return value_of, close
