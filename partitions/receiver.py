"""The receive side: takes committed records out of this partition's receive area.

Arrivals are learnt from the doorbell semaphore, never by spinning: a mover posts it after
publishing `head`. Posts accumulate, so a wake-up may find nothing (already drained); that is
harmless. The tail is published after a record is consumed: only then may a writer reuse the
space (nothing unconsumed is ever overwritten). Then the senders waiting for that space are
woken (the ring's `wanting` word and room semaphore, receive_area.ring_room_bell).

Records are handed over in blocks (partitions/blocks.py): a run of equal records from one
source with consecutive sequence numbers is one handler call, found by one vectorised look at
the headers; a RUN record (multiple-write, either flow) is a block as it stands. Exactly-once
bookkeeping is per block: the per-source delivered word is written after the handler returns,
before the tail moves, so a receiver killed inside its handler sees that block again and
nothing else. A RUN record is freed once all its packets are handed over; until then the
delivered word says where to resume (a `limit` may stop a drain inside a run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import posix_ipc

from adapter import receive_area
from adapter.errors import BadCount, RingCorrupt
from adapter.ring import (
    ALIGN,
    HEADER_SIZE,
    KIND_RECORD,
    KIND_RUN,
    RECORD_HEADER,
    RUN_DESCRIPTOR,
    check_counters,
    check_run,
    next_record,
    record_size,
)
from hypervisor.layout import SegmentLayout
from partitions.blocks import HEADER_BYTES, MAX_BLOCK, BlockHandler, as_bytes, find_block, payloads


@dataclass(frozen=True)
class Packet:
    source_id: int
    seq: int
    payload: bytes


class Receiver:
    def __init__(self, physical: memoryview, segment: SegmentLayout, network_id: int,
                 bell: posix_ipc.Semaphore, room: posix_ipc.Semaphore | None = None):
        self.physical = physical
        self.segment = segment
        self.own = segment.by_id()[network_id]
        own = self.own
        self.bell = bell
        self.room = room  # posted for each sender waiting for room when the tail moves
        self.redelivered = 0  # records a previous incarnation consumed but did not free
        self._resume_at = -1  # ring position of a RUN record this incarnation stopped inside
        self._delivered_words = {
            p.network_id: segment.delivered_address(p.index, own.index) >> 3
            for p in segment.partitions}
        # the pair's sequence word: nothing beyond it was ever committed, so never delivered
        self._committed_words = {
            p.network_id: segment.seq_address(p.index, own.index) >> 3
            for p in segment.partitions}
        self.words = receive_area.words(physical)
        self._ring = receive_area.RingWords.of(own)  # head and tail, read on every wake-up
        self._area = physical[own.receive_base:own.receive_base + own.receive_size]
        self._flat = as_bytes(self._area)

    def _header(self, position: int) -> tuple[int, int, int, int]:
        return RECORD_HEADER.unpack_from(self._area, position)

    def drain(self, handler: BlockHandler, limit: int | None = None) -> int:
        """Hand every committed packet (up to `limit`) to `handler`, a block at a time;
        return how many packets.

        The rows are valid only during the call. Each block is marked delivered (per source,
        in the control area) right after its handler returns; the space is released (tail
        published) once for the whole drain.
        """
        words, flat = self.words, self._flat
        capacity = self.own.receive_size
        head = words[self._ring.head]
        tail = start_tail = words[self._ring.tail]
        if tail < head and (limit is None or limit > 0):
            lone = self._lone_record(handler, head, tail)
            if lone is not None:
                return lone
        if tail > head:  # forged (head below tail, or tail past head): never "empty"
            check_counters(head, tail, capacity)
        done = 0
        while tail < head and (limit is None or done < limit):
            record = next_record(tail, head, capacity, self._header)
            if record is None:
                break
            pos, source_id, seq, length, end, kind = record
            if kind == KIND_RUN:
                taken, whole = self._drain_run(handler, record, None if limit is None
                                               else limit - done)
                done += taken
                if not whole:
                    break  # stopped inside the run: it stays in the ring
                tail = end
                continue
            stride = record_size(length)
            most = min((head - end) // stride + 1, (capacity - pos) // stride)
            if limit is not None:
                most = min(most, limit - done)
            count = find_block(flat, pos, stride, most)
            tail = end + (count - 1) * stride
            slot = self._delivered_word(source_id, pos)
            skip = max(0, min(count, self._check_delivered(source_id, slot) - seq + 1))
            self.redelivered += skip  # a killed incarnation handled them: exactly once
            if skip < count:
                handler(source_id, seq + skip, payloads(
                    self._area, flat, pos + skip * stride, stride, count - skip, length))
                words[slot] = seq + count - 1  # before the tail: a crash re-reads
                done += count - skip
        if tail != start_tail:
            self._free(tail)
        return done

    def _lone_record(self, handler: BlockHandler, head: int, tail: int) -> int | None:
        """`drain` when the ring holds exactly one plain record, at `tail`, ending at `head`
        (the lone packet: what a wake-up usually finds on an idle path); None for anything
        else, which the general walk handles (and judges). The same steps in fewer calls: a
        lone packet finds every cache cold, and each call costs latency there.
        tests/unit/test_receiver.py holds it equal to the general walk."""
        capacity = self.own.receive_size
        pos = tail % capacity
        if not (tail % ALIGN == 0 and capacity - pos >= HEADER_SIZE):
            return None
        kind, source_id, seq, length = RECORD_HEADER.unpack_from(self._area, pos)
        size = -(-(HEADER_SIZE + length) // ALIGN) * ALIGN
        if kind != KIND_RECORD or tail + size != head or pos + size > capacity:
            return None
        slot = self._delivered_word(source_id, pos)
        taken = 0
        if self._check_delivered(source_id, slot) < seq:
            start = pos + HEADER_SIZE
            handler(source_id, seq, [self._area[start:start + length]])
            self.words[slot] = seq  # before the tail: a crash re-reads
            taken = 1
        else:
            self.redelivered += 1  # a killed incarnation handled it: exactly once
        self._free(head)
        return taken

    def _free(self, tail: int) -> None:
        """Publish `tail` (the space before it may be reused), then wake the senders that
        wait for room."""
        receive_area.publish_tail(self.words, self.own.control, tail)
        if self.room is not None:
            receive_area.ring_room_bell(self.words, self._ring, self.room,
                                        self.own.receive_size)

    def _drain_run(self, handler: BlockHandler, record, limit: int | None) -> tuple[int, bool]:
        """Hand over the packets of a RUN record not yet delivered, at most `limit`, in blocks
        of at most MAX_BLOCK; (packets handed over, whether the run is now all delivered)."""
        pos, source_id, seq, length = record[:4]
        packets, packet_length = RUN_DESCRIPTOR.unpack_from(self._area, pos + HEADER_BYTES)
        try:
            stride = check_run(length, packets, packet_length, packets)
        except BadCount as exc:
            raise RingCorrupt(f"run record at {pos}: {exc}") from None
        first = pos + HEADER_BYTES + RUN_DESCRIPTOR.size
        slot = self._delivered_word(source_id, pos)
        skip = max(0, min(packets, self._check_delivered(source_id, slot) - seq + 1))
        if pos != self._resume_at:
            self.redelivered += skip  # a killed incarnation handled them: exactly once
        taken = 0
        while skip < packets and (limit is None or taken < limit):
            count = min(packets - skip, MAX_BLOCK, packets if limit is None else limit - taken)
            handler(source_id, seq + skip, payloads(
                self._area, self._flat, first + skip * stride, stride, count, packet_length,
                header=0))
            skip += count
            taken += count
            self.words[slot] = seq + skip - 1  # before the tail: a crash re-reads
        whole = skip == packets
        self._resume_at = -1 if whole else pos
        return taken, whole

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

        def keep(source_id: int, seq: int, rows) -> None:
            got.append(Packet(source_id, seq, rows[0].tobytes()))

        deadline = time.monotonic() + timeout
        while not self.drain(keep, limit=1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.wait(remaining)
        return got[0]

    def _delivered_word(self, source_id: int, pos: int) -> int:
        """The word of the last sequence number consumed from `source_id`. Only the adapter
        and granted drivers write records, always with a partition's ID: any other source
        means something else wrote into the receive area."""
        try:
            return self._delivered_words[source_id]
        except KeyError:
            raise RingCorrupt(f"record at {pos} claims source network ID {source_id}, "
                              f"which is not a partition of this machine") from None

    def _check_delivered(self, source_id: int, slot: int) -> int:
        """The delivered word of `source_id`, once proven possible: never past the pair's
        committed sequence word (nothing beyond it was ever committed, so none of it was handed
        over). A larger one is forged: RingCorrupt naming it, instead of dropping accepted
        packets as "already delivered". (A delivered word past the block being read is NOT
        proof: a killed incarnation may have handed over later blocks of the same source
        before it published the tail, once per drain.)"""
        delivered = self.words[slot]
        committed = self.words[self._committed_words[source_id]]
        if delivered > committed:
            raise RingCorrupt(f"delivered word of source network ID {source_id} is {delivered}, "
                              f"past the pair's committed sequence word {committed}")
        return delivered

    def delivered(self, source_id: int) -> int:
        """Last sequence number from `source_id` this partition consumed (any incarnation)."""
        return self.words[self._delivered_words[source_id]]

    def pending_bytes(self) -> int:
        return self.words[self._ring.head] - self.words[self._ring.tail]

    def close(self) -> None:
        self._flat = np.empty(0, np.uint8)  # drop the export of the view (idempotent)
        self._area.release()
