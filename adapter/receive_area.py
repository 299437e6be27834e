"""Reading and writing a destination's ring state in the segment (the thin I/O side of ring.py).

The counters live in the hypervisor's control area (layout.py), not in the partition's region,
so no user code can forge them. `head` is written only by whoever holds the destination's lock
(adapter in Fig 11, granted driver in Fig 12) and always LAST, after header and payload:
publishing it is the commit. `tail` is written only by the receiving partition.
"""

from __future__ import annotations

import struct

from adapter.ring import HEADER_SIZE, KIND_PAD, KIND_RECORD, RECORD_HEADER, Reservation
from hypervisor.layout import (
    HEAD_OFFSET,
    HOLDER_OFFSET,
    PENDING_OFFSET,
    TAIL_OFFSET,
    PartitionLayout,
    SegmentLayout,
)

# Native "Q", not "<Q": CPython packs standard-size formats byte by byte, so a reader in another
# process could see a torn counter; native format is one aligned 8-byte store/load.
U64 = struct.Struct("Q")


def read_head(memory: memoryview, dst: PartitionLayout) -> int:
    return U64.unpack_from(memory, dst.control + HEAD_OFFSET)[0]


def read_tail(memory: memoryview, dst: PartitionLayout) -> int:
    return U64.unpack_from(memory, dst.control + TAIL_OFFSET)[0]


def publish_head(memory: memoryview, control: int, head: int) -> None:
    """The commit: make every record before `head` visible to the receiver."""
    U64.pack_into(memory, control + HEAD_OFFSET, head)


def publish_tail(memory: memoryview, control: int, tail: int) -> None:
    U64.pack_into(memory, control + TAIL_OFFSET, tail)


def write_record_header(
    memory: memoryview, dst: PartitionLayout, reservation: Reservation, source_id: int, seq: int
) -> int:
    """Write the PAD marker (if any) and the record header; return the payload's address."""
    if reservation.pad_position is not None:
        RECORD_HEADER.pack_into(memory, dst.receive_base + reservation.pad_position,
                                KIND_PAD, 0, 0, 0)
    address = dst.receive_base + reservation.position
    RECORD_HEADER.pack_into(memory, address, KIND_RECORD, source_id, seq, reservation.length)
    return address + HEADER_SIZE


def read_seq(memory: memoryview, address: int) -> int:
    return U64.unpack_from(memory, address)[0]


def write_seq(memory: memoryview, address: int, seq: int) -> None:
    U64.pack_into(memory, address, seq)


PENDING = struct.Struct("QQQ")  # pending head, source index, first sequence number


def begin_commit(memory: memoryview, dst: PartitionLayout, new_head: int, src_index: int,
                 first_seq: int) -> None:
    """Record the commit about to happen, BEFORE the sequence table or the ring change."""
    PENDING.pack_into(memory, dst.control + PENDING_OFFSET, new_head, src_index, first_seq)


def set_holder(memory: memoryview, dst: PartitionLayout, holder: int) -> None:
    U64.pack_into(memory, dst.control + HOLDER_OFFSET, holder)


def read_holder(memory: memoryview, dst: PartitionLayout) -> int:
    return U64.unpack_from(memory, dst.control + HOLDER_OFFSET)[0]


def settle_commit(memory: memoryview, layout: SegmentLayout, dst: PartitionLayout) -> bool:
    """Finish the bookkeeping of the last commit to `dst`; False if it was abandoned.

    Called with the lock held, when a grant ends or a restarted adapter recovers. If `head`
    never reached the pending head, the record stays invisible and the pair's sequence number
    goes back to what it was, so receivers see no gap and senders no phantom success.
    """
    pending_head, src_index, first_seq = PENDING.unpack_from(memory, dst.control
                                                             + PENDING_OFFSET)
    head = read_head(memory, dst)
    U64.pack_into(memory, dst.control + HOLDER_OFFSET, 0)
    if pending_head == 0 or head == pending_head:
        return True
    write_seq(memory, layout.seq_address(src_index, dst.index), first_seq - 1)
    U64.pack_into(memory, dst.control + PENDING_OFFSET, head)
    return False
