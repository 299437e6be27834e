"""How a host's fabric is woken, and wakes the others: never by spinning (cluster/fabric.py).

* A UDP socket: the other hosts' fabrics send it a doorbell after they shipped records here or
  freed landing space for us, and their heartbeats (cluster/heartbeat.py). Datagrams carry no
  data: a lost one costs the fabric's idle timeout at most.
* A pipe: one small thread per proxy ring waits on that ring's doorbell (a POSIX semaphore,
  which cannot be selected on) and writes a byte here when a mover rang it.

`wait(timeout)` sleeps on both and returns the heartbeats that came.
"""

from __future__ import annotations

import os
import select
import socket
import threading

import posix_ipc

from cluster.heartbeat import DOORBELL

BELL_WAIT_S = 0.2  # the doorbell threads look at the stop flag this often
ADDRESS_ENV = "XPMOVE_FABRIC_ADDRESS"  # the address other hosts reach this one's doorbell at


def doorbell_address() -> str:
    """This host's address for the other hosts' doorbells: what $XPMOVE_FABRIC_ADDRESS, else
    the host name, resolves to (on one machine, any local address). Resolved here, so a name
    that does not resolve is an error at the start, on the host that has it."""
    return socket.gethostbyname(os.environ.get(ADDRESS_ENV) or socket.gethostname())


class Wakeups:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.setblocking(False)
        self.address = (doorbell_address(), self.sock.getsockname()[1])
        self.peers: list[tuple[str, int]] = []  # every host's address, by host index
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._bells: list[posix_ipc.Semaphore] = []

    def forward_bells(self, names: dict[int, str]) -> None:
        """Turn each named doorbell (a proxy ring's) into a wake-up of `wait`."""
        for nid, name in sorted(names.items()):
            bell = posix_ipc.Semaphore(name)
            self._bells.append(bell)
            thread = threading.Thread(target=self._forward, args=(bell,),
                                      name=f"fabric-bell-{nid}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _forward(self, bell: posix_ipc.Semaphore) -> None:
        while not self._stop.is_set():
            try:
                bell.acquire(BELL_WAIT_S)
            except posix_ipc.BusyError:
                continue
            self.wake()

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # a full pipe already wakes the fabric

    def ring(self, host: int, datagram: bytes = DOORBELL) -> None:
        """Send `host`'s fabric a datagram (a doorbell by default)."""
        try:
            self.sock.sendto(datagram, self.peers[host])
        except OSError:
            pass  # a lost datagram costs the idle timeout; the next heartbeat goes again

    def wait(self, timeout: float) -> list[bytes]:
        """Sleep until a datagram, a forwarded doorbell or `timeout`; the datagrams read."""
        select.select([self.sock.fileno(), self._wake_r], [], [], timeout)
        return self.poll()

    def poll(self) -> list[bytes]:
        """The datagrams that came (never waits); forwarded doorbells are cleared."""
        datagrams = []
        try:
            while True:
                datagrams.append(self.sock.recv(65536))
        except BlockingIOError:
            pass
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        return datagrams

    def stop(self) -> None:
        """End the doorbell threads; idempotent."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def close(self) -> None:
        self.stop()
        self.sock.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        for bell in self._bells:
            bell.close()
        self._bells = []
