"""The Port's zero-copy half: loans and leases, and the rule that a thread holding a loan
never waits for it.

`PortLoans` is a part of `Port` (partitions/port.py), kept apart because it is one idea:
lending the program the destination's own ring bytes (`loan`, `loan_run`: a Fig 12 grant
the driver finishes later, partitions/loan.py) or a standing grant it commits under with no
request (`lease`, partitions/lease.py). One loan per port at a time; the thread holding a
loan (the port's or one under a lease) gets LoanHeld for any call that would wait for it.
When the program ends, the partition gives back what is still open (`give_back_loans`).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from adapter.errors import BadCount, XpmoveError
from adapter.protocol import Flow
from adapter.ring import RUN_DESCRIPTOR, check_run_shape, run_size
from partitions.arguments import network_id, whole
from partitions.lease import Lease, refuse_if_lent
from partitions.lending import Granted
from partitions.loan import Loan, LoanEnded, LoanExported, LoanHeld, LoanRun

if TYPE_CHECKING:
    from partitions.driver import Driver, Sent
    from partitions.memory import PartitionView

LoanT = TypeVar("LoanT", bound=Loan)


class PortLoans:
    """Port's methods for loans and leases; the attributes and methods below come from Port."""

    if TYPE_CHECKING:
        memory: PartitionView
        _driver: Driver
        _staging: threading.Lock
        _max_run: dict[int, int]
        _loan: Loan | None
        _loan_thread: int | None
        _lease_loans: set[Loan]
        _cork_area: tuple[int, int]

        def _flush_before_sync(self, timeout: float | None = None,
                               what: str = "a synchronous send") -> float | None: ...

        def _send_now(self, dst: int, view: memoryview, flow: Flow | str,
                      timeout: float | None, cancel: threading.Event | None) -> Sent: ...

        def _stage_at(self, size: int, what: str) -> int: ...

        def _staged_after_queue(self, timeout: float | None, what: str
                                ) -> contextlib.AbstractContextManager[float | None]: ...

        def _queueable(self, dst: int, count: int) -> bool: ...

        def _stopping(self, cancel: threading.Event | None) -> Callable[[], bool]: ...

    # -- loans: zero-copy sends (partitions/loan.py) ------------------------------------------
    def loan(self, dst: int, count: int, timeout: float | None = None,
             cancel: threading.Event | None = None, uninit: bool = False) -> Loan:
        """Lend the program `count` bytes of partition `dst`'s receive area to write ONE packet
        in place (Fig 12 with no move): `with port.loan(dst, n) as buf: buf[:] = ...` commits
        on a normal exit (one record there, exactly once) and gives the space back if the
        block raises; or `loan.commit()` / `loan.give_back()`.

        Waits, retrying like `send`, for room and for the destination's lock, then HOLDS that
        lock until the loan ends: the destination's other senders, and this partition's other
        threads' sends, wait meanwhile, so keep loans short (a grant held too long may be
        ended by the machine). One loan per port at a time; from the thread holding it,
        another loan, a send, `flush()` or a waiting receive raises LoanHeld. `count` is
        bounded like a send's (`max_record(dst)`, the send space). The lent bytes are zeros;
        with `uninit=True` (for a program that writes every byte it commits) they may instead
        hold this partition's OWN older records to `dst`, never another partition's: the
        memset is skipped only where that is proven. See partitions/loan.py for the rules.
        """
        self._check_no_loan("loan")
        dst, count = self._check_loan_args(dst, count, f"loan of {count!r} bytes")
        timeout = self._flush_before_sync(timeout, f"loan to network ID {dst}")  # after the queue
        offset = self._stage_at(count, "a loan")  # the move's source: a range, nothing staged
        return self._take_loan(dst, offset, count, False, timeout, cancel,
                               lambda g: Loan(self._driver, g, self._loan_ended), uninit)

    def loan_run(self, dst: int, packets: int, length: int, timeout: float | None = None,
                 cancel: threading.Event | None = None, uninit: bool = False) -> LoanRun:
        """`loan`, for a multiple-write run of `packets` packets of `length` bytes: write each
        in `loan.packet(i)`, then commit (ONE record of `packets` sequence numbers). As a
        context manager it gives the loan itself. `uninit` as for `loan`."""
        self._check_no_loan("loan_run")
        what = f"loan_run of {packets!r} packets of {length!r} bytes"
        packets, length = whole(packets, what, "packets"), whole(length, what, "length")
        dst, _ = self._check_loan_args(dst, min(packets, length), what)
        check_run_shape(packets, length, what)

        def lent(granted: Granted) -> LoanRun:
            return LoanRun(self._driver, granted, self._loan_ended, packets, length)

        if packets == 1:  # as send_run does: a run of one packet is a plain record
            offset = self._stage_at(length, "a loan")
            timeout = self._flush_before_sync(timeout, f"loan_run to network ID {dst}")
            return self._take_loan(dst, offset, length, False, timeout, cancel, lent, uninit)
        size = run_size(packets, length)
        # the descriptor the adapter reads, staged as send_batch does
        with self._staged_after_queue(timeout, f"loan_run to network ID {dst}") as timeout:
            offset = self._stage_at(size, f"a loan of a run of {packets} {length}-byte packets")
            RUN_DESCRIPTOR.pack_into(self.memory.buffer(offset, RUN_DESCRIPTOR.size), 0,
                                     packets, length)
            return self._take_loan(dst, offset, size, True, timeout, cancel, lent, uninit)

    def _take_loan(self, dst: int, offset: int, count: int, run: bool, timeout: float | None,
                   cancel: threading.Event | None, lend: Callable[[Granted], LoanT],
                   uninit: bool) -> LoanT:
        outcome = self._driver.grant_retrying(
            dst, offset, count, run, timeout=float("inf") if timeout is None else timeout,
            stop=self._stopping(cancel), uninit=uninit)
        if isinstance(outcome, XpmoveError):
            raise outcome
        try:
            loan = lend(outcome)
        except BaseException:
            self._driver.end_grant(outcome, commit=False)
            raise
        self._loan, self._loan_thread = loan, threading.get_ident()
        return loan

    def _loan_ended(self, loan: Loan) -> None:
        """`loan` is over. Another thread's next loan may already be registered (the driver
        was free before this call): only `loan` itself is forgotten."""
        if self._loan is loan:
            self._loan = self._loan_thread = None

    @staticmethod
    def _check_loan_args(dst: int, count: int, what: str) -> tuple[int, int]:
        """(dst, count) as ints; typed errors naming a value that is not one, or a count < 1."""
        dst, count = network_id(dst, what), whole(count, what, "count")
        if count < 1:
            raise BadCount(f"{what}: the count must be >= 1")
        return dst, count

    def _check_no_loan(self, what: str) -> None:
        """LoanHeld if the calling thread holds this port's loan, or a loan under one of its
        leases: `what` would wait for it."""
        loan = self._loan
        if loan is not None and self._loan_thread == threading.get_ident():
            raise LoanHeld(f"{what}: this thread holds a loan to network ID {loan.dst} "
                           f"({loan.size} bytes); commit or give it back first (the {what} "
                           f"would wait for the loan itself)")
        refuse_if_lent(self._driver, what)

    def give_back_loans(self) -> list[str]:
        """Give back every loan still open on this port and under its leases, delivering
        nothing; one line per loan for a report. The partition does this when its program
        ends (an open loan holds the destination's lock, and this partition's queue waits
        behind it); a program may too, e.g. in a `finally`. A loan that a view made from it
        still keeps alive (LoanExported) cannot end: it is named as still held."""
        loans = [self._loan, *list(self._lease_loans)]  # list(): one step under the GIL
        ended = (_give_back(loan) for loan in dict.fromkeys(x for x in loans if x is not None))
        return [line for line in ended if line is not None]

    def _lease_loan(self, loan: Loan, is_open: bool) -> None:
        """A lease's loan started or ended: the book give_back_loans reads (strong references:
        a lease the program dropped with a loan open is still found)."""
        if is_open:
            self._lease_loans.add(loan)
        else:
            self._lease_loans.discard(loan)

    # -- leases: standing grants (partitions/lease.py) ----------------------------------------
    def lease(self, dst: int, timeout: float | None = None,
              cancel: threading.Event | None = None) -> Lease:
        """A standing grant on `dst`: `lease.send(data)` then commits each packet there at once,
        with no request to the adapter (one wake-up per lone packet, the receiver's). Given
        back by `close()` (or the `with` block's end), and whenever another sender waits for
        `dst`: the next sends then go as synchronous Fig 11 sends for a few milliseconds, and
        the lease is asked for again. Waits, retrying like `send`, for the lock. See
        partitions/lease.py for the rules."""
        self._check_no_loan("lease")
        dst = network_id(dst, "lease")
        if dst not in self._max_run:
            self._queueable(dst, 1)  # raises OwnNetworkId / UnknownNetworkId naming it
        timeout = self._flush_before_sync(timeout, f"lease on network ID {dst}")  # after the queue
        lease = Lease(self._driver, dst, self._max_run[dst], self._before_lease_send,
                      self._stopping, self._lease_loan,
                      lambda view, timeout, cancel: self._send_now(dst, view, Flow.FIG11,
                                                                   timeout, cancel),
                      self._cork_area[1] - self._cork_area[0])
        lease.acquire(timeout, cancel)
        return lease

    def _before_lease_send(self) -> None:
        """Each lease send: not from the thread holding a loan, and after what was queued."""
        if self._loan is not None or self._driver.lent_leases:
            self._check_no_loan("lease send")
        self._flush_before_sync()


def _give_back(loan: Loan) -> str | None:
    """Give `loan` back; what became of it, for a report (None: its thread ended it first)."""
    what = f"a loan of {loan.size} bytes to network ID {loan.dst}"
    try:
        try:
            loan.give_back()
        except LoanExported:
            gc.collect()  # views held only by reference cycles (old frames), then again
            loan.give_back()
    except LoanExported:
        return f"{what}: still held, a view made from it is alive"
    except LoanEnded:
        return None
    except XpmoveError as exc:  # its grant or lease was lost: nothing delivered
        return f"{what}: ended, nothing delivered ({exc})"
    return f"{what}: given back, nothing delivered"
