"""The transports through the adapter: the invention's flows, a loan, a lease.

* ``fig11`` / ``fig12`` -- the invention: the device driver asks the adapter to move the
  bytes (one request per batch: a lone move, or one multiple-write run, `Driver.send_one`);
  they land in the destination's receive ring (`AdapterRing`).
* ``fig12-loan`` -- Fig 12 with no move: the batch is laid out as a run IN the destination's
  receive ring, lent under the grant (`Port.loan_run`); the workload fills it there and the
  loan is committed (`LoanFlow`).
* ``fig12-lease`` -- a standing grant per destination (`Port.lease`), no request at all: a
  lone packet is one `lease.send`, a batch one run loaned under the lease and filled in place
  (`LeaseFlow`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable

from adapter.errors import XpmoveError
from adapter.protocol import Flow
from adapter.ring import ALIGN, MAX_RUN_RECORDS, RUN_DESCRIPTOR, align
from partitions.blocks import BlockHandler
from partitions.cork import QueuedSendFailed
from partitions.lease import Lease
from partitions.loan import LoanRun
from partitions.port import Port, Run
from scripts.workload.transports import (
    Batch,
    BatchLayout,
    ReceiveEndpoint,
    SendTransport,
    make_batch,
)

SYNC_SUFFIX = "-sync"  # fig11-sync, fig12-sync: the patent's literal one request per packet
LOAN = "fig12-loan"  # Fig 12 with no move: the batch filled in the ring (LoanFlow)
LEASE = "fig12-lease"  # a standing grant: each packet committed by the driver (LeaseFlow)
# A batch is one run, of at most this many bytes (and what the smallest ring holds): a bigger
# run walks more of the ring than the caches keep between its fill and its check. Measured
# (benchmarks/README.md, "Runs of at most 8 MiB"), against runs as big as 32 MiB rings take:
# fig12-lease 1.5x at 1 KiB b16384 (8191 packets a run, not 16383), at 1 MiB (7, not 15) and
# at 64 KiB b16384 (127, not 255; as b128, the best there).
RUN_BYTES = 8 << 20


def refused(errors: Counter, exc: XpmoveError, packets: int) -> None:
    """Count `packets` the adapter path refused with `exc`; not those a wait gave up on
    because the run was halting (`cut_short`): they were never accepted, nor refused."""
    if not exc.cut_short:
        errors[type(exc).__name__] += packets


class AdapterFlow(SendTransport):
    """Fig 11 (adapter moves) or Fig 12 (driver moves), through the partition's `Port`.

    A lone packet is one per-packet `port.send_from` call: queued by default (the port's cork
    coalesces the packets that arrive while a request is in flight into one multiple-write
    run), or with `sync` (the transports ``fig11-sync`` / ``fig12-sync``) the patent's literal
    request of one move, answered before the next packet. A batch is ONE multiple-write run
    either way, laid out as the ring will hold it (the run's descriptor, then the packets, each
    padded to ALIGN), of at most RUN_BYTES (`batch_limit`)."""

    channel = "adapter"
    layout = BatchLayout(0, RUN_DESCRIPTOR.size, ALIGN)
    max_batch = MAX_RUN_RECORDS

    def __init__(self, port: Port, flow: Flow, sync: bool = False):
        self.port = port
        self.flow = flow
        self.sync = sync
        self.name = flow.value + (SYNC_SUFFIX if sync else "")
        # a batch is one run: it must fit the smallest ring, and RUN_BYTES
        self._max_run = min(port.max_record(), RUN_BYTES)
        self._retracted: Counter = Counter()  # counted as sent, then reported failed

    def batch_limit(self, size: int) -> int:
        return max(1, min(self.max_batch, (self._max_run - RUN_DESCRIPTOR.size) // align(size)))

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        """A lone packet as one per-packet call (queued, or with `sync` one request), a batch
        as ONE run; retried while the outcome is retryable (destination full, lock timeout)
        until `timeout` or `stop`."""
        n = len(batch.slots)
        first = batch.slots[0]
        try:
            if n == 1:
                self.port.send_from(dst, first.offset, len(first.payload), self.flow, timeout,
                                    stop, sync=self.sync)
            else:
                run = Run(first.offset - RUN_DESCRIPTOR.size, n, len(first.payload))
                self.port.send_run(dst, run, self.flow, timeout, cancel=stop)
        except QueuedSendFailed as exc:  # earlier packets failed; this one was not queued
            self._count_failed(exc, errors)
            errors[type(exc.error).__name__] += n
            return 0
        except XpmoveError as exc:
            refused(errors, exc, n)
            return 0
        return n

    def finish(self, errors: Counter, timeout: float) -> Counter:
        """Wait for the queued packets to be moved; count the ones that failed in `errors` and
        return them per destination (they were counted as sent)."""
        try:
            self.port.flush(timeout)
        except QueuedSendFailed as exc:
            self._count_failed(exc, errors)
        retracted, self._retracted = self._retracted, Counter()
        return retracted

    def _count_failed(self, exc: QueuedSendFailed, errors: Counter) -> None:
        for f in exc.failures:
            errors[type(f.error).__name__] += f.packets
            self._retracted[f.dst] += f.packets


class LoanFlow(AdapterFlow):
    """``fig12-loan``: Fig 12 with no move at all. Each batch is ONE run laid out in the
    destination's receive ring (`Port.loan_run`: one request, the grant), filled there by the
    workload, then committed: one ring record, and no copy but the fill itself. The batch
    built over the loan lives only during `fill`, so the loan can end (partitions/loan.py:
    nothing made from a loan may outlive it)."""

    LENT = BatchLayout(0, 0, ALIGN)  # the loan's view starts at packet 0, past the descriptor
    fills_itself = True

    def __init__(self, port: Port):
        super().__init__(port, Flow.FIG12)
        self.name = LOAN

    def fill_and_send(self, dst: int, template: Batch, fill: Callable[[Batch], None],
                      errors: Counter, timeout: float, stop: threading.Event) -> int:
        n, size = len(template.slots), len(template.slots[0].payload)
        try:
            loan = self._lend(dst, n, size, timeout, stop)
        except XpmoveError as exc:
            refused(errors, exc, n)
            return 0
        failed = None
        try:
            fill(make_batch(loan.view, size, self.LENT if n > 1 else BatchLayout(), n))
        except Exception as exc:  # its traceback holds the batch: give back once it is gone
            failed = f"{type(exc).__name__}: {exc}"
        if failed is not None:
            loan.give_back()
            raise RuntimeError(f"{LOAN}: filling the loan failed ({failed}); given back")
        try:
            loan.commit()
        except XpmoveError as exc:
            refused(errors, exc, n)
            return 0
        return n

    def _lend(self, dst: int, n: int, size: int, timeout: float, stop: threading.Event
              ) -> LoanRun:
        # uninit: the fill writes every packet (as iceoryx2's loan_slice_uninit)
        return self.port.loan_run(dst, n, size, timeout, cancel=stop, uninit=True)


class LeaseFlow(LoanFlow):
    """``fig12-lease``: a standing grant on each destination (`Port.lease`, taken when the
    run starts, `connect`, as the sockets connect then), so no packet costs a request: at
    batch 1 each packet is one `lease.send` (one copy), a bigger batch is ONE run loaned
    under the lease, filled in place and committed (`Lease.loan_run`: no copy either).
    Another sender to the same destination recalls the lease: the next sends go as
    synchronous Fig 11 sends for a while, then ask for it again (partitions/lease.py); the
    leases are given back when the traffic ends."""

    def __init__(self, port: Port):
        super().__init__(port)
        self.name = LEASE
        self._leases: dict[int, Lease] = {}

    def connect(self, peers: Iterable[int], timeout: float) -> None:
        """Take the lease on each of `peers` before the traffic starts, as the socket
        transports connect before it: its first packet then pays no LEASE request."""
        for dst in peers:
            self._lease(dst, timeout, threading.Event())

    def _lease(self, dst: int, timeout: float, stop: threading.Event) -> Lease:
        lease = self._leases.get(dst)
        if lease is None:
            lease = self._leases[dst] = self.port.lease(dst, timeout, stop)
        return lease

    def _lend(self, dst: int, n: int, size: int, timeout: float, stop: threading.Event
              ) -> LoanRun:
        return self._lease(dst, timeout, stop).loan_run(n, size, timeout, stop, uninit=True)

    def fill_and_send(self, dst: int, template: Batch, fill: Callable[[Batch], None],
                      errors: Counter, timeout: float, stop: threading.Event) -> int:
        if len(template.slots) == 1:  # a lone packet: one copy, the lease's shortest path
            return SendTransport.fill_and_send(self, dst, template, fill, errors, timeout, stop)
        return super().fill_and_send(dst, template, fill, errors, timeout, stop)

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        sent = 0
        try:
            lease = self._lease(dst, timeout, stop)
            for slot in batch.slots:
                lease.send(slot.payload, timeout, stop)
                sent += 1
        except XpmoveError as exc:
            refused(errors, exc, len(batch.slots) - sent)
        return sent

    def finish(self, errors: Counter, timeout: float) -> Counter:
        self.close_leases()
        return super().finish(errors, timeout)

    def close_leases(self) -> None:
        """Give back every lease this run took (idempotent)."""
        leases, self._leases = self._leases, {}
        for lease in leases.values():
            lease.close()


class AdapterRing(ReceiveEndpoint):
    """This partition's receive area, filled by the adapter (Fig 11) or granted drivers."""

    channel = "adapter"

    def __init__(self, port: Port):
        self.port = port

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        return self.port.receive_blocks(handler, timeout)
