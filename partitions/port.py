"""The Port: everything a partition program gets, and all it needs.

A partition program is a function `program(port)` named in the config
(`program = "package.module:function"`); it runs in the partition process and the partition
lives as long as the call. Through its port it sees its own memory (`port.memory`, a
`PartitionView`), sends to other partitions through the adapter (Fig 11: the adapter moves the
bytes; Fig 12: the adapter grants the destination's lock and the driver moves them) and takes
what others sent out of its receive area. It never sees the segment, another partition's
memory, the pipes or the locks: those stay with the driver and the receiver (the partition's
trusted code).

Own memory is split in two: `[0, port.send_space)` is the program's to use; the tail,
`[port.send_space, memory.size)`, is the receive area other partitions write into.
`send()` and `send_batch()` copy the bytes to the TOP of the send space (just below the
receive area) and send them from there; `send_from()` and `send_run()` send bytes the program
already placed, with no extra copy; `loan()` and `loan_run()` (partitions/loan.py) lend the
program the destination's receive space itself to write the packets in, with no move at all.

Every failure is a typed exception of `adapter.errors` (`XpmoveError` and its subclasses) whose
message names the values. Retryable ones (`DestinationFull`, `LockTimeout`, `DestinationDown`,
`AdapterGone`) are retried until `timeout` passes (None: until the machine stops); the last one
is raised.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, NamedTuple, TypeVar, overload

from adapter.errors import BadCount, OwnNetworkId, TooLarge, UnknownNetworkId, XpmoveError
from adapter.protocol import Flow
from adapter.ring import ALIGN, RUN_DESCRIPTOR, align, check_run_shape, max_payload, run_size
from partitions.arguments import network_id, whole
from partitions.cork import CORK_BUFFER, CORK_BUFFERS, Cork, QueuedFailure, QueueFull
from partitions.driver import Driver, Sent
from partitions.loan import Loan
from partitions.memory import PartitionView
from partitions.port_loans import PortLoans
from partitions.port_receiving import PortReceiving
from partitions.receiver import Packet, Receiver

CommandHandler = Callable[[dict], dict]
LoanT = TypeVar("LoanT", bound=Loan)


def _left(timeout: float | None, started: float) -> float | None:
    """What is left of `timeout` (None: no limit) since `started` (time.monotonic)."""
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


class Run(NamedTuple):
    """A multiple-write run laid out in own memory at `offset`: 8 bytes of descriptor (the port
    writes it), then `packets` packets of `length` bytes, each starting on an 8-byte boundary
    (`packet_offset(i)`). It travels as ONE request and lands as ONE ring record."""

    offset: int
    packets: int
    length: int

    @property
    def stride(self) -> int:
        return align(self.length)

    @property
    def size(self) -> int:
        return run_size(self.packets, self.length)

    def packet_offset(self, i: int) -> int:
        """Offset in own memory of packet `i` (0-based)."""
        if not 0 <= i < self.packets:
            raise IndexError(f"packet {i} of a run of {self.packets}")
        return self.offset + RUN_DESCRIPTOR.size + i * self.stride


class Port(PortLoans, PortReceiving):
    """A partition program's view of the machine (see the module docstring).

    Attributes: `network_id` and `name` of this partition; `peers`, the network IDs of the
    other partitions; `names`, every partition's name by network ID; `memory`, the
    `PartitionView` of this partition's own region; `send_space`, the size of its part the
    program may use; `stop`, a `threading.Event` set when the machine shuts the partition down
    (return soon after it is set).
    """

    def __init__(self, driver: Driver, receiver: Receiver, memory: PartitionView,
                 names: dict[int, str], stop: threading.Event | None = None):
        self._driver = driver
        self._receiver = receiver
        self.network_id = driver.network_id
        self.names = dict(names)
        self.name = self.names[self.network_id]
        self.peers = tuple(nid for nid in self.names if nid != self.network_id)
        self.memory = memory
        self.send_space = memory.layout.receive_offset
        self.stop = stop or threading.Event()
        self._staging = threading.Lock()  # the top of the send space: the cork and staging
        self._max_run = {p: max_payload(driver.by_id[p].receive_size) for p in self.peers}
        cork_size = min(CORK_BUFFERS * CORK_BUFFER, self.send_space // 8) // (
            CORK_BUFFERS * ALIGN) * CORK_BUFFERS * ALIGN
        self._region = memory.buffer(0, memory.size)  # own memory; ranges checked before use
        self._cork = Cork(driver, self._region, self.send_space - cork_size, cork_size,
                          self.stop)
        self._cork_area = self._cork.area
        self._fits: dict[tuple[int, int], bool] = {}  # (dst, count): a packet the queue takes
        self._commands: CommandHandler | None = None
        self._loan: Loan | None = None  # the loan this port holds (at most one: see loan())
        self._loan_thread: int | None = None
        self._lease_loans: set[Loan] = set()  # loans open under this port's leases
        self._receiving = threading.Lock()  # one drain of the receive area at a time
        self._receiving_thread: int | None = None  # the thread draining (its handler runs)
        self._put_back: deque[Packet] = deque()  # taken by a packets() loop left early
        self.commands_ready = threading.Event()

    # -- sending ----------------------------------------------------------------------------
    @overload
    def send(self, dst: int, data: bytes | bytearray | memoryview, flow: Flow | str = ...,
             timeout: float | None = ..., cancel: threading.Event | None = ..., *,
             sync: Literal[True]) -> Sent: ...

    @overload
    def send(self, dst: int, data: bytes | bytearray | memoryview, flow: Flow | str = ...,
             timeout: float | None = ..., cancel: threading.Event | None = ...,
             sync: bool = ...) -> Sent | None: ...

    def send(self, dst: int, data: bytes | bytearray | memoryview, flow: Flow | str = Flow.FIG11,
             timeout: float | None = None, cancel: threading.Event | None = None,
             sync: bool = False) -> Sent | None:
        """Send `data` (bytes or any buffer) to partition `dst`.

        By default the packet is copied into the port's submission queue and the call returns
        None at once; queued packets coalesce into multiple-write runs (partitions/cork.py). A
        packet larger than a submission buffer is sent as with `sync=True` (`Sent` returned).
        A queued packet that could not be moved is raised (QueuedSendFailed) from a later send
        or from `flush()`. With `sync=True`, the patent's literal call: the bytes are staged at
        the top of the send space and moved in one request; returns `Sent` once committed.
        `timeout` bounds the retries (and, queued, the wait for room); `cancel`, an extra
        Event, ends them early."""
        if dst.__class__ is not int:  # (the per-packet path: no call for a plain int)
            dst = network_id(dst, "send")
        view = memoryview(data).cast("B")
        if self._loan is not None or self._driver.lent_leases:
            self._check_no_loan("send")
        if not sync and self._queueable(dst, len(view)):
            if not self._staging.acquire(False):
                self._hold_staging(timeout, f"send to network ID {dst}")
            try:
                self._cork.submit(dst, flow if flow.__class__ is Flow else Flow.parse(flow),
                                  view, timeout, cancel, self._max_run[dst])
            finally:
                self._staging.release()
            return None
        return self._send_now(dst, view, flow, timeout, cancel)

    def _send_now(self, dst: int, view: memoryview, flow: Flow | str, timeout: float | None,
                  cancel: threading.Event | None) -> Sent:
        """`send(sync=True)`: staged at the top of the send space, moved in one request."""
        with self._staged_after_queue(timeout, f"send to network ID {dst}") as timeout:
            offset = self._stage_at(len(view), "data")
            self.memory.write(offset, view)
            return self._send(dst, offset, len(view), flow, False, timeout, cancel)

    @overload
    def send_from(self, dst: int, offset: int, count: int, flow: Flow | str = ...,
                  timeout: float | None = ..., cancel: threading.Event | None = ..., *,
                  sync: Literal[True]) -> Sent: ...

    @overload
    def send_from(self, dst: int, offset: int, count: int, flow: Flow | str = ...,
                  timeout: float | None = ..., cancel: threading.Event | None = ...,
                  sync: bool = ...) -> Sent | None: ...

    def send_from(self, dst: int, offset: int, count: int, flow: Flow | str = Flow.FIG11,
                  timeout: float | None = None, cancel: threading.Event | None = None,
                  sync: bool = False) -> Sent | None:
        """Send the `count` bytes at `offset` of own memory to partition `dst`. Queued by
        default (copied into the submission queue, like `send`; the bytes may be reused at
        once); `sync=True` is the patent's call: no copy but the move itself, `Sent` returned.
        Bytes inside the submission area (`cork_area`) are always sent synchronously."""
        if dst.__class__ is not int:  # (the per-packet path: no calls for plain ints)
            dst = network_id(dst, "send_from")
        if offset.__class__ is not int or count.__class__ is not int:
            offset, count = whole(offset, "send_from", "offset"), whole(count, "send_from",
                                                                        "count")
        if self._loan is not None or self._driver.lent_leases:
            self._check_no_loan("send_from")  # before the flush of a sync send: it would wait
        if offset < 0 or count < 1 or offset + count > self.memory.size:
            self.memory.buffer(offset, count)  # BadOffset / BadCount / OutOfBounds, named here
        if not sync:
            start, end = self._cork_area
            if (offset + count <= start or offset >= end) and self._queueable(dst, count):
                if not self._staging.acquire(False):
                    self._hold_staging(timeout, f"send_from to network ID {dst}")
                try:
                    self._cork.submit(dst, flow if flow.__class__ is Flow else Flow.parse(flow),
                                      self._region[offset:offset + count], timeout, cancel,
                                      self._max_run[dst])
                finally:
                    self._staging.release()
                return None
        timeout = self._flush_before_sync(timeout, f"send_from to network ID {dst}")
        return self._send(dst, offset, count, flow, False, timeout, cancel)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued packet was moved (True) or `timeout` passed with some still
        queued (False). Raises QueuedSendFailed, naming each run that failed, if any did."""
        self._check_no_loan("flush")  # the queue waits for the driver the loan holds
        return self._cork.flush(timeout)

    def unflushed(self) -> list[QueuedFailure]:
        """What `flush` has not settled yet: the failures not raised yet, then every run still
        queued or in flight (the partition process reports these when it gives up)."""
        return self._cork.unflushed()

    @property
    def cork_area(self) -> tuple[int, int]:
        """[start, end) of own memory that holds the submission queue's buffers (the top of
        the send space); keep your own data below it."""
        return self._cork_area

    def _queueable(self, dst: int, count: int) -> bool:
        """Whether a send of `count` bytes to `dst` may be queued; raises at once for what the
        adapter would refuse anyway (unknown or own network ID, bad count, too large)."""
        fits = self._fits.get((dst, count))
        if fits is not None:
            return fits
        limit = self._max_run.get(dst)
        if limit is None:
            if dst == self.network_id:
                raise OwnNetworkId(f"network ID {dst} is this partition's own")
            raise UnknownNetworkId(f"unknown destination network ID {dst}")
        if count < 1:
            raise BadCount(f"send to network ID {dst}: nothing to send ({count} bytes)")
        if count > limit:
            raise TooLarge(f"send of {count} bytes to network ID {dst}: its records hold at "
                           f"most {limit}")
        fits = self._cork.book.fits(count, limit)
        if len(self._fits) < 4096:  # a program's few (destination, length) pairs
            self._fits[(dst, count)] = fits
        return fits

    def _flush_before_sync(self, timeout: float | None = None,
                           what: str = "a synchronous send") -> float | None:
        """A synchronous send goes after everything queued before it (program order per
        destination); a failure of the queue is raised here first. The wait counts against
        the send's `timeout` (QueueFull when it passes: nothing of the send was sent); what is
        left of it is returned. A timeout of 0 (one try, no retries) still waits for the
        queue, which ends at its own packets' timeouts."""
        if not (self._cork.book.queued or self._cork.has_failures):
            return timeout
        started = time.monotonic()
        if not self._cork.flush(timeout or None):
            raise QueueFull(f"{what}: the packets queued before it were not all moved within "
                            f"its timeout ({timeout:g} s); it was not sent")
        return _left(timeout, started)

    def _hold_staging(self, timeout: float | None, what: str) -> None:
        """Take the top of the send space (the queue's buffers and staging: one call at a
        time; the caller releases it); QueueFull if another call keeps it past `timeout` (a
        synchronous send waiting for a full destination). A timeout of 0 (one try) waits for
        it as for the queue."""
        if not self._staging.acquire(timeout=timeout if timeout and timeout > 0 else -1):
            raise QueueFull(f"{what}: another thread's synchronous send kept the send space's "
                            f"top for the whole timeout ({timeout:g} s); it was not sent")

    @contextlib.contextmanager
    def _staged_after_queue(self, timeout: float | None, what: str
                            ) -> Iterator[float | None]:
        """For a synchronous call: the top of the send space held, and everything queued
        before moved; yields what is left of `timeout`."""
        started = time.monotonic()
        self._hold_staging(timeout, what)
        try:
            yield self._flush_before_sync(_left(timeout, started), what)
        finally:
            self._staging.release()

    def send_batch(self, dst: int, packets: Sequence[bytes | bytearray | memoryview],
                   flow: Flow | str = Flow.FIG11, timeout: float | None = None,
                   cancel: threading.Event | None = None) -> Sent:
        """Send several packets of ONE length as one multiple-write run (one request, one ring
        record, one move); `Sent.records` is how many. Copied to the top of the send space."""
        dst = network_id(dst, "send_batch")
        if not packets:
            raise BadCount("send_batch: no packets")
        self._check_no_loan("send_batch")
        length = len(memoryview(packets[0]).cast("B"))
        what = f"send_batch to network ID {dst}"
        check_run_shape(len(packets), length, what)
        with self._staged_after_queue(timeout, what) as timeout:
            run = Run(0, len(packets), length)
            run = run._replace(offset=self._stage_at(run.size, f"a run of {len(packets)} "
                                                                f"{length}-byte packets"))
            for i, packet in enumerate(packets):
                view = memoryview(packet).cast("B")
                if len(view) != length:
                    raise BadCount(f"send_batch: packet {i} has {len(view)} bytes, packet 0 "
                                   f"has {length}: a run's packets are all one length")
                self.memory.write(run.packet_offset(i), view)
            return self.send_run(dst, run, flow, timeout, cancel)

    def run_at(self, offset: int, packets: int, length: int) -> Run:
        """A run of `packets` packets of `length` bytes to lay out at `offset` of own memory
        (8-aligned); fill `run.packet_offset(i)` for each, then `send_run`. Checked here."""
        run = Run(offset, packets, length)
        if offset % ALIGN:
            raise BadCount(f"run offset {offset} is not a multiple of {ALIGN}")
        check_run_shape(packets, length, f"run_at({offset}, {packets}, {length})")
        self.memory.buffer(offset, run.size)  # raises OutOfBounds naming the range
        return run

    def send_run(self, dst: int, run: Run, flow: Flow | str = Flow.FIG11,
                 timeout: float | None = None, cancel: threading.Event | None = None) -> Sent:
        """Send a run laid out in own memory (see `run_at`): its descriptor is written here,
        the packets move as they are. A run of one packet is sent as a plain move.
        Synchronous: it goes after everything queued before it."""
        dst = network_id(dst, "send_run")
        check_run_shape(run.packets, run.length, f"send_run to network ID {dst}")
        timeout = self._flush_before_sync(timeout, f"send_run to network ID {dst}")
        if run.packets == 1:
            return self._send(dst, run.packet_offset(0), run.length, flow, False, timeout,
                              cancel)
        RUN_DESCRIPTOR.pack_into(self.memory.buffer(run.offset, RUN_DESCRIPTOR.size), 0,
                                 run.packets, run.length)
        return self._send(dst, run.offset, run.size, flow, True, timeout, cancel)

    def max_record(self, dst: int | None = None) -> int:
        """The most bytes one send to `dst` may carry (a record holds at most half of its
        receive area); without `dst`, the smallest such limit over all peers."""
        rings = self._driver.by_id
        if dst is not None:
            dst = network_id(dst, "max_record")
            if dst == self.network_id:
                raise OwnNetworkId(f"max_record: network ID {dst} is this partition's own")
            if dst not in rings:
                raise UnknownNetworkId(f"unknown destination network ID {dst}")
            return max_payload(rings[dst].receive_size)
        return min((max_payload(rings[p].receive_size) for p in self.peers), default=0)

    def _stage_at(self, size: int, what: str) -> int:
        """Where `size` bytes start when staged at the top of the send space."""
        offset = (self.send_space - size) // ALIGN * ALIGN
        if size < 1:
            raise BadCount(f"{what}: nothing to send (0 bytes)")
        if offset < 0:
            raise TooLarge(f"{what} of {size} bytes does not fit the send space of network ID "
                           f"{self.network_id} ({self.send_space} bytes)")
        return offset

    def _send(self, dst: int, offset: int, count: int, flow: Flow | str, run: bool,
              timeout: float | None, cancel: threading.Event | None) -> Sent:
        self._check_no_loan("send")
        outcome = self._driver.send_retrying(
            dst, offset, count, Flow.parse(flow), run,
            timeout=float("inf") if timeout is None else timeout,
            stop=self._stopping(cancel))
        if isinstance(outcome, XpmoveError):
            raise outcome
        return outcome

    def _stopping(self, cancel: threading.Event | None) -> Callable[[], bool]:
        stop = self.stop
        if cancel is None:
            return stop.is_set
        return lambda: stop.is_set() or cancel.is_set()

    # -- commands from the machine's owner --------------------------------------------------
    def on_command(self, handler: CommandHandler) -> None:
        """Answer `Machine.call(network_id, message)` with `handler(message) -> dict` (run on
        one worker thread, in arrival order). Tools (launch, bench, soak) steer their built-in
        workload this way; most programs need no commands."""
        self._commands = handler
        self.commands_ready.set()

    def command_handler(self) -> CommandHandler | None:
        return self._commands
