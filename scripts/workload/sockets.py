"""The prior art over TCP sockets: partition to partition, or through the virtual switch.

* ``tcp`` -- partitions talk to each other directly over TCP on loopback (`TcpLinks` to send,
  `TcpListener` to receive).
* ``vswitch`` -- the virtual LAN of Fig 7B: every partition holds one TCP connection to the
  virtual switch (scripts/loadgen/vswitch.py), which forwards each frame to the connection of
  its destination ID (`SwitchPort` sends and receives).

A packet travels as a frame (frames.py); a batch's frames go in ONE ``sendall``.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import Counter

from partitions.blocks import BlockHandler
from scripts.workload.frames import FrameError, FrameReader, FrameStamper, hello_frame
from scripts.workload.transports import Batch, ReceiveEndpoint, SendTransport, TransportError

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 10.0


def recv_into_reader(sock: socket.socket, reader: FrameReader) -> int:
    """One receive call into the reader; 0 means the peer closed."""
    with reader.recv_buffer() as buf:
        n = sock.recv_into(buf)
    reader.wrote(n)
    return n


def connect(port: int, timeout: float = CONNECT_TIMEOUT_S, host: str = LOOPBACK
            ) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _FrameSender(FrameStamper):
    """Shared by tcp and vswitch: number the frames of a batch and send them in one sendall."""

    def _socket_for(self, dst: int) -> socket.socket:
        raise NotImplementedError

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        """Stamp and send the batch in ONE sendall (see send_stamped)."""
        try:
            sock = self._socket_for(dst)
        except KeyError:
            errors["NoConnection"] += len(batch.frames)
            return 0
        return self.send_stamped(dst, batch, errors, sock.sendall)


class _SocketEndpoint(ReceiveEndpoint):
    """A poll set over connections, each with its FrameReader; frames go to the handler.

    `select.poll`, not `selectors`: one C call per wake-up. The selectors wrapper's Python
    (timeout arithmetic, a key object per ready socket) was a measurable share of receiving a
    few small frames, which is what a wake-up brings at one packet per send.
    """

    def __init__(self) -> None:
        self._poll = select.poll()
        # fd -> (socket, its reader); no reader: a listening socket (see TcpListener)
        self._conns: dict[int, tuple[socket.socket, FrameReader | None]] = {}
        self.protocol_errors = 0

    def _watch(self, sock: socket.socket, reader: FrameReader | None) -> None:
        self._conns[sock.fileno()] = (sock, reader)
        self._poll.register(sock, select.POLLIN)

    def _add(self, sock: socket.socket, reader: FrameReader | None = None) -> None:
        self._watch(sock, reader or FrameReader())

    def _drop(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._conns.pop(fd, None) is not None:
            self._poll.unregister(fd)
        _shutdown(sock)

    def _receive(self, sock: socket.socket, reader: FrameReader, handler: BlockHandler) -> int:
        """One receive call on a readable connection, then every whole frame to `handler`."""
        try:
            if recv_into_reader(sock, reader) == 0:
                self._drop(sock)
                return 0
            return reader.drain(handler)
        except (OSError, FrameError):
            self.protocol_errors += 1
            self._drop(sock)
            return 0

    def _accept(self, listener: socket.socket) -> None:
        """A listening socket is readable (only endpoints that listen watch one)."""
        raise NotImplementedError

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        n = 0
        for fd, _ in self._poll.poll(timeout * 1000):
            conn = self._conns.get(fd)
            if conn is None:
                continue
            sock, reader = conn
            if reader is None:
                self._accept(sock)
            else:
                n += self._receive(sock, reader, handler)
        return n

    def close(self) -> None:
        for sock, _ in list(self._conns.values()):
            self._drop(sock)


# -- tcp: partition to partition --------------------------------------------------------------


class TcpListener(_SocketEndpoint):
    """Accepts connections from peers on 127.0.0.1; each starts with a hello frame."""

    channel = "tcp"

    def open(self, host: str = LOOPBACK) -> int:
        """Listen on an ephemeral port of `host` (default loopback; on a cluster the host's
        real address) and return it (a fresh one per run)."""
        self.close()
        listener = socket.create_server((host, 0), backlog=64)
        listener.setblocking(False)
        self._watch(listener, None)
        return listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._add(conn, _HelloReader())


class _HelloReader(FrameReader):
    """A FrameReader that expects (and swallows) one hello frame before any packet."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: int | None = None

    def drain(self, handler: BlockHandler) -> int:
        if self.peer is None:
            header = self.frame()
            if header is None:
                return 0
            dst, src, _seq, length = header
            if dst != 0 or length != 0:
                raise FrameError(f"expected a hello frame, got destination {dst} length {length}")
            self.peer = src
            self.consume()
        return super().drain(handler)


class TcpLinks(_FrameSender, SendTransport):
    """One TCP connection to each peer's listener (opened per run, closed after it)."""

    name = "tcp"
    channel = "tcp"

    def __init__(self, network_id: int):
        super().__init__(network_id)
        self._socks: dict[int, socket.socket] = {}

    def connect(self, ports: dict[int, int | tuple[str, int]]) -> None:
        """Connect to each peer's listener: a loopback port, or (address, port) for a peer on
        another host."""
        for peer, where in ports.items():
            if peer in self._socks:
                continue
            host, port = where if isinstance(where, tuple) else (LOOPBACK, where)
            try:
                sock = connect(port, host=host)
                sock.sendall(hello_frame(self.network_id))
            except OSError as exc:
                raise TransportError(f"tcp: cannot connect to partition {peer} on "
                                     f"{host}:{port}: {exc}") from None
            self._socks[peer] = sock

    def _socket_for(self, dst: int) -> socket.socket:
        return self._socks[dst]

    def close(self) -> None:
        socks, self._socks = self._socks, {}
        for sock in socks.values():
            _shutdown(sock)


# -- vswitch: through the hypervisor's virtual switch -----------------------------------------


class SwitchPort(_FrameSender, SendTransport, _SocketEndpoint):
    """This partition's single connection to the virtual switch: sends and receives on it."""

    name = "vswitch"
    channel = "vswitch"

    def __init__(self, network_id: int):
        _FrameSender.__init__(self, network_id)
        _SocketEndpoint.__init__(self)
        self._sock: socket.socket | None = None

    def connect(self, port: int, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect, say hello and wait for the switch's acknowledgement (we are reachable)."""
        if self._sock is not None:
            return
        reader = FrameReader()
        try:
            sock = connect(port, timeout)
            sock.sendall(hello_frame(self.network_id))
            sock.settimeout(timeout)
            deadline = time.monotonic() + timeout
            while (header := reader.frame()) is None:
                if time.monotonic() > deadline or recv_into_reader(sock, reader) == 0:
                    raise TransportError(f"vswitch on port {port} closed before acknowledging")
            sock.settimeout(None)
        except OSError as exc:
            raise TransportError(f"vswitch: cannot connect on {LOOPBACK}:{port}: {exc}") from None
        if header != (self.network_id, 0, 0, 0):
            _shutdown(sock)
            raise TransportError(f"vswitch refused network ID {self.network_id}: {header}")
        reader.consume()
        self._sock = sock
        self._add(sock, reader)

    def _socket_for(self, dst: int) -> socket.socket:
        if self._sock is None:
            raise KeyError(dst)
        return self._sock

    def close(self) -> None:
        _SocketEndpoint.close(self)
        self._sock = None
