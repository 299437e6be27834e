"""The virtual switch of the prior art (Fig 7B): a virtual LAN run by the hypervisor.

Every partition holds one TCP connection to this process on 127.0.0.1 and sends frames
(scripts/workload/frames.py: FRAME header with the destination and source network IDs, then the
payload); the switch reads each frame, looks its destination up and forwards the whole frame
to that partition's connection. It is what a packet crosses when partitions talk through a
network stack instead of the cross-partition adapter: two more socket copies and a user-space
hop per packet.

One thread, one `selectors` loop, non-blocking sockets. Each connection has a bounded outgoing
buffer; back-pressure is "stop reading a source while its destination's buffer is full", so
memory stays bounded (OUT_LIMIT + one frame per connection, plus each reader's buffer) however
fast the senders are. A connection's first frame is a hello naming its network ID, answered by
an acknowledgement frame; a frame whose source is not the connection's ID is dropped (no
spoofing), a frame to an unknown ID is dropped and counted, a malformed stream closes the
connection.

Started by the load generator (scripts/loadgen/vswitch_process.py: VSwitchProcess): prints
``vswitch listening <host> <port>`` on stdout once ready; stops when its stdin reaches EOF
(the parent closed it or died) and then prints one JSON line with its counters.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
from collections import Counter
from dataclasses import dataclass, field

from scripts.workload.frames import FRAME, FrameError, FrameReader
from scripts.workload.sockets import LOOPBACK

OUT_LIMIT = 256 << 10  # bytes queued for a destination before its sources stop being read
# (a frame is queued whenever less than OUT_LIMIT waits, so frames of any size pass)
DIRECT_SEND = 64 << 10  # frames at least this big try a direct send before being queued
SELECT_TIMEOUT_S = 1.0


@dataclass(eq=False)
class Port:
    sock: socket.socket
    reader: FrameReader = field(default_factory=FrameReader)
    network_id: int | None = None
    out: bytearray = field(default_factory=bytearray)
    out_pos: int = 0
    blocked_on: Port | None = None  # the full destination this source waits for
    waiters: set = field(default_factory=set)  # sources waiting for room here
    events: int = 0
    closed: bool = False

    @property
    def pending(self) -> int:
        return len(self.out) - self.out_pos


class Switch:
    def __init__(self, listener: socket.socket, control_fd: int | None):
        self.listener = listener
        self.control_fd = control_fd
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, "listener")
        if control_fd is not None:
            self.selector.register(control_fd, selectors.EVENT_READ, "control")
        self.ports: dict[int, Port] = {}  # by network ID, once the hello arrived
        self.connections: set[Port] = set()
        self.counters: Counter = Counter()
        self.running = True

    # -- selector bookkeeping ------------------------------------------------------------
    def _update(self, port: Port) -> None:
        if port.closed:
            return
        events = 0
        if port.blocked_on is None:
            events |= selectors.EVENT_READ
        if port.pending:
            events |= selectors.EVENT_WRITE
        if events == port.events:
            return
        if port.events == 0:
            self.selector.register(port.sock, events, port)
        elif events == 0:
            self.selector.unregister(port.sock)
        else:
            self.selector.modify(port.sock, events, port)
        port.events = events

    def _close(self, port: Port, why: str) -> None:
        if port.closed:
            return
        if port.events:
            self.selector.unregister(port.sock)
            port.events = 0
        port.closed = True
        self.connections.discard(port)
        self.counters[f"closed: {why}"] += 1
        if port.network_id is not None and self.ports.get(port.network_id) is port:
            del self.ports[port.network_id]
        if port.blocked_on is not None:
            port.blocked_on.waiters.discard(port)
        port.sock.close()
        for waiter in list(port.waiters):  # nothing will drain here any more: let them go
            waiter.blocked_on = None
            self._forward(waiter)
            self._update(waiter)
        port.waiters.clear()

    # -- forwarding ----------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.counters["connections"] += 1
        port = Port(sock)
        self.connections.add(port)
        self._update(port)

    def _on_read(self, port: Port) -> None:
        try:
            with port.reader.recv_buffer() as buf:
                n = port.sock.recv_into(buf)
        except BlockingIOError:
            return
        except (OSError, FrameError) as exc:
            self._close(port, type(exc).__name__)
            return
        if n == 0:
            self._close(port, "eof")
            return
        port.reader.wrote(n)
        self._forward(port)

    def _hello(self, port: Port, dst: int, src: int, length: int) -> None:
        if dst != 0 or length != 0 or src == 0 or src in self.ports:
            self._close(port, "bad hello")
            return
        port.network_id = src
        self.ports[src] = port
        self._enqueue(port, memoryview(FRAME.pack(src, 0, 0, 0)))

    def _forward(self, src_port: Port) -> None:
        """Forward every whole frame buffered from `src_port`, until a destination is full."""
        reader = src_port.reader
        touched: set[Port] = set()
        while not src_port.closed:
            try:
                header = reader.frame()
            except FrameError:
                self._close(src_port, "FrameError")
                break
            if header is None:
                break
            dst, src, _seq, length = header
            if src_port.network_id is None:
                reader.consume()
                self._hello(src_port, dst, src, length)
                continue
            if src != src_port.network_id:
                self.counters["dropped_spoofed"] += 1
                reader.consume()
                continue
            dst_port = self.ports.get(dst)
            if dst_port is None:
                self.counters["dropped_unknown_destination"] += 1
                reader.consume()
                continue
            if dst_port.pending >= OUT_LIMIT:
                src_port.blocked_on = dst_port  # back-pressure: stop reading this source
                dst_port.waiters.add(src_port)
                self.counters["back_pressure"] += 1
                break
            with reader.frame_view() as frame:
                self._enqueue(dst_port, frame, flush=False)
            touched.add(dst_port)
            reader.consume()
            self.counters["frames"] += 1
            self.counters["bytes"] += length
        for port in touched:
            self._flush(port)
        self._update(src_port)

    def _enqueue(self, port: Port, frame: memoryview, flush: bool = True) -> None:
        if port.closed:
            self.counters["dropped_closed_destination"] += 1
            return
        if not port.pending and len(frame) >= DIRECT_SEND:
            try:
                n = port.sock.send(frame)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._close(port, type(exc).__name__)
                return
            frame = frame[n:]
            if not len(frame):
                return
        port.out += frame
        if flush:
            self._flush(port)

    def _flush(self, port: Port) -> None:
        while port.pending and not port.closed:
            try:
                with memoryview(port.out) as mv, mv[port.out_pos:] as rest:
                    n = port.sock.send(rest)
            except BlockingIOError:
                break
            except OSError as exc:
                self._close(port, type(exc).__name__)
                return
            port.out_pos += n
        if not port.pending:
            port.out.clear()
            port.out_pos = 0
        elif port.out_pos >= OUT_LIMIT:
            del port.out[:port.out_pos]
            port.out_pos = 0
        if port.pending < OUT_LIMIT and port.waiters:
            waiters, port.waiters = port.waiters, set()
            for waiter in waiters:
                waiter.blocked_on = None
                self._forward(waiter)
        self._update(port)

    # -- loop ----------------------------------------------------------------------------
    def run(self) -> None:
        while self.running:
            for key, events in self.selector.select(SELECT_TIMEOUT_S):
                if key.data == "listener":
                    self._accept()
                elif key.data == "control":
                    if not os.read(self.control_fd, 4096):
                        self.running = False
                else:
                    port: Port = key.data
                    if events & selectors.EVENT_WRITE and not port.closed:
                        self._flush(port)
                    if events & selectors.EVENT_READ and not port.closed \
                            and port.blocked_on is None:
                        self._on_read(port)

    def shutdown(self) -> dict:
        for port in list(self.connections):
            self._close(port, "switch stopping")
        self.listener.close()
        return {"counters": dict(self.counters)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xpmove virtual switch (started by the bench)")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates shutdown
    listener = socket.create_server((LOOPBACK, args.port), backlog=64)
    listener.setblocking(False)
    switch = Switch(listener, sys.stdin.fileno())
    print(f"vswitch listening {LOOPBACK} {listener.getsockname()[1]}", flush=True)
    try:
        switch.run()
    finally:
        print(json.dumps(switch.shutdown()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
