"""The interface every transport implements, and the batch of packets it is handed.

The workload (traffic.py) fills verified packets in the partition's own memory and hands a
`Batch` of them to a *send transport*; a *receive endpoint* hands every arriving packet to the
workload's check. Every transport shares that interface, so the load generator measures the
same packets with the same checks whatever carries them:

* through the adapter, ``fig11`` / ``fig12`` (and their ``-sync`` forms), ``fig12-loan`` and
  ``fig12-lease``: adapter_flows.py;
* the prior art over TCP, ``tcp`` and ``vswitch``: sockets.py, their frames in frames.py;
* the peers a Python user would pick instead, ``zmq`` and ``pipe``: peers.py; ``iceoryx2``:
  iceoryx2_peer.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from adapter.protocol import MAX_MOVES
from partitions.blocks import BlockHandler, as_bytes


class TransportError(Exception):
    """A transport could not be set up (connect, listen, hello); names the peer."""


# -- batches: where the packets of one request live in the sender's memory ------------------


@dataclass(frozen=True)
class Slot:
    offset: int  # payload offset in the partition's own region (what the adapter is told)
    frame: memoryview  # header room + payload
    payload: memoryview


class BatchLayout(NamedTuple):
    """How a transport wants a batch laid out in sender memory."""

    header_room: int = 0  # bytes the transport writes in front of each payload
    lead: int = 0  # bytes in front of the first slot (a multiple-write run's descriptor)
    align: int = 1  # each slot (header room + payload) is padded to a multiple of this

    def stride(self, size: int) -> int:
        return -(-(self.header_room + size) // self.align) * self.align


@dataclass(frozen=True)
class Batch:
    """`len(frames)` packet slots of `size` bytes laid out back to back after `lead`; `span`
    covers the slots.

    `frames` is the same memory as one numpy row per slot (header room + payload + padding),
    so a whole batch is filled and stamped with a few vectorised writes; `payloads` is its
    payload part. `slots` (a view per packet) are built on first use: a batch laid out anew
    per send (a loan) and filled as rows never pays for them.
    """

    span: memoryview
    stride: int
    frames: np.ndarray
    layout: BatchLayout
    lead: memoryview
    size: int

    @cached_property
    def slots(self) -> tuple[Slot, ...]:
        stride, room, size, span = self.stride, self.layout.header_room, self.size, self.span
        base = self.layout.lead + room
        return tuple(Slot(base + i * stride, span[i * stride:i * stride + room + size],
                          span[i * stride + room:i * stride + room + size])
                     for i in range(len(self.frames)))

    @cached_property
    def payloads(self) -> np.ndarray:
        room = self.layout.header_room
        return self.frames[:, room:room + self.size]

    @cached_property
    def frame_words(self) -> np.ndarray:
        """Each slot's first 24 bytes, in place, as three u64: a FRAME header's (destination
        | source << 32, sequence, length). Stamping a batch is three column writes."""
        return np.ndarray((len(self.frames), 3), "<u8", buffer=self.frames,
                          strides=(self.stride, 8))

    def prefix(self, n: int) -> Batch:
        if n == len(self.frames):
            return self
        return Batch(self.span[:n * self.stride], self.stride, self.frames[:n], self.layout,
                     self.lead, self.size)


def batch_capacity(space: int, size: int, layout: BatchLayout, wanted: int,
                   most: int = MAX_MOVES) -> int:
    """How many packets of `size` one batch may carry in `space` bytes of sender memory, at
    most `most` (what one request of the transport may carry)."""
    stride = layout.stride(size)
    if layout.lead + stride > space:
        raise ValueError(f"size: a {size}-byte packet (+{stride - size + layout.lead} bytes of "
                         f"headers) does not fit the {space}-byte sender area")
    return max(1, min(wanted, most, (space - layout.lead) // stride))


def make_batch(region: memoryview, size: int, layout: BatchLayout, n: int) -> Batch:
    """Slots for `n` packets at the start of `region` (the sender area of own memory)."""
    stride, lead = layout.stride(size), layout.lead
    span = region[lead:lead + n * stride]
    return Batch(span, stride, as_bytes(span).reshape(n, stride), layout, region[:lead], size)


# -- the interfaces ---------------------------------------------------------------------------


class SendTransport:
    name: str = ""
    channel: str = ""  # the receive-side sequence space the packets land in
    layout: BatchLayout = BatchLayout()
    max_batch: int = MAX_MOVES  # packets one `send` call may carry
    fills_itself = False  # True: the workload fills a batch only through `fill_and_send`

    def batch_limit(self, size: int) -> int:
        """Packets of `size` bytes one `send` call may carry."""
        return self.max_batch

    def loan(self, dst: int, batch: Batch) -> Batch:
        """Where the packets of the next `send` to `dst` are to be written: `batch` itself (in
        the partition's own memory), or the same layout in memory the transport lends (a
        zero-copy peer's sample, written in place)."""
        return batch

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        """Send every packet of `batch` to `dst`; return how many the transport accepted.

        Failures are counted in `errors` by exception name, one per packet.
        """
        raise NotImplementedError

    def finish(self, errors: Counter, timeout: float) -> Counter:
        """The sender is done: wait up to `timeout` for what the transport queued; count what
        failed in `errors` and return it per destination (it was counted as sent)."""
        return Counter()

    def fill_and_send(self, dst: int, template: Batch, fill: Callable[[Batch], None],
                      errors: Counter, timeout: float, stop: threading.Event) -> int:
        """The workload's step: lay the packets of `template` out where they are sent from
        (`loan`), let `fill(batch)` write them there, `send` them; how many were accepted. A
        transport that lends memory it must take back first (`fills_itself`: LoanFlow) does
        it all itself; for the others the workload may as well make the three calls."""
        batch = self.loan(dst, template)
        fill(batch)
        return self.send(dst, batch, errors, timeout, stop)

    def close(self) -> None:
        """Unblock a sender stuck in `send` and release connections (idempotent)."""


class ReceiveEndpoint:
    channel: str = ""

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        """Hand every packet that has arrived to `handler`; if none, wait up to `timeout`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sockets (idempotent)."""
