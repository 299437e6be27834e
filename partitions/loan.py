"""Zero-copy loans: a destination's receive area lent to the program under a Fig 12 grant.

Fig 12 taken one step further, as Xen's grant map is to grant copy. `Port.loan(dst, count)`
asks the adapter for exactly what a Fig 12 send asks for (translate, lock, check, reserve the
record, begin its commit), but the driver moves nothing: the program gets a writable view of
the record's payload in the destination's ring and produces the packet (or, with
`Port.loan_run`, a run of packets) in place. `commit()` publishes it; `give_back()` frees the
lock without publishing, and the adapter undoes the reservation (its space and sequence
numbers come back). No protocol change: a loan is a GRANT (or GRANT_RUN) the driver finishes
later (Driver.take_grant / end_grant). A lease lends the same way with no request at all
(`Lease.loan`, partitions/lease.py); its loans follow these rules too.

The rules are those of Fig 12:

* Bounds: the view is exactly the granted bytes (a memoryview of `size` bytes: an index or a
  slice assignment past it raises); `write(offset, data)` checks the range and raises
  OutOfBounds naming it. The driver zeroes the space before lending it: it held records other
  partitions sent to the destination. An `uninit` loan (for a program that writes every byte
  it commits) skips the memset only when the ring never held any partition's records but
  this one's (partitions/lending.py: take_grant_uninit).
* Ownership: while a loan is held its partition's driver holds the destination's lock, so the
  destination's other senders wait (a long loan blocks them, and a grant held too long may be
  ended by the machine), and its own request slot, so this partition's other threads wait to
  send too (until their send's timeout: then LockTimeout, nothing sent). A thread that holds
  a loan and calls a port method that would wait (a send, another loan, a receive with a
  timeout) gets LoanHeld at once instead of waiting for itself.
* Exactly once: `commit()` delivers the bytes once, as one record with the grant's sequence
  number(s); a loan given back, or held by a partition that dies, delivers nothing. A loan
  ends once: a second commit or give-back raises LoanEnded.
* After the loan: the view is released, so the program cannot write into another partition's
  ring afterwards. Slices, casts and numpy arrays made from the view keep it alive: while any
  of them exists, commit() and give_back() raise LoanExported and change nothing (the loan
  stays held; drop them, e.g. `del array`, and call again).
"""

from __future__ import annotations

import pickle
import threading
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING

from adapter.errors import OutOfBounds, XpmoveError
from adapter.ring import align
from partitions.driver import Sent

if TYPE_CHECKING:
    from collections.abc import Callable

    from partitions.driver import Driver
    from partitions.lending import Granted


class LoanError(XpmoveError):
    """A loan used against its rules (never on the wire: the adapter does not see loans)."""


class LoanHeld(LoanError):
    """This thread holds a loan, and the call would wait for it (or hold two)."""


class LoanExported(LoanError):
    """A view made from the loan's buffer is still alive: the loan cannot end yet. `loan` is
    the loan (still held), for a `with` block's exit, whose program has no other handle."""

    def __init__(self, message: str, loan: Loan | None = None):
        super().__init__(message)
        self.loan = loan


class LoanEnded(LoanError):
    """The loan was already committed or given back."""


class LoanLeftOpen(LoanError):
    """The program ended with a loan open: the partition gave it back, delivering nothing
    (reported as the program's failure, so an unsent packet is never silent)."""


class LoanState(Enum):
    HELD = "held"
    COMMITTED = "committed"
    GIVEN_BACK = "given back"


COMMIT, GIVE_BACK = "commit", "give_back"
TRANSITIONS = {(LoanState.HELD, COMMIT): LoanState.COMMITTED,
               (LoanState.HELD, GIVE_BACK): LoanState.GIVEN_BACK}


class Loan:
    """`size` bytes of network ID `dst`'s receive area, lent under a grant (see the module
    docstring). `view` is the writable memoryview; `seq` the sequence number the record will
    carry. As a context manager it gives the view, commits on a normal exit and gives the
    space back if the block raises."""

    def __init__(self, driver: Driver, granted: Granted, on_end: Callable[[Loan], None],
                 end: Callable[[Granted, bool], XpmoveError | None] | None = None):
        self._driver = driver
        self._granted = granted
        self._on_end = on_end
        self._end_grant = end  # None: the driver's end_grant; a lease's: its own commit
        self._ending = threading.Lock()
        self.state = LoanState.HELD
        self.dst = granted.dst_id
        self.seq = granted.seq
        self.size = granted.size
        self._region = driver.physical[granted.address:granted.address + granted.size]
        # Every view made from `view` (slices, casts, numpy arrays) holds a buffer of
        # `_region` through the PickleBuffer, so `_region.release()` fails while one is alive:
        # how the loan knows nothing can still write into the ring.
        self.view = memoryview(pickle.PickleBuffer(self._region))

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} of {self.size} bytes to network ID {self.dst}, "
                f"seq {self.seq}, {self.state.value}>")

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` to `offset` of the loaned bytes; OutOfBounds naming the range if it
        does not fit (no byte written)."""
        data = memoryview(data).cast("B")
        if not (0 <= offset and offset + len(data) <= self.size):
            raise OutOfBounds(f"range [{offset}, {offset + len(data)}) is outside the "
                              f"{self.size} bytes loaned for network ID {self.dst}")
        self.view[offset:offset + len(data)] = data

    def commit(self) -> Sent:
        """Publish the loaned bytes: one record at the destination, exactly once; returns
        `Sent` (its sequence number is `seq`)."""
        sent = self._end(COMMIT)
        assert sent is not None
        return sent

    def give_back(self) -> None:
        """End the loan delivering nothing: the destination's space and sequence numbers come
        back, and its next send works as if the loan never was."""
        self._end(GIVE_BACK)

    def _end(self, event: str) -> Sent | None:
        with self._ending:  # two threads ending one loan: the second finds it ended
            return self._end_once(event)

    def _end_once(self, event: str) -> Sent | None:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise LoanEnded(f"{event}: the loan of {self.size} bytes to network ID {self.dst} "
                            f"is already {self.state.value}")
        try:
            self._release_views()
        except BufferError:
            raise LoanExported(
                f"{event}: a view made from the loan of {self.size} bytes to network ID "
                f"{self.dst} is still alive (a slice, a cast or a numpy array of it): drop it "
                f"and call {event}() again (this exception's `loan` is the loan); nothing "
                f"changed, the loan still holds the destination", self) from None
        error: XpmoveError | None = None
        try:
            end = self._end_grant or self._driver.end_grant
            error = end(self._granted, event == COMMIT)
        finally:  # over whatever happened; taken back by the adapter, it delivered nothing
            self.state = LoanState.GIVEN_BACK if error is not None else new
            self._on_end(self)
        if error is not None:
            raise error
        g = self._granted
        return Sent(g.dst_id, g.seq, g.count, g.records)

    def _release_views(self) -> None:
        """Release `view` and the region under it; BufferError (nothing changed) while a view
        made from them is alive. A slice of `view` lets `view` go but keeps the region: `view`
        is then made anew, so the loan is as it was and can still be filled and committed."""
        self.view.release()
        try:
            self._region.release()
        except BufferError:
            self.view = memoryview(pickle.PickleBuffer(self._region))
            raise

    def __enter__(self) -> memoryview:
        return self.view

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.state is not LoanState.HELD:
            return  # ended inside the block
        if exc_type is None:
            self.commit()
        else:
            self.give_back()


class LoanRun(Loan):
    """A loan of a multiple-write run of `packets` packets of `length` bytes: `packet(i)` is
    the view of packet i (each starts on an 8-byte boundary, `stride` apart; the adapter wrote
    the run's descriptor). As a context manager it gives itself."""

    def __init__(self, driver: Driver, granted: Granted, on_end: Callable[[Loan], None],
                 packets: int, length: int,
                 end: Callable[[Granted, bool], XpmoveError | None] | None = None):
        super().__init__(driver, granted, on_end, end)
        self.packets = packets
        self.length = length
        self.stride = align(length)

    def packet(self, i: int) -> memoryview:
        """The view of packet `i` (0-based): a slice of `view`, so it too must be gone before
        the loan ends."""
        if not 0 <= i < self.packets:
            raise IndexError(f"packet {i} of a loaned run of {self.packets}")
        return self.view[i * self.stride:i * self.stride + self.length]

    def __enter__(self) -> LoanRun:  # type: ignore[override]
        return self
