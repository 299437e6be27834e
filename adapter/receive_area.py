"""Reading and writing a destination's ring state in the segment (the thin I/O side of ring.py).

The counters live in the hypervisor's control area (layout.py), not in the partition's region,
so no user code can forge them. `head` is written only by whoever holds the destination's lock
(adapter in Fig 11, granted driver in Fig 12) and always LAST, after header and payload:
publishing it is the commit. `tail` is written only by the receiving partition.
"""

from __future__ import annotations

from typing import NamedTuple

from adapter.ring import HEADER_SIZE, KIND_PAD, KIND_RECORD, RECORD_HEADER, Reservation
from hypervisor.layout import (
    HEAD_OFFSET,
    HOLDER_OFFSET,
    PENDING_OFFSET,
    SLEEPING_OFFSET,
    TAIL_OFFSET,
    PartitionLayout,
    SegmentLayout,
)


def words(memory: memoryview) -> memoryview:
    """The segment as native 8-byte words, the only view counters are read or written through.

    Not struct.pack_into: CPython zero-fills the target before packing, so a reader in another
    process can see a counter momentarily 0 (a "torn" head below the tail). A word store
    through a 'Q' memoryview is one aligned 8-byte store, a load one aligned 8-byte load.
    """
    return memory.cast("Q")


def _word(address: int) -> int:
    return address >> 3


class RingWords(NamedTuple):
    """The word indices of one destination's control block, computed once: the adapter's
    per-request path indexes `words` with these directly (a helper call per counter costs
    more than the store itself on the hot path)."""

    head: int
    pending: int  # pending head; then source index and first sequence number (begin_commit)
    tail: int
    sleeping: int

    @classmethod
    def of(cls, dst: PartitionLayout) -> RingWords:
        return cls(_word(dst.control + HEAD_OFFSET), _word(dst.control + PENDING_OFFSET),
                   _word(dst.control + TAIL_OFFSET), _word(dst.control + SLEEPING_OFFSET))


def read_head(words: memoryview, dst: PartitionLayout) -> int:
    return words[_word(dst.control + HEAD_OFFSET)]


def read_tail(words: memoryview, dst: PartitionLayout) -> int:
    return words[_word(dst.control + TAIL_OFFSET)]


def publish_head(words: memoryview, control: int, head: int) -> None:
    """The commit: make every record before `head` visible to the receiver."""
    words[_word(control + HEAD_OFFSET)] = head


def publish_tail(words: memoryview, control: int, tail: int) -> None:
    words[_word(control + TAIL_OFFSET)] = tail


def set_sleeping(words: memoryview, dst: PartitionLayout, sleeping: bool) -> None:
    words[_word(dst.control + SLEEPING_OFFSET)] = int(sleeping)


def ring_doorbell(words: memoryview, ring: RingWords, bell) -> bool:
    """After a commit: wake the receiver if (and only if) it sleeps. Doorbells suppressed
    while it is draining save a futex wake-up per move.

    Ordering: the mover publishes `head`, frees the lock (sem_post: an atomic
    read-modify-write, a full barrier on x86), then reads `sleeping`; the receiver sets
    `sleeping`, then reads `head`. The receiver's side has no guaranteed barrier (a trywait on
    a zero semaphore is a plain load), so a wake-up can be missed; the receiver's wait is
    therefore always bounded (50 ms in the workload), which turns a miss into a late pick-up,
    never a lost record or a hang.
    """
    if words[ring.sleeping]:
        bell.release()
        return True
    return False


def write_record_header(
    memory: memoryview, dst: PartitionLayout, reservation: Reservation, source_id: int, seq: int
) -> int:
    """Write the PAD marker (if any) and the record header; return the payload's address.

    struct.pack_into is fine here: nobody reads a record before its commit is published.
    """
    if reservation.pad_position is not None:
        RECORD_HEADER.pack_into(memory, dst.receive_base + reservation.pad_position,
                                KIND_PAD, 0, 0, 0)
    address = dst.receive_base + reservation.position
    RECORD_HEADER.pack_into(memory, address, KIND_RECORD, source_id, seq, reservation.length)
    return address + HEADER_SIZE


def read_seq(words: memoryview, address: int) -> int:
    return words[_word(address)]


def write_seq(words: memoryview, address: int, seq: int) -> None:
    words[_word(address)] = seq


def begin_commit(words: memoryview, ring: RingWords, new_head: int, src_index: int,
                 first_seq: int) -> None:
    """Record the commit about to happen, BEFORE the sequence table or the ring change.

    Pair and first sequence number are stored before the pending head, each as one word: a
    crash between the stores leaves the previous pending head, which settles as done.
    """
    base = ring.pending
    words[base + 1] = src_index
    words[base + 2] = first_seq
    words[base] = new_head


def set_holder(words: memoryview, dst: PartitionLayout, holder: int) -> None:
    words[_word(dst.control + HOLDER_OFFSET)] = holder


def read_holder(words: memoryview, dst: PartitionLayout) -> int:
    return words[_word(dst.control + HOLDER_OFFSET)]


def read_pending(words: memoryview, dst: PartitionLayout) -> tuple[int, int, int]:
    """(pending head, source index, first sequence number) of the last commit begun."""
    base = _word(dst.control + PENDING_OFFSET)
    return words[base], words[base + 1], words[base + 2]


def settle_commit(words: memoryview, layout: SegmentLayout, dst: PartitionLayout) -> bool:
    """Finish the bookkeeping of the last commit to `dst`; False if it was abandoned.

    Called with the lock held, when a grant ends or a restarted adapter recovers. If `head`
    never reached the pending head, the record stays invisible and the pair's sequence number
    goes back to what it was, so receivers see no gap and senders no phantom success.
    """
    pending_head, src_index, first_seq = read_pending(words, dst)
    head = read_head(words, dst)
    set_holder(words, dst, 0)
    if pending_head == 0 or head == pending_head:
        return True
    write_seq(words, layout.seq_address(src_index, dst.index), first_seq - 1)
    words[_word(dst.control + PENDING_OFFSET)] = head
    return False
