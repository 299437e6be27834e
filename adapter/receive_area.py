"""The commit protocol: every read and write of a destination's ring state in the segment.

This module is the ONE owner of the protocol's steps, used by the adapter (adapter/engine.py,
Fig 11 moves and Fig 12 grants, settling and recovery) and by the Fig 12 driver
(partitions/driver.py) alike. In order, under the destination's lock:

    begin_commit         record the pending commit (new head, pair, first sequence number),
                         then advance the pair's sequence word
    write_record_header  PAD marker if any, the record header (then the payload: MVXL; for a
                         run, write_run_descriptor after it)
    publish_head         the commit: `head` moves past the new records, LAST
    ring_doorbell        after the lock is freed, wake the receiver if it sleeps

`set_holder` names the driver a lock is granted to (Fig 12), and `settle_commit` finishes (or
undoes) the last commit when a grant ends or a restarted adapter recovers.

The counters live in the hypervisor's control area (hypervisor/layout.py carves one
RING_CONTROL_SIZE block per destination), not in the partition's region, so no user code can
forge them. `head` is written only by whoever holds the destination's lock (adapter in Fig 11,
granted driver in Fig 12) and always LAST, after header and payload: publishing it is the
commit. `tail` is written only by the receiving partition.
"""

from __future__ import annotations

from typing import NamedTuple

from adapter.errors import RingCorrupt
from adapter.ring import (
    ALIGN,
    HEADER_SIZE,
    KIND_PAD,
    KIND_RECORD,
    RECORD_HEADER,
    RUN_DESCRIPTOR,
    Reservation,
    check_counters,
    reserve,
)
from hypervisor.layout import CACHE_LINE, RING_CONTROL_SIZE, PartitionLayout, SegmentLayout

# A destination's ring control block (RING_CONTROL_SIZE bytes at PartitionLayout.control).
# Line 0 is written under the destination's lock:
#   head          committed byte counter (publishing it IS the commit)
#   pending_*     the commit in progress: the head it will publish, and the pair and first
#                 sequence number it consumed, so whoever settles it (this adapter, or a
#                 restarted one) can roll the pair's sequence back if the commit never happened
#   holder        network ID of the driver the lock is granted to (Fig 12), 0 if none
#   grant_token   the token of the last grant (the adapter: one more per grant, per destination)
#   released      the token of the last grant its holder finished (the granted driver writes it
#                 after MVXL and `head`, BEFORE posting the lock): a post of the lock ends a
#                 grant only if this word proves it (any process can post a named semaphore)
#   writer        who ever wrote the ring's space: 0 nobody (a fresh segment is zeros), a
#                 network ID if only that partition's records were ever reserved there,
#                 MIXED once two have been (sticky). The adapter notes it before it writes a
#                 reservation's first byte, so an uninit loan (partitions/lending.py) may skip
#                 the memset exactly when the space can hold nothing but its own old bytes
# Line 1 is written by the receiver: tail, and `sleeping` (1 while it waits on its doorbell, so
# movers ring only then). Two lines so producer and consumer do not false-share. Two words of
# line 1 belong to the adapter and change only when a lease does (partitions/leasing.py):
#   lease         the token of the grant in force if it is a standing grant (Op.LEASE), else
#                 0: a restarted adapter keeps such a grant instead of taking it back
#   recall        the token of the lease the adapter wants back (another sender waits); the
#                 holder's driver gives it back when it finds its own token here
# and one word belongs to the senders:
#   wanting       1 while a sender waits for room (want_room): the receiver, moving its tail to
#                 where the ring is at most half full, zeroes it and posts the destination's
#                 room semaphore once (ring_room_bell), so a full ring's sender sleeps until
#                 room is freed instead of polling it through refused requests
HEAD_OFFSET = 0
PENDING_OFFSET = 8  # 3 x u64: pending head, source partition index, first sequence number
HOLDER_OFFSET = 32
GRANT_TOKEN_OFFSET = 40
RELEASED_OFFSET = 48
WRITER_OFFSET = 56
TAIL_OFFSET = CACHE_LINE
SLEEPING_OFFSET = CACHE_LINE + 8
LEASE_OFFSET = CACHE_LINE + 16
RECALL_OFFSET = CACHE_LINE + 24
WANTING_OFFSET = CACHE_LINE + 32
assert WRITER_OFFSET + 8 <= TAIL_OFFSET and WANTING_OFFSET + 8 <= RING_CONTROL_SIZE
TOKEN_MASK = (1 << 64) - 1
MIXED = TOKEN_MASK  # the writer word once two partitions have written the ring's space
# A pair's sequence word stays below this (centuries at any rate): a larger one is forged, and
# begin_commit could not store the numbers after it in a u64 word.
SEQ_LIMIT = 1 << 63


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
    """The word indices of one destination's control block, computed once. The adapter's
    per-request path reads `head` and `tail` through these directly (a helper call per load
    costs more than the load itself); every store goes through a function of this module."""

    head: int
    pending: int  # pending head; then source index and first sequence number (begin_commit)
    tail: int
    sleeping: int
    token: int  # grant_token
    released: int
    writer: int
    lease: int
    recall: int
    wanting: int

    @classmethod
    def of(cls, dst: PartitionLayout) -> RingWords:
        return cls(_word(dst.control + HEAD_OFFSET), _word(dst.control + PENDING_OFFSET),
                   _word(dst.control + TAIL_OFFSET), _word(dst.control + SLEEPING_OFFSET),
                   _word(dst.control + GRANT_TOKEN_OFFSET), _word(dst.control + RELEASED_OFFSET),
                   _word(dst.control + WRITER_OFFSET), _word(dst.control + LEASE_OFFSET),
                   _word(dst.control + RECALL_OFFSET), _word(dst.control + WANTING_OFFSET))


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


def want_room(words: memoryview, ring: RingWords) -> None:
    """A sender about to wait for room: the receiver is to wake it (ring_room_bell)."""
    words[ring.wanting] = 1


def ring_room_bell(words: memoryview, ring: RingWords, bell, capacity: int) -> bool:
    """After the receiver moved `tail`: if a sender waits for room, wake it once the ring (of
    `capacity` bytes) is at most half full; True if it posted. Zeroed, then posted: a sender
    that marks itself after the zeroing has read the new tail first (RoomWait), so it does not
    sleep on room already freed.

    ONE post, however many senders wait: the others wake at their bound (ROOM_WAIT_S) and
    look again. A count of waiters was tried and fed itself: a sender woken by a post meant
    for a waiter already gone is refused, counts itself again, and the next move of the tail
    posts for it, and for every other such count (16 refusals per grant, fig12-loan 1 KiB).
    A post for a waiter gone costs one refusal, once.

    Half, not "any room": a sender woken for each record freed takes turns with its receiver
    a record at a time, a wake-up each, where the old back-off let the receiver drain for up
    to 2 ms and the sender then moved many records in a row; woken at half, it has half the
    ring to fill in a row (the low-water mark of any bounded queue).

    Ordering as ring_doorbell's, the roles swapped (the receiver stores `tail`, then loads
    `wanting`; a sender stores `wanting`, then loads `tail`): a wake-up can be missed, so a
    sender's wait is always bounded, and a miss costs a late look, never a lost packet."""
    if not words[ring.wanting] or words[ring.head] - words[ring.tail] > capacity // 2:
        return False
    words[ring.wanting] = 0
    bell.release()
    return True


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
    memory: memoryview, dst: PartitionLayout, reservation: Reservation, source_id: int, seq: int,
    kind: int = KIND_RECORD,
) -> int:
    """Write the PAD marker (if any) and the record header; return the payload's address.

    `kind` is KIND_RECORD for one packet, KIND_RUN for a multiple-write run (whose payload
    starts with its descriptor: write_run_descriptor once the payload is in place).
    struct.pack_into is fine here: nobody reads a record before its commit is published.
    """
    if reservation.pad_position is not None:
        RECORD_HEADER.pack_into(memory, dst.receive_base + reservation.pad_position,
                                KIND_PAD, 0, 0, 0)
    address = dst.receive_base + reservation.position
    RECORD_HEADER.pack_into(memory, address, kind, source_id, seq, reservation.length)
    return address + HEADER_SIZE


def write_run_descriptor(memory: memoryview, payload: int, packets: int, length: int) -> None:
    """Write a run's descriptor at the start of its payload, AFTER the payload is moved: the
    values are the ones checked at request time, so whatever the sender changed in its copy
    since, the receiver finds exactly what was validated."""
    RUN_DESCRIPTOR.pack_into(memory, payload, packets, length)


def seq_words(layout: SegmentLayout) -> list[list[int]]:
    """seq_words[src index][dst index]: the word of the pair's last committed sequence number
    (computed once; begin_commit takes one of these)."""
    n = len(layout.partitions)
    first = _word(layout.seq_address(0, 0))
    return [[first + s * n + d for d in range(n)] for s in range(n)]


def read_seq(words: memoryview, address: int) -> int:
    return words[_word(address)]


def write_seq(words: memoryview, address: int, seq: int) -> None:
    words[_word(address)] = seq


def begin_commit(words: memoryview, ring: RingWords, new_head: int, src_index: int,
                 seq_word: int, records: int) -> int:
    """Begin a commit of `records` sequence numbers of the pair (src_index, ring's destination)
    that will publish `new_head`; return the first sequence number. Lock held.

    The pending commit is recorded BEFORE the sequence word or the ring change: pair and first
    sequence number are stored before the pending head, each as one word, so a crash between
    the stores leaves the previous pending head, which settles as done; then the pair's
    sequence word moves past the new records (settle_commit moves it back if `head` never
    reaches `new_head`).
    """
    first_seq = words[seq_word] + 1
    base = ring.pending
    words[base + 1] = src_index
    words[base + 2] = first_seq
    words[base] = new_head
    words[seq_word] = first_seq + records - 1
    return first_seq


def commit_record(words: memoryview, memory: memoryview, dst: PartitionLayout, ring: RingWords,
                  source_id: int, src_index: int, seq_word: int, data: memoryview) -> int:
    """ONE record of `data` from `source_id` committed by a holder of `dst`'s lock that writes
    its own records (a lease's driver, partitions/leasing.py); its sequence number. Raises
    RingCorrupt naming a bad word, TooLarge or DestinationFull, with nothing written.

    The steps are check_commit_words, reserve, begin_commit, write_record_header, the payload
    and publish_head, in that order. The usual case (the words as the last commit left them,
    room before the ring's end) runs them flat in this one call: a lone packet finds every
    cache cold, and each call and lookup costs latency there (lone 64 B packets under a lease,
    p50 over 600: 47-48 us flat against 57-61 us through the helpers, alternating runs).
    Anything else (a wrap, no room, a word to question) takes the helpers themselves, which
    raise the named errors; tests/unit/test_commit_record.py holds the two paths equal.
    """
    capacity, count = dst.receive_size, len(data)
    head, tail, last = words[ring.head], words[ring.tail], words[seq_word]
    need = -(-(HEADER_SIZE + count) // ALIGN) * ALIGN
    pos = head % capacity
    if (0 < count and head == words[ring.pending] and last < SEQ_LIMIT and 0 <= tail <= head
            and head % ALIGN == 0 and tail % ALIGN == 0 and need <= capacity // 2 // ALIGN * ALIGN
            and pos + need <= capacity and head + need - tail <= capacity
            and (head != tail or pos + need <= dst.window)):  # not starts_over
        new_head, first = head + need, last + 1
        base = ring.pending  # begin_commit's stores, in its order
        words[base + 1] = src_index
        words[base + 2] = first
        words[base] = new_head
        words[seq_word] = first
        address = dst.receive_base + pos
        RECORD_HEADER.pack_into(memory, address, KIND_RECORD, source_id, first, count)
        memory[address + HEADER_SIZE:address + HEADER_SIZE + count] = data
        words[ring.head] = new_head  # the commit, last
        return first
    check_commit_words(words, dst, ring, head, tail, seq_word)
    r = reserve(head, tail, capacity, count, dst.window)
    first = begin_commit(words, ring, r.new_head, src_index, seq_word, 1)
    payload = write_record_header(memory, dst, r, source_id, first)
    memory[payload:payload + count] = data
    publish_head(words, dst.control, r.new_head)
    return first


def set_holder(words: memoryview, dst: PartitionLayout, holder: int) -> None:
    words[_word(dst.control + HOLDER_OFFSET)] = holder


def holder_word(dst: PartitionLayout) -> int:
    """The index of `dst`'s `holder` word in `words`, for a reader that checks it often."""
    return _word(dst.control + HOLDER_OFFSET)


def read_holder(words: memoryview, dst: PartitionLayout) -> int:
    return words[_word(dst.control + HOLDER_OFFSET)]


def next_grant_token(words: memoryview, ring: RingWords) -> int:
    """The adapter, granting the lock (held): a fresh token for this grant, stored as
    `grant_token` before the reply. Never 0 (a fresh control block's `released`), and never
    equal to the `released` word, so only the holder's proof can end the grant."""
    token = (words[ring.token] + 1) & TOKEN_MASK or 1
    if token == words[ring.released]:
        token = (token + 1) & TOKEN_MASK or 1
    words[ring.token] = token
    return token


def prove_release(words: memoryview, ring: RingWords) -> None:
    """The granted driver, done with its moves (MVXL, `head` published): write the grant's
    token as `released`, THEN post the lock. The adapter settles the grant only if `released`
    equals the token it granted; a post without it is a stray one."""
    words[ring.released] = words[ring.token]


def read_released(words: memoryview, ring: RingWords) -> int:
    return words[ring.released]


def note_writer(words: memoryview, ring: RingWords, network_id: int) -> None:
    """The adapter, lock held, before it writes a byte of a reservation for `network_id`
    (header, MVXL) or grants one: the ring's space now (also) holds that partition's bytes."""
    writer = words[ring.writer]
    if writer != network_id and writer != MIXED:
        words[ring.writer] = network_id if writer == 0 else MIXED


def only_written_by(words: memoryview, ring: RingWords, network_id: int) -> bool:
    """Whether every byte ever written in the ring's space is `network_id`'s (or nobody's):
    what such a partition finds there is its own old data, never another's."""
    return words[ring.writer] == network_id


def read_grant_token(words: memoryview, ring: RingWords) -> int:
    return words[ring.token]


def mark_lease(words: memoryview, ring: RingWords, token: int) -> None:
    """The adapter, granting a lease (lock held, token stored): the grant is a standing one,
    and nothing is recalled yet."""
    words[ring.recall] = 0
    words[ring.lease] = token


def lease_token(words: memoryview, ring: RingWords) -> int:
    """The token of the lease in force, or 0 if the grant in force (if any) is no lease."""
    return words[ring.lease]


def recall_lease(words: memoryview, ring: RingWords, token: int) -> None:
    """The adapter: it wants the lease `token` back (written before it wakes the holder)."""
    words[ring.recall] = token


def recalled(words: memoryview, ring: RingWords) -> int:
    """The token of the lease the adapter asked back (0: none)."""
    return words[ring.recall]


def check_commit_words(words: memoryview, dst: PartitionLayout, ring: RingWords, head: int,
                       tail: int, seq_word: int) -> None:
    """Before a commit builds on them, lock held and the last commit settled: RingCorrupt
    naming the word unless `head` and `tail` are possible, `head` is what the last commit
    published (the pending head: a plausible but forged head differs) and the pair's sequence
    word leaves room. The adapter (Engine) and a lease's holder (partitions/leasing.py) both
    check these words before each commit: `tail` comes from the receiving partition."""
    try:
        check_counters(head, tail, dst.receive_size)
    except RingCorrupt as exc:
        raise RingCorrupt(f"{_control_block_name(dst)}: {exc}") from None
    pending = words[ring.pending]
    if head != pending:
        raise RingCorrupt(f"{_control_block_name(dst)}: head {head} is not the last commit's "
                          f"pending_head {pending}")
    seq = words[seq_word]
    if seq >= SEQ_LIMIT:
        raise RingCorrupt(f"{_control_block_name(dst)}: a pair's sequence word is {seq} (limit "
                          f"{SEQ_LIMIT})")


def _control_block_name(dst: PartitionLayout) -> str:
    """How an error names a destination's control block (formatted only for an error: the
    check runs before every commit)."""
    return f"network ID {dst.network_id}'s control block"


def read_pending(words: memoryview, dst: PartitionLayout) -> tuple[int, int, int]:
    """(pending head, source index, first sequence number) of the last commit begun."""
    base = _word(dst.control + PENDING_OFFSET)
    return words[base], words[base + 1], words[base + 2]


def settle_commit(words: memoryview, layout: SegmentLayout, dst: PartitionLayout) -> bool:
    """Finish the bookkeeping of the last commit to `dst`; False if it was abandoned.

    Called with the lock held, when a grant ends or a restarted adapter recovers. If `head`
    never reached the pending head, the record stays invisible and the pair's sequence number
    goes back to what it was, so receivers see no gap and senders no phantom success.

    Every word is checked before anything is written back: a value no commit could have left
    (check_pending) raises RingCorrupt naming the word and the value, and nothing but `holder`
    and the lease words change (the caller fails the destination).
    """
    pending_head, src_index, first_seq = read_pending(words, dst)
    head = read_head(words, dst)
    set_holder(words, dst, 0)
    words[_word(dst.control + LEASE_OFFSET)] = 0  # whatever ended, no lease is in force
    words[_word(dst.control + RECALL_OFFSET)] = 0
    if pending_head == 0 or head == pending_head:
        return True
    seq_address = check_pending(words, layout, dst, head, pending_head, src_index, first_seq)
    write_seq(words, seq_address, first_seq - 1)
    words[_word(dst.control + PENDING_OFFSET)] = head
    return False


def check_pending(words: memoryview, layout: SegmentLayout, dst: PartitionLayout, head: int,
                  pending_head: int, src_index: int, first_seq: int) -> int:
    """The address of the pending commit's sequence word, once its words are proven possible;
    else RingCorrupt naming the word and its value. begin_commit leaves: a source that is
    another partition; a pending head past `head` by at most the ring, aligned; a first
    sequence number from 1 to the pair's sequence word (which it advanced past it)."""
    where = f"network ID {dst.network_id}'s control block"
    if not (src_index < len(layout.partitions) and src_index != dst.index):
        raise RingCorrupt(f"{where}: pending_source {src_index} is not another partition")
    if not (head < pending_head <= head + dst.receive_size and pending_head % ALIGN == 0):
        raise RingCorrupt(f"{where}: pending_head {pending_head} impossible with head {head} "
                          f"and a ring of {dst.receive_size} bytes")
    seq_address = layout.seq_address(src_index, dst.index)
    seq = read_seq(words, seq_address)
    if not 1 <= first_seq <= seq < SEQ_LIMIT:
        raise RingCorrupt(f"{where}: pending_first_seq {first_seq} impossible with the pair's "
                          f"sequence word {seq}")
    return seq_address
