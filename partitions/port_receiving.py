"""The Port's receiving half: packets out of this partition's receive area, one drain at a
time, and nothing lost when a `packets()` loop is left early.

`PortReceiving` is a part of `Port` (partitions/port.py), kept apart because it is one idea.
The receive area has one reader: a drain moves the ring's tail and the delivered words, so
two at once would hand packets out twice (a lock makes the port's threads take turns; the
wait for the doorbell is outside it). A `packets()` loop takes packets a batch at a time;
what it took and did not hand over when the loop is left goes to the next receive first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from adapter.errors import BadCount
from partitions.arguments import whole
from partitions.blocks import BlockHandler
from partitions.receiver import Packet, Receiver

WAIT_SLICE_S = 0.05  # a wait with no timeout re-checks `stop` at least this often


class PortReceiving:
    """Port's methods for receiving; the attributes and methods below come from Port."""

    if TYPE_CHECKING:
        stop: threading.Event
        _receiver: Receiver
        _receiving: threading.Lock
        _receiving_thread: int | None
        _put_back: deque[Packet]

        def _check_no_loan(self, what: str) -> None: ...

    def receive(self, timeout: float | None = None) -> Packet | None:
        """The next packet that arrived (a copy: `Packet(source_id, seq, payload)`), waiting
        up to `timeout` seconds (None: until one comes or the machine stops); None if none."""
        got = self.receive_many(1, timeout)
        return got[0] if got else None

    def receive_many(self, limit: int | None = None, timeout: float | None = None
                     ) -> list[Packet]:
        """Every packet that has arrived (at most `limit`), waiting up to `timeout` for the
        first; an empty list if none came."""
        got: list[Packet] = []
        if limit is not None and whole(limit, "receive_many", "limit") < 1:
            raise BadCount(f"receive_many: limit {limit} must be >= 1 (None: no limit)")

        def keep(source_id: int, seq: int, rows) -> None:
            got.extend(Packet(source_id, seq + i, bytes(rows[i])) for i in range(len(rows)))

        self.receive_blocks(keep, timeout, limit)
        return got

    def packets(self, timeout: float | None = None) -> Iterator[Packet]:
        """Packets as they arrive, until the machine stops (or `timeout` passes with none).
        Leaving the loop early loses nothing: the packets it had taken and not handed over
        yet go to the next receive (once the iterator is closed or dropped)."""
        while not self.stop.is_set():
            batch = self.receive_many(timeout=timeout)
            if not batch:
                if timeout is not None:
                    return
                continue
            handed = 0
            try:
                for packet in batch:
                    handed += 1
                    yield packet
            finally:
                self._put_back.extendleft(reversed(batch[handed:]))

    __iter__ = packets

    def receive_blocks(self, handler: BlockHandler, timeout: float | None = None,
                       limit: int | None = None) -> int:
        """Zero-copy receive: `handler(source_id, first_seq, rows)` per block of packets of one
        source and length (rows: one payload per packet, valid only during the call). Waits up
        to `timeout` for the first; returns how many packets were handed over."""
        if timeout != 0:
            self._check_no_loan("receive")
        receiver = self._receiver
        n = self._drain(handler, limit)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not n and not self.stop.is_set():
            left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S,
                                                              deadline - time.monotonic())
            if left <= 0:
                break
            if receiver.wait(left):
                n = self._drain(handler, limit)
        return n

    def _drain(self, handler: BlockHandler, limit: int | None) -> int:
        """One drain of the receive area, one thread at a time (the ring's tail and the
        delivered words have one writer); packets a `packets()` loop left go first."""
        if self._receiving_thread == threading.get_ident():
            raise RuntimeError("receive from inside a receive_blocks handler: the handler "
                               "runs while this partition's receive area is being read")
        with self._receiving:
            self._receiving_thread = threading.get_ident()
            try:
                if self._put_back:
                    return self._hand_back(handler, limit)
                return self._receiver.drain(handler, limit)
            finally:
                self._receiving_thread = None

    def _hand_back(self, handler: BlockHandler, limit: int | None) -> int:
        """The packets a `packets()` loop took and did not hand over, as lone packets."""
        n = 0
        while self._put_back and (limit is None or n < limit):
            packet = self._put_back.popleft()
            try:
                handler(packet.source_id, packet.seq, [memoryview(packet.payload)])
            except BaseException:
                self._put_back.appendleft(packet)  # not handed over: the next receive's
                raise
            n += 1
        return n

    def delivered(self, source_id: int) -> int:
        """The last sequence number from `source_id` this partition consumed, in any of its
        incarnations (a restarted program continues after it)."""
        return self._receiver.delivered(source_id)

    def pending_bytes(self) -> int:
        """Bytes committed to the receive area and not consumed yet."""
        return self._receiver.pending_bytes()
