"""The receive side: takes committed records out of this partition's receive area.

Arrivals are learnt from the doorbell semaphore, never by spinning: a mover posts it after
publishing `head`. Posts accumulate, so a wake-up may find nothing (already drained); that is
harmless. The tail is published after a record is consumed: only then may a writer reuse the
space (nothing unconsumed is ever overwritten).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import posix_ipc

from adapter import receive_area
from adapter.ring import HEADER_SIZE, RECORD_HEADER, iter_records
from hypervisor.layout import SegmentLayout


@dataclass(frozen=True)
class Packet:
    source_id: int
    seq: int
    payload: bytes


Handler = Callable[[int, int, memoryview], None]  # (source ID, seq, payload view)


class Receiver:
    def __init__(self, physical: memoryview, segment: SegmentLayout, network_id: int,
                 bell: posix_ipc.Semaphore):
        self.physical = physical
        self.segment = segment
        self.own = segment.by_id()[network_id]
        own = self.own
        self.bell = bell
        self.redelivered = 0  # records a previous incarnation consumed but did not free
        self._delivered_words = {
            p.network_id: segment.delivered_address(p.index, own.index) >> 3
            for p in segment.partitions}
        self.words = receive_area.words(physical)
        self._area = physical[own.receive_base:own.receive_base + own.receive_size]

    def _header(self, position: int) -> tuple[int, int, int, int]:
        return RECORD_HEADER.unpack_from(self._area, position)

    def drain(self, handler: Handler, limit: int | None = None) -> int:
        """Hand every committed record (up to `limit`) to `handler`; return how many.

        The payload view is valid only during the call. Each record is marked delivered (per
        source, in the control area) right after its handler returns; the space is released
        (tail published) once for the whole batch.
        """
        words, area, delivered = self.words, self._area, self._delivered_words
        head = receive_area.read_head(words, self.own)
        tail = receive_area.read_tail(words, self.own)
        done = 0
        for position, source_id, seq, length, next_tail in iter_records(
                tail, head, self.own.receive_size, self._header):
            if limit is not None and done >= limit:
                break
            tail = next_tail
            slot = delivered.get(source_id)
            if slot is not None and seq <= words[slot]:
                self.redelivered += 1  # a killed incarnation handled it: exactly once
                continue
            start = position + HEADER_SIZE
            handler(source_id, seq, area[start:start + length])
            if slot is not None:
                words[slot] = seq  # before the tail: a crash re-reads, never loses
            done += 1
        if tail != receive_area.read_tail(words, self.own):
            receive_area.publish_tail(words, self.own.control, tail)
        return done

    def wait(self, timeout: float) -> bool:
        """Sleep until the doorbell rings or `timeout` passes; True if there may be records.

        Movers ring only while `sleeping` is set (see receive_area.ring_doorbell): set it, then
        look once more before really sleeping. Always give a finite timeout: a doorbell can be
        missed (see ring_doorbell), a record never is.
        """
        receive_area.set_sleeping(self.words, self.own, True)
        try:
            try:
                self.bell.acquire(0)
                return True
            except posix_ipc.BusyError:
                pass
            if self.pending_bytes():
                return True
            self.bell.acquire(timeout)
            return True
        except posix_ipc.BusyError:
            return False
        finally:
            receive_area.set_sleeping(self.words, self.own, False)

    def receive(self, timeout: float = 0.0) -> Packet | None:
        """The next packet (a copy), waiting up to `timeout` seconds for one."""
        got: list[Packet] = []

        def keep(source_id: int, seq: int, payload: memoryview) -> None:
            got.append(Packet(source_id, seq, bytes(payload)))

        deadline = time.monotonic() + timeout
        while not self.drain(keep, limit=1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.wait(remaining)
        return got[0]

    def delivered(self, source_id: int) -> int:
        """Last sequence number from `source_id` this partition consumed (any incarnation)."""
        return self.words[self._delivered_words[source_id]]

    def pending_bytes(self) -> int:
        return (receive_area.read_head(self.words, self.own)
                - receive_area.read_tail(self.words, self.own))

    def close(self) -> None:
        self._area.release()
