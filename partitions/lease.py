"""Leases: a standing grant on one destination, for a program that sends there often and
wants each packet on its way at once.

`port.lease(dst)` asks the adapter once for the destination's lock (Op.LEASE) and keeps it:
each `lease.send(data)` then commits one record in the destination's ring with no request at
all (the driver does the adapter's Fig 11 steps itself, partitions/leasing.py), so a lone
packet costs one wake-up, the receiver's, as over a socket. The lease is given back by
`close()` (or leaving the `with` block), and whenever another sender (another partition, or
this one's own queued sends) needs the destination: the adapter recalls it and the driver
gives it back between two commits. So once another sender waits, a lease carries at most the
packet being sent (each grant carries at least one, so two lessees cannot hand it back and
forth with nothing sent: the keeper leaves a fresh lease's recall to its first commit, for up
to 1 ms, leasing.py). A lease lost to a recall is contended: for CONTENDED_S the Lease's
sends go as the port's synchronous Fig 11 sends (one request each, cheaper than a lease
handed back and forth), then the next send asks for the lease again, waiting its turn like
any move. Such a send is staged in the port's cork area (the top of the send space, which
the program keeps clear), so only packets that fit it go this way, and, like
`send(sync=True)`, it holds the port's staging lock until committed. Loans under a lease
always take the lease.

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
* Loans under a lease: `lease.loan(n)` / `lease.loan_run(packets, length)` lend the record's
  bytes in the destination's ring as `Port.loan` does (partitions/loan.py: the same `Loan`,
  the same rules), with no request to the adapter: the program fills it in place and
  `commit()` publishes it, so a batch costs neither a copy nor a round trip. While a loan is
  open the lease is not given back (a recall waits for the loan's end, and the holder still
  has `grant_timeout_s` from the recall), and the lease's other sends wait.
* One lease per destination per partition: two `Lease` objects for one destination share it,
  and closing one gives it back for both (the other asks again at its next send), unless
  the other has a loan open: then the lease stays until a recall (or that loan's end, if the
  recall came first).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from adapter.errors import BadCount, TooLarge, XpmoveError
from adapter.ring import check_run_shape, run_shape_ok, run_size
from partitions.driver import Driver, Sent
from partitions.leasing import HeldLease, LeaseLost
from partitions.lending import Granted
from partitions.loan import Loan, LoanHeld, LoanRun
from partitions.waiting import ROOM_WAIT_S, RoomWait, retrying, time_left

LoanT = TypeVar("LoanT", bound=Loan)
Move = Callable[[memoryview, "float | None", "threading.Event | None"], Sent]
# A lease handed back and forth between senders costs a LEASE request and a recall per packet
# or so; a synchronous Fig 11 send costs one request. So once the lease is recalled, this long
# of sends go as those sends; then the next send asks for the lease again. Measured with
# `xpmove launch --flows fig12-lease --duration 4` (all-to-all, 1 KiB, one packet per call):
# 40-45 k packets, 6.6 k per CPU-second, when every send asked for the lease again; 50-58 k,
# 7.2-8.6 k with this at 2 ms, 10 ms or 50 ms alike; a synchronous send alone 61 k, 8.4 k. The
# shorter it is, the less a sender with one main destination pays per recall by an occasional
# other sender (each costs it CONTENDED_S of sends at a request each).
CONTENDED_S = 0.01
monotonic = time.monotonic  # the clock of CONTENDED_S (a test's to replace)


def refuse_if_lent(driver: Driver, what: str) -> None:
    """LoanHeld if the calling thread holds a loan under any lease of `driver`: `what` would
    wait for that loan itself (Port and Lease ask; one read of an empty set otherwise)."""
    if driver.lent_leases:
        leased = driver.lent_by(threading.get_ident())
        if leased is not None:
            raise LoanHeld(f"{what}: this thread holds a loan under the lease on network ID "
                           f"{leased.dst_id}; commit or give it back first (the {what} would "
                           f"wait for the loan itself)")


class LeaseClosed(XpmoveError):
    """A send on a lease that was closed (never on the wire: the adapter does not see it)."""


class Lease:
    """A standing grant on `dst` (see the module docstring); made by `Port.lease`."""

    def __init__(self, driver: Driver, dst: int, max_record: int,
                 before_send: Callable[[], None], stopping: Callable[[threading.Event | None],
                                                                     Callable[[], bool]],
                 on_loan: Callable[[Loan, bool], None] = lambda loan, is_open: None,
                 move: Move | None = None, move_max: int = 0):
        """`move(view, timeout, cancel)`: the port's synchronous Fig 11 send to `dst`, used
        for packets of up to `move_max` bytes instead of the lease while it is contended
        (CONTENDED_S); None: always the lease."""
        self.dst = dst
        self._move = move
        self._move_max = move_max if move is not None else 0
        self._moves_until = 0.0  # sends go as moves until then (the lease was lost)
        self._lost_token = 0  # the token of the grant whose loss began that window
        self._on_loan = on_loan  # told of each loan's start and end (the port's book)
        self._driver = driver
        self._room = driver.room(dst)  # the driver's rooms are fixed when it is made
        self._max_record = max_record
        self._before_send = before_send
        self._stopping = stopping
        self._held: HeldLease | None = None
        self._closed = False
        self._loan: Loan | None = None  # this lease's open loan, and the thread holding it
        self._loan_thread: int | None = None

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
        request) while it is held; for CONTENDED_S after a recall, a synchronous Fig 11 send;
        else the lease is asked for again first. Returns the `Sent` with its sequence number;
        raises the typed error (nothing sent) otherwise."""
        self._check_usable("send")
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
        driver, held, room = self._driver, self._held, self._room
        started = time.monotonic()
        tried: tuple[int | XpmoveError, int] | None = None
        if held is not None and held.held:  # the common case: no retry loop, no closure
            mark = room.mark() if room is not None else 0  # before the try, as retrying's
            seq = driver.lease_send(held, view)
            if not isinstance(seq, XpmoveError):
                return Sent(self.dst, seq, count)
            tried = seq, mark  # judged by retrying as its first try: no second one at once
        if count <= self._move_max and self._contended(held):
            assert self._move is not None
            return self._move(view, timeout, cancel)
        outcome = retrying(lambda reply_by: self._attempt(view, reply_by),
                           time_left(timeout, started), self._stopping(cancel), room, tried)
        if isinstance(outcome, XpmoveError):
            raise outcome
        return Sent(self.dst, outcome, count)

    def _contended(self, held: HeldLease | None) -> bool:
        """Whether this send goes as a Fig 11 move: the lease was lost (recalled: another
        sender waits for the destination; or given back by another Lease object on it) less
        than CONTENDED_S ago. Reads only: `held` is the driver's one record of the lease on
        this destination, shared by every thread and Lease object; each grant has its own
        token, so a loss starts one window however many threads see it."""
        now = monotonic()
        if held is not None and not held.held and held.token != self._lost_token:
            self._lost_token = held.token
            self._moves_until = now + CONTENDED_S
        return now < self._moves_until

    def _attempt(self, view: memoryview, reply_by: float | None) -> int | XpmoveError:
        held = self._holding(reply_by)
        return held if isinstance(held, XpmoveError) else self._driver.lease_send(held, view)

    def _holding(self, reply_by: float | None) -> HeldLease | XpmoveError:
        """The lease, asked for again if it is not held."""
        held = self._driver.take_lease(self.dst, reply_by)
        if not isinstance(held, XpmoveError):
            self._held = held
        return held

    def _check_usable(self, what: str) -> None:
        if self._closed:
            raise LeaseClosed(f"{what}: the lease on network ID {self.dst} is closed; nothing "
                              f"was sent")
        refuse_if_lent(self._driver, what)  # another Lease object may share this one

    # -- loans under the lease: filled in place, committed with no request ------------------
    def loan(self, count: int, timeout: float | None = None,
             cancel: threading.Event | None = None, uninit: bool = False) -> Loan:
        """Lend `count` bytes of the destination's ring for ONE packet, as `Port.loan` does
        but with no request: `with lease.loan(n) as buf: buf[:] = ...` commits on a normal
        exit. Waits (retrying, like `send`) for room and for the lease."""
        if count < 1 or count > self._max_record:
            raise (BadCount if count < 1 else TooLarge)(
                f"loan of {count} bytes under the lease on network ID {self.dst}: allowed "
                f"1..{self._max_record}")
        return self._lend("loan", count, None, timeout, cancel, uninit,
                          lambda g, end: Loan(self._driver, g, self._loan_ended, end))

    def loan_run(self, packets: int, length: int, timeout: float | None = None,
                 cancel: threading.Event | None = None, uninit: bool = False) -> LoanRun:
        """`loan` for a run of `packets` packets of `length` bytes (`loan.packet(i)`), ONE
        record of `packets` sequence numbers, as `Port.loan_run` but with no request."""
        count = length if packets == 1 else run_size(packets, length)
        if not run_shape_ok(packets, length) or count > self._max_record:
            what = (f"loan_run of {packets} packets of {length} bytes under the lease on "
                    f"network ID {self.dst}")
            check_run_shape(packets, length, what)
            raise TooLarge(f"{what}: {count} bytes, its records hold at most "
                           f"{self._max_record}")
        run = None if packets == 1 else (packets, length)
        return self._lend("loan_run", count, run, timeout, cancel, uninit,
                          lambda g, end: LoanRun(self._driver, g, self._loan_ended, packets,
                                                 length, end))

    def _lend(self, what: str, count: int, run: tuple[int, int] | None, timeout: float | None,
              cancel: threading.Event | None, uninit: bool,
              make: Callable[[Granted, Callable[[Granted, bool], XpmoveError | None]], LoanT]
              ) -> LoanT:
        self._check_usable(what)
        self._before_send()
        driver, held, room = self._driver, self._held, self._room
        started = time.monotonic()
        tried: tuple[Granted | XpmoveError, int] | None = None
        if held is not None and held.held:  # the common case: no retry loop, no closure
            mark = self._room_first(room, held, count, timeout, cancel)
            tried = driver.lease_loan(held, count, run, uninit), mark
        if tried is not None and not isinstance(tried[0], XpmoveError):
            granted = tried[0]
        else:
            def attempt(reply_by: float | None) -> Granted | XpmoveError:
                held = self._holding(reply_by)  # the held lease at once, else a LEASE request
                if isinstance(held, XpmoveError):
                    return held
                return driver.lease_loan(held, count, run, uninit)

            outcome = retrying(attempt, time_left(timeout, started), self._stopping(cancel),
                               room, tried)
            if isinstance(outcome, XpmoveError):
                raise outcome
            granted, held = outcome, self._held
        assert held is not None and held.lent is not None
        opened = held.lent  # this loan's: only its own end may end it

        def end(granted: Granted, commit: bool) -> XpmoveError | None:
            return driver.end_lease_loan(held, opened, granted, commit)

        try:
            loan = make(granted, end)
        except BaseException:
            end(granted, False)
            raise
        self._loan, self._loan_thread = loan, threading.get_ident()
        self._on_loan(loan, True)
        if self._closed:  # closed by another thread while this one was lent to: close saw
            loan.give_back()  # no loan, so this one is ours to undo (and the lease with it)
            raise LeaseClosed(f"{what}: the lease on network ID {self.dst} was closed while "
                              f"the loan was made; nothing was lent")
        return loan

    def _room_first(self, room: RoomWait | None, held: HeldLease, count: int,
                    timeout: float | None, cancel: threading.Event | None) -> int:
        """Before a loan under the held lease: if its ring has no room for `count` bytes (in
        the steady state of a run a time, the receiver still reads the last run), wait for
        the receiver's room bell here, where asking would be refused first (at most
        ROOM_WAIT_S and `timeout`; not with a timeout of 0 or a cancel set). Returns the room
        mark for the try that follows (`retrying`'s, if it is refused after all)."""
        if room is None:
            return 0
        mark = room.mark()  # before the look, as `retrying` marks before a try
        if ((timeout is None or timeout > 0) and not (cancel is not None and cancel.is_set())
                and not self._driver.lease_has_room(held, count)):
            room.wait(mark, ROOM_WAIT_S if timeout is None else min(ROOM_WAIT_S, timeout))
            mark = room.mark()
        return mark

    def _loan_ended(self, loan: Loan) -> None:
        self._on_loan(loan, False)
        if self._loan is loan:
            self._loan = self._loan_thread = None
        if self._closed and self._held is not None:  # close() left it to this loan's end
            self._driver.end_lease(self._held)

    def close(self) -> None:
        """Give the lease back (if held); later sends raise LeaseClosed. Idempotent. An open
        loan of this lease is given back first if this thread holds it (LoanExported, nothing
        changed, while a view made from it is alive); another thread's raises LoanHeld
        (nothing changed): it is that thread's to commit or give back. A loan another thread
        is being lent as close() runs is undone there (LeaseClosed, nothing lent)."""
        if self._closed:
            return
        loan = self._loan
        if loan is not None:
            if self._loan_thread != threading.get_ident():
                raise LoanHeld(f"close: another thread holds a loan under the lease on network "
                               f"ID {self.dst} ({loan.size} bytes); it must end first")
            try:
                loan.give_back()
            except LeaseLost:
                pass  # the lease went with it: nothing was delivered, nothing to give back
        self._closed = True
        if self._held is not None:
            self._driver.end_lease(self._held)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
