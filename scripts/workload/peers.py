"""Peers: what a Python user would pick instead of the adapter, as bench transports.

Each is a `SendTransport` / `ReceiveEndpoint` pair with the same batches, frames (FRAME header
in front of every payload, numbered by `FrameStamper`) and receive check (`drain_frames` hands
blocks to the workload's `on_block`) as tcp, so the bench measures every transport with the
same fill and check:

* ``zmq`` -- pyzmq PUSH/PULL over ``ipc://`` in a per-run temporary directory: one PULL per
  receiving partition, one PUSH per (sender, peer). A batch travels as ONE zmq frame holding
  its frames back to back (measured cheaper than one multipart message of a part per packet:
  see benchmarks/README.md), checked in place in the received message (`copy=False`).
* ``pipe`` -- `multiprocessing.connection.Connection` `send_bytes` / `recv_bytes_into`. The
  partitions are not parent and child of each other, so the receiver listens on an AF_UNIX
  socket in a per-run temporary directory and wraps every accepted socket in a Connection
  (what `multiprocessing.connection.Listener` does), and senders connect with `Client`. Not
  named FIFOs: a FIFO has one byte stream for every writer, and writes above PIPE_BUF from
  two senders (all-to-all) would interleave; a socket per sender keeps messages whole.
* ``iceoryx2`` -- publish-subscribe with zero-copy loans: iceoryx2_peer.py.

Optional packages: pyzmq and iceoryx2 (the ``peers`` extra). `available()` says which peers
can run here; the bench skips the others with a note.
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import shutil
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import BufferTooShort, Client, Connection
from typing import Any

import numpy as np

from partitions.blocks import BlockHandler, as_bytes
from scripts.workload.frames import FrameError, FrameStamper, drain_frames
from scripts.workload.transports import Batch, ReceiveEndpoint, SendTransport, TransportError

ZMQ, PIPE, ICEORYX2 = "zmq", "pipe", "iceoryx2"
PEERS = (ZMQ, PIPE, ICEORYX2)
# the importable module each peer needs (None: the standard library is enough)
PEER_MODULES: dict[str, str | None] = {ZMQ: "zmq", PIPE: None, ICEORYX2: "iceoryx2"}
RECEIVE_BUFFER = 1 << 20  # grows to the largest message seen


def installed(module: str | None, find: Callable[[str], object] = importlib.util.find_spec
              ) -> bool:
    """Whether `module` can be imported (None: nothing needed)."""
    if module is None:
        return True
    try:
        return find(module) is not None
    except (ImportError, ValueError):
        return False


def available(names: tuple[str, ...] = PEERS,
              find: Callable[[str], object] = importlib.util.find_spec) -> tuple[str, ...]:
    return tuple(n for n in names if installed(PEER_MODULES.get(n), find))


def run_dir() -> str:
    """A fresh private directory for one run's socket names (0700)."""
    return tempfile.mkdtemp(prefix="xpmove-peer-")


def check_whole(n_end: int, end: int, what: str) -> None:
    if n_end != end:
        raise FrameError(f"{what}: a message ends inside a frame ({end - n_end} bytes left)")


class _MessageBuffer:
    """A preallocated receive buffer (grown on demand) and its uint8 view."""

    def __init__(self, size: int = RECEIVE_BUFFER):
        self.resize(size)

    def resize(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.flat = as_bytes(self.buf)

    def drain(self, n: int, handler: BlockHandler, what: str) -> int:
        count, end = drain_frames(self.view, self.flat, 0, n, handler)
        check_whole(end, n, what)
        return count


# -- zmq --------------------------------------------------------------------------------------


class ZmqPull(ReceiveEndpoint):
    """One PULL socket bound to ipc://<run dir>/pull; every batch is one message of frames."""

    channel = ZMQ

    def __init__(self) -> None:
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context.instance()
        self._sock: Any = None
        self._dir: str | None = None

    def open(self) -> str:
        self.close()
        self._dir = run_dir()
        address = f"ipc://{self._dir}/pull"
        sock = self._ctx.socket(self._zmq.PULL)
        sock.setsockopt(self._zmq.LINGER, 0)
        sock.bind(address)
        self._sock = sock
        return address

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        sock, zmq = self._sock, self._zmq
        if sock is None or not sock.poll(int(timeout * 1000)):
            return 0
        n = 0
        while True:
            try:  # zero-copy: the frames are checked in zmq's own message buffer
                message = sock.recv(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return n
            view = message.buffer
            count, end = drain_frames(view, np.frombuffer(view, np.uint8), 0, len(view),
                                      handler)
            check_whole(end, len(view), "zmq")
            n += count

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close(0)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class ZmqPush(FrameStamper, SendTransport):
    """One PUSH socket per destination; a batch is ONE message (its frames back to back)."""

    name = channel = ZMQ

    def __init__(self, network_id: int):
        super().__init__(network_id)
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context.instance()
        self._socks: dict[int, Any] = {}

    def connect(self, addresses: dict[int, str], timeout: float = 5.0) -> None:
        for peer, address in addresses.items():
            if peer in self._socks:
                continue
            sock = self._ctx.socket(self._zmq.PUSH)
            sock.setsockopt(self._zmq.LINGER, 0)
            sock.setsockopt(self._zmq.SNDTIMEO, int(timeout * 1000))
            try:
                sock.connect(address)
            except self._zmq.ZMQError as exc:
                sock.close(0)
                raise TransportError(f"zmq: cannot connect to partition {peer} at "
                                     f"{address}: {exc}") from None
            self._socks[peer] = sock

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        n = len(batch.slots)
        sock = self._socks.get(dst)
        if sock is None:
            errors["NoConnection"] += n
            return 0
        last = self.stamp(dst, batch)
        try:
            sock.send(batch.span, copy=True)
        except self._zmq.ZMQError as exc:
            errors[type(exc).__name__] += n
            return 0
        self.stamped(dst, last)
        return n

    def close(self) -> None:
        socks, self._socks = self._socks, {}
        for sock in socks.values():
            sock.close(0)


# -- pipe -------------------------------------------------------------------------------------


def close_listener(selector: selectors.BaseSelector, listener: socket.socket) -> None:
    """Take a listening socket out of its selector (if it is still in) and close it."""
    try:
        selector.unregister(listener)
    except (KeyError, ValueError):
        pass
    listener.close()


class PipeListener(ReceiveEndpoint):
    """An AF_UNIX listener in a per-run directory; each accepted socket becomes a
    multiprocessing Connection whose messages (one per batch) are read with recv_bytes_into."""

    channel = PIPE

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._conns: list[Connection] = []
        self._dir: str | None = None
        self._buf = _MessageBuffer()

    def open(self) -> str:
        self.close()
        self._selector = selectors.DefaultSelector()
        self._dir = run_dir()
        address = os.path.join(self._dir, "pipe")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, None)
        return address

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        n = 0
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                try:
                    sock, _ = self._listener.accept()  # type: ignore[union-attr]
                except (BlockingIOError, AttributeError):
                    continue
                sock.setblocking(True)
                conn = Connection(sock.detach())
                self._conns.append(conn)
                self._selector.register(conn, selectors.EVENT_READ, conn)
                continue
            n += self._read(key.data, handler)
        return n

    def _read(self, conn: Connection, handler: BlockHandler) -> int:
        try:
            size = conn.recv_bytes_into(self._buf.buf)
        except BufferTooShort as exc:  # the message is in the exception: use it, then grow
            message = exc.args[0]
            self._buf.resize(2 * len(message))
            self._buf.view[:len(message)] = message
            size = len(message)
        except (EOFError, OSError):
            self._drop(conn)
            return 0
        return self._buf.drain(size, handler, "pipe")

    def _drop(self, conn: Connection) -> None:
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        if conn in self._conns:
            self._conns.remove(conn)
        conn.close()

    def close(self) -> None:
        for conn in list(self._conns):
            self._drop(conn)
        if self._listener is not None:
            close_listener(self._selector, self._listener)
            self._listener = None
        self._selector.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class PipeLinks(FrameStamper, SendTransport):
    """One Connection (Client over AF_UNIX) per destination; a batch is one send_bytes."""

    name = channel = PIPE

    def __init__(self, network_id: int):
        super().__init__(network_id)
        self._conns: dict[int, Connection] = {}

    def connect(self, addresses: dict[int, str]) -> None:
        for peer, address in addresses.items():
            if peer in self._conns:
                continue
            try:
                self._conns[peer] = Client(address, family="AF_UNIX")
            except OSError as exc:
                raise TransportError(f"pipe: cannot connect to partition {peer} at "
                                     f"{address}: {exc}") from None

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        conn = self._conns.get(dst)
        if conn is None:
            errors["NoConnection"] += len(batch.frames)
            return 0
        return self.send_stamped(dst, batch, errors, conn.send_bytes)

    def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()
