"""Receive-area ring arithmetic (pure: no I/O, no shared memory).

A destination's receive area is a ring of `capacity` bytes holding records:

    header (RECORD_HEADER: kind, source network ID, per-pair sequence number, length)
    payload (length bytes), padded to ALIGN.

A record of kind RUN (multiple-write, Fig 11 or Fig 12) carries several packets of one length in one
record: its payload is RUN_DESCRIPTOR (packets, packet length) followed by the packets, each
padded to ALIGN; its sequence number is the first packet's, the others follow one by one.

`head` and `tail` are monotonically increasing byte counters (never wrapped; u64 lasts
centuries), so `head - tail` is the number of unconsumed bytes and position = counter % capacity.

Invariants:
* A record never wraps: its header and payload are contiguous, so a move is ONE copy. When a
  record does not fit before the end, the rest of the ring is skipped (a PAD header marks it
  when there is room for one; a tail shorter than a header is skipped implicitly).
* `head` is published only after header and payload are written: a reader never sees a torn
  record, and a writer that dies before publishing leaves nothing visible.
* A writer never passes `tail`: when there is no room the move fails with DestinationFull,
  unconsumed data is never overwritten.
* A big ring is used as a small one while its reader keeps up: a record that finds the ring
  empty and would end past its first `window` bytes (the partition's `receive_window`,
  WINDOW by default) goes back to the ring's start, the rest
  skipped as at the end (`starts_over`). The records then cycle through the same few MiB,
  which stay in the caches between the writer and the reader, where walking all of a 32 MiB
  ring sends every line to memory and back (benchmarks/README.md, "A ring that starts over":
  fig12-lease at 64 KiB 1.38x S at its best batch, 1.5-1.6x at 64 and 128 packets a run).
  Only an empty ring starts over, so a reader that falls behind may still use all of it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from adapter.errors import BadCount, DestinationFull, RingCorrupt, TooLarge
from hypervisor.config import DEFAULT_RECEIVE_WINDOW

RECORD_HEADER = struct.Struct("<IIQQ")  # kind, source network ID, sequence number, length
HEADER_SIZE = RECORD_HEADER.size
ALIGN = 8
KIND_RECORD = 0x31434552  # b"REC1"
KIND_PAD = 0x31444150  # b"PAD1"
KIND_RUN = 0x314E5552  # b"RUN1"
RUN_DESCRIPTOR = struct.Struct("<II")  # packets, packet length (first bytes of a RUN payload)
WINDOW = DEFAULT_RECEIVE_WINDOW  # a ring's window unless its partition's config says (module doc)


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def record_size(length: int) -> int:
    """Bytes a record of `length` payload bytes occupies in the ring."""
    return align(HEADER_SIZE + length)


def max_payload(capacity: int) -> int:
    """The largest payload a ring of `capacity` bytes accepts: half the ring, less a header.

    Not `capacity - HEADER_SIZE`: a record never wraps, so one that does not fit before the end
    needs the skipped tail *plus* its own size free. With records of up to half the ring, an
    empty ring always has that room wherever its head stands (the head is past the middle
    whenever such a record must wrap), so draining the ring is always enough for a sender to
    make progress. A bigger record could be refused as "full" forever by an empty ring.
    """
    return (capacity // 2) // ALIGN * ALIGN - HEADER_SIZE


def _capacity_ok(capacity: int) -> bool:
    # a wrap would leave head unaligned and the ring unreadable from then on
    return capacity > 0 and capacity % ALIGN == 0


def _counters_ok(head: int, tail: int, capacity: int) -> bool:
    return (0 <= tail <= head and head - tail <= capacity and head % ALIGN == 0
            and tail % ALIGN == 0)


def check_counters(head: int, tail: int, capacity: int) -> None:
    """Reject counters no correct writer/reader pair could have produced."""
    if not _capacity_ok(capacity):
        raise RingCorrupt(f"ring capacity {capacity} is not a positive multiple of {ALIGN}")
    if not _counters_ok(head, tail, capacity):
        raise RingCorrupt(f"ring counters head {head} tail {tail} invalid for capacity {capacity}")


class Reservation(NamedTuple):
    """Where a record of `length` bytes goes, decided under the destination's lock."""

    position: int  # ring offset of the record header
    length: int
    pad_position: int | None  # ring offset of a PAD header to write first, if any
    new_head: int  # the value to publish once the record is written

    @property
    def payload_position(self) -> int:
        return self.position + HEADER_SIZE


def starts_over(head: int, tail: int, pos: int, need: int, window: int = WINDOW) -> bool:
    """Whether a record of `need` ring bytes, which fits at ring offset `pos`, goes to the
    ring's start instead: the ring is empty, the record fits before `pos` (all of the ring
    is free) and it would end past `window` (see the module doc)."""
    return head == tail and need <= pos and pos + need > window


def _place(head: int, tail: int, capacity: int, need: int, window: int) -> tuple[int, int]:
    """(bytes skipped, ring offset) of a record of `need` ring bytes written at `head`."""
    pos = head % capacity
    if pos + need <= capacity and not starts_over(head, tail, pos, need, window):
        return 0, pos
    return capacity - pos, 0


def reserve(head: int, tail: int, capacity: int, length: int, window: int = WINDOW
            ) -> Reservation:
    """Place a record of `length` bytes at `head` of a ring whose records start over past
    `window`, or raise TooLarge / DestinationFull."""
    check_counters(head, tail, capacity)
    if length <= 0 or length > max_payload(capacity):
        raise TooLarge(f"record of {length} bytes does not fit a ring of {capacity} bytes")
    need = record_size(length)
    skip, position = _place(head, tail, capacity, need, window)
    free = capacity - (head - tail)
    if skip + need > free:
        raise DestinationFull(f"need {skip + need} bytes, {free} free")
    pos = head % capacity
    pad = pos if skip >= HEADER_SIZE else None
    return Reservation(position, length, pad, head + skip + need)


def has_room(head: int, tail: int, capacity: int, length: int, window: int = WINDOW) -> bool:
    """Whether `reserve` would find room for a record of `length` bytes: a writer's look
    before it asks, so that waiting for its reader costs no refusal. Only a look: counters or
    a length `reserve` would refuse as wrong say True, and `reserve` says what is wrong."""
    if (not _capacity_ok(capacity) or not _counters_ok(head, tail, capacity)
            or not 0 < length <= max_payload(capacity)):
        return True
    need = record_size(length)
    skip, _ = _place(head, tail, capacity, need, window)
    return skip + need <= capacity - (head - tail)


class RecordView(NamedTuple):
    """A committed record found by the reader at ring offset `position`."""

    position: int
    source_id: int
    seq: int
    length: int
    next_tail: int  # the tail to publish once the payload has been consumed
    kind: int = KIND_RECORD  # or KIND_RUN: the payload is a run of packets (check_run)

    @property
    def payload_position(self) -> int:
        return self.position + HEADER_SIZE


def next_record(tail: int, head: int, capacity: int, read_header) -> RecordView | None:
    """The next committed record at or after `tail`, skipping padding; None when empty.

    `read_header(position)` returns the unpacked RECORD_HEADER at a ring offset; it is the only
    window onto memory, so this stays pure and testable.
    """
    check_counters(head, tail, capacity)
    while tail < head:
        pos = tail % capacity
        if capacity - pos < HEADER_SIZE:
            tail += capacity - pos
            continue
        kind, source_id, seq, length = read_header(pos)
        if kind == KIND_PAD:
            tail += capacity - pos
            continue
        size = align(HEADER_SIZE + length)
        if kind not in (KIND_RECORD, KIND_RUN) or pos + size > capacity:
            raise RingCorrupt(f"bad record header kind {kind:#x} length {length} at {pos}")
        end = tail + size
        if end > head:
            raise RingCorrupt(f"record at {pos} of length {length} runs past head {head}")
        return RecordView(pos, source_id, seq, length, end, kind)
    return None


MAX_RUN_RECORDS = 32768  # packets one request may carry in runs (a ring may bound it lower)
MIN_RUN = RUN_DESCRIPTOR.size + ALIGN  # the smallest run: a descriptor and one 1-byte packet


def run_size(packets: int, length: int) -> int:
    """Bytes of a run of `packets` packets of `length` bytes (descriptor, padded packets)."""
    return RUN_DESCRIPTOR.size + packets * align(length)


def run_shape_ok(packets: int, length: int) -> bool:
    """Whether a run of `packets` packets of `length` bytes is one a request may carry
    (1..MAX_RUN_RECORDS packets, each >= 1 byte)."""
    return 1 <= packets <= MAX_RUN_RECORDS and length >= 1


def check_run_shape(packets: int, length: int, what: str) -> None:
    """BadCount naming the values unless `run_shape_ok`: checked where the program names
    them, since the adapter's refusal reaches it only as a status code."""
    if not run_shape_ok(packets, length):
        raise BadCount(f"{what}: a run holds 1..{MAX_RUN_RECORDS} packets of >= 1 byte each "
                       f"(got {packets} packets of {length} bytes)")


def check_run(count: int, packets: int, packet_length: int,
              max_packets: int = MAX_RUN_RECORDS) -> int:
    """The packet stride of a run of `count` bytes that its descriptor says holds `packets`
    packets of `packet_length` bytes; BadCount naming the values unless they tile the run
    exactly (descriptor, then each packet padded to ALIGN) with 1..max_packets packets."""
    if count < MIN_RUN or count % ALIGN:
        raise BadCount(f"run of {count} bytes: must be a multiple of {ALIGN} and >= {MIN_RUN}")
    if not 1 <= packets <= max_packets:
        raise BadCount(f"run of {count} bytes: {packets} packets (allowed 1..{max_packets})")
    stride = align(packet_length)
    if packet_length < 1 or RUN_DESCRIPTOR.size + packets * stride != count:
        raise BadCount(f"run of {count} bytes: {packets} packets of {packet_length} bytes do "
                       f"not tile it")
    return stride
