"""Control channel between the hypervisor and its children: length-prefixed JSON frames.

JSON, never pickle (Invariant 6): a child's message is data, not code. Frames are limited to
MAX_MESSAGE bytes; anything longer is a protocol violation. The channel is an AF_UNIX socket
pair so that file descriptors can be passed later (e.g. fresh adapter pipes).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import posix_ipc

T = TypeVar("T")
LENGTH = struct.Struct("<I")
MAX_MESSAGE = 1 << 20


class ControlError(Exception):
    """The peer closed the channel or sent something that is not a control frame."""


def encode_message(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ControlError(f"control message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return LENGTH.pack(len(body)) + body


class MessageReader:
    """Incremental decoder (pure): feed bytes, take whole messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> dict | None:
        if len(self._buffer) < LENGTH.size:
            return None
        (n,) = LENGTH.unpack_from(self._buffer)
        if n > MAX_MESSAGE:
            raise ControlError(f"control frame of {n} bytes exceeds {MAX_MESSAGE}")
        if len(self._buffer) < LENGTH.size + n:
            return None
        body = bytes(self._buffer[LENGTH.size:LENGTH.size + n])
        del self._buffer[:LENGTH.size + n]
        try:
            message = json.loads(body)
        except ValueError as exc:
            raise ControlError(f"control frame is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ControlError(f"control frame is not an object: {type(message).__name__}")
        return message


MAX_FDS = 16
# A child that cannot find its machine's names waits this long for its channel to close: a
# start undone under it (a Ctrl-C) closes it at once; a hypervisor that still waits for the
# child's "ready" does not, and the child's failure is then a fault, reported in full.
UNDONE_WAIT_S = 2.0


def unless_undone(attach: Callable[[], T], control_fd: int) -> T | None:
    """A child's `attach()` to its machine (the segment, the semaphores); None if the machine's
    names are gone because its start was undone under the child (a Ctrl-C right after the
    spawn: the hypervisor closed the child's channel and unlinked them, possibly before the
    child registered with it). Names gone while the channel stays open are a fault: raised."""
    try:
        return attach()
    except posix_ipc.ExistentialError:
        if closed_within(control_fd):
            return None
        raise


def closed_within(fd: int, seconds: float = UNDONE_WAIT_S) -> bool:
    """Whether the peer of the control socket `fd` closes it within `seconds` (its end of
    file), taking none of its data: how a child that cannot attach to its machine tells a
    start undone under it from a fault."""
    deadline = time.monotonic() + seconds
    with socket.socket(fileno=os.dup(fd)) as sock:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([sock], [], [], left)[0]:
                try:
                    return sock.recv(1, socket.MSG_PEEK) == b""
                except OSError:  # reset by a peer that is gone
                    return True
    return False


class Channel:
    """A blocking control channel on one end of a socket pair.

    A message may carry file descriptors (SCM_RIGHTS): the sender sets "fds": n and the n
    descriptors travel with its bytes; the receiver finds them as a list under "fds".
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._reader = MessageReader()
        self._fds: list[int] = []
        self._send_lock = threading.Lock()  # whole frames, even from two threads

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
        try:
            with self._send_lock:
                if fds:
                    data = encode_message({**message, "fds": len(fds)})
                    sent = socket.send_fds(self.sock, [data], list(fds))
                    self.sock.sendall(data[sent:])
                else:
                    self.sock.sendall(encode_message(message))
        except OSError as exc:
            raise ControlError(f"control channel closed: {exc}") from None

    def _recv(self, flags: int = 0) -> bytes:
        data, fds, _, _ = socket.recv_fds(self.sock, 65536, MAX_FDS, flags)
        self._fds.extend(fds)
        return data

    def _next(self) -> dict | None:
        message = self._reader.next_message()
        if message is not None and "fds" in message:
            n = int(message["fds"])
            if n > len(self._fds):
                raise ControlError(f"message announces {n} descriptors, {len(self._fds)} came")
            message["fds"], self._fds = self._fds[:n], self._fds[n:]
        return message

    def receive(self, timeout: float | None = None) -> dict | None:
        """The next message, or None if `timeout` passes first. Raises ControlError on EOF."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._next()
            if message is not None:
                return message
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                return None
            try:
                data = self._recv()
            except OSError as exc:
                raise ControlError(f"control channel closed: {exc}") from None
            if not data:
                raise ControlError("control channel closed by peer")
            self._reader.feed(data)

    def feed_available(self) -> bool:
        """Read what is available (for select loops: call it only when the socket is readable;
        MSG_DONTWAIT alone does not keep recvmsg from blocking here). False on EOF."""
        try:
            data = self._recv(socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self._reader.feed(data)
        return True

    def pending(self) -> dict | None:
        return self._next()

    def close(self) -> None:
        self.sock.close()
