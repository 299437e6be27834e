"""Leases: a standing grant on one destination, for a program that sends there often and
wants each packet on its way at once.

`port.lease(dst)` asks the adapter once for the destination's lock (Op.LEASE) and keeps it:
each `lease.send(data)` then commits one record in the destination's ring with no request at
all (the driver does the adapter's Fig 11 steps itself, partitions/leasing.py), so a lone
packet costs one wake-up, the receiver's, as over a socket. The lease is given back by
`close()` (or leaving the `with` block), and whenever another sender (another partition, or
this one's own queued sends) needs the destination: the adapter recalls it, the driver gives
it back between two commits, and the next `send` asks for it again, waiting its turn like any
move. So once another sender waits, a lease carries at most the packet being sent (each grant
carries at least one, so two lessees cannot hand it back and forth with nothing sent), after
a grant at least 1 ms old (Engine: LEASE_MIN_HOLD_S).

    with port.lease(2) as lease:
        for packet in packets:
            lease.send(packet)

The rules:

* Exactly once and in order: each send is one record with the pair's next sequence number,
  committed before `send` returns (a `Sent`), or not written at all (an exception). Packets
  the port had queued for any destination go first (the queue is flushed before the lease is
  taken and before a send when it holds any).
* Errors are a send's: `DestinationFull` and `LockTimeout` are retried until `timeout`
  (None: until the machine stops), `DestinationDown`/`DestinationGone` if the destination
  died, `TooLarge`/`BadCount` for a packet no record could hold. A send on a closed lease
  raises LeaseClosed. A holder that keeps a recalled lease past `grant_timeout_s` (it cannot:
  the driver answers recalls on its own thread) is killed as a stuck one.
* One lease per destination per partition: two `Lease` objects for one destination share it,
  and closing one gives it back for both (the other asks again at its next send).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from adapter.errors import BadCount, TooLarge, XpmoveError
from partitions.driver import Driver, Sent, retrying
from partitions.leasing import HeldLease


class LeaseClosed(XpmoveError):
    """A send on a lease that was closed (never on the wire: the adapter does not see it)."""


class Lease:
    """A standing grant on `dst` (see the module docstring); made by `Port.lease`."""

    def __init__(self, driver: Driver, dst: int, max_record: int,
                 before_send: Callable[[], None], stopping: Callable[[threading.Event | None],
                                                                     Callable[[], bool]]):
        self.dst = dst
        self._driver = driver
        self._max_record = max_record
        self._before_send = before_send
        self._stopping = stopping
        self._held: HeldLease | None = None
        self._closed = False

    def acquire(self, timeout: float | None, cancel: threading.Event | None = None) -> None:
        """Ask for the lease now (Port.lease does): errors at once, the first send fast."""
        outcome = retrying(lambda reply_by: self._driver.take_lease(self.dst, reply_by),
                           float("inf") if timeout is None else timeout, self._stopping(cancel))
        if isinstance(outcome, XpmoveError):
            raise outcome
        self._held = outcome

    @property
    def held(self) -> bool:
        """Whether the driver holds the lease right now (a recall may end it at any time)."""
        return self._held is not None and self._held.held

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None,
             cancel: threading.Event | None = None) -> Sent:
        """Commit `data` as ONE record at the destination: the lease's path (one copy, no
        request) while it is held, else the lease is asked for again first. Returns the `Sent`
        with its sequence number; raises the typed error (nothing sent) otherwise."""
        if self._closed:
            raise LeaseClosed(f"the lease on network ID {self.dst} is closed; nothing was sent")
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        count = len(view)
        if count < 1:
            raise BadCount(f"send to network ID {self.dst}: nothing to send ({count} bytes)")
        if count > self._max_record:
            raise TooLarge(f"send of {count} bytes to network ID {self.dst}: its records hold "
                           f"at most {self._max_record}")
        self._before_send()
        driver, held = self._driver, self._held
        if held is not None and held.held:  # the common case: no retry loop, no closure
            seq = driver.lease_send(held, view)
            if not isinstance(seq, XpmoveError):
                return Sent(self.dst, seq, count)
        outcome = retrying(lambda reply_by: self._attempt(view, reply_by),
                           float("inf") if timeout is None else timeout, self._stopping(cancel))
        if isinstance(outcome, XpmoveError):
            raise outcome
        return Sent(self.dst, outcome, count)

    def _attempt(self, view: memoryview, reply_by: float | None) -> int | XpmoveError:
        held = self._driver.take_lease(self.dst, reply_by)
        if isinstance(held, XpmoveError):
            return held
        self._held = held
        return self._driver.lease_send(held, view)

    def close(self) -> None:
        """Give the lease back (if held); later sends raise LeaseClosed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._held is not None:
            self._driver.end_lease(self._held)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
