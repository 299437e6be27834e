"""Ring arithmetic of the receive area (adapter/ring.py), without processes or shared memory:
record sizes, `reserve` placing a record or refusing it, the counters checked, and
`next_record` reading one.

The ring lives in a plain bytearray here; the producer is `reserve` plus the writes the adapter
(or a Fig 12 driver) makes, the consumer is `next_record` plus the receiver's tail update.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import DestinationFull, RingCorrupt, TooLarge
from adapter.ring import (
    ALIGN,
    HEADER_SIZE,
    KIND_PAD,
    KIND_RECORD,
    RECORD_HEADER,
    WINDOW,
    RecordView,
    align,
    check_counters,
    has_room,
    max_payload,
    next_record,
    record_size,
    reserve,
    starts_over,
)
from tests.unit.ring_bytes import CAP, header_reader


def no_headers(position: int):
    raise AssertionError(f"read_header({position}) must not be called")


# -- sizes -------------------------------------------------------------------------------


def test_record_size_is_header_plus_payload_aligned():
    assert HEADER_SIZE == 24
    assert record_size(1) == 32
    assert record_size(8) == 32
    assert record_size(9) == 40
    assert all(record_size(n) % ALIGN == 0 and record_size(n) >= HEADER_SIZE + n
               for n in range(0, 200))
    assert align(0) == 0 and align(1) == 8 and align(8) == 8


def test_largest_payload_is_accepted_and_one_more_is_too_large():
    assert reserve(0, 0, CAP, max_payload(CAP)).length == max_payload(CAP)
    with pytest.raises(TooLarge, match=f"record of {max_payload(CAP) + 1} bytes"):
        reserve(0, 0, CAP, max_payload(CAP) + 1)


@pytest.mark.parametrize("length", [0, -1, -(2**63), CAP, CAP * 2, 2**63 - 1, 2**64])
def test_too_large_or_empty_records_are_refused(length):
    with pytest.raises(TooLarge, match=f"record of {length} bytes does not fit a ring of {CAP}"):
        reserve(0, 0, CAP, length)


# -- reserve: placement ----------------------------------------------------------------------


def test_fits_at_head():
    r = reserve(0, 0, CAP, 100)
    assert (r.position, r.length, r.pad_position, r.new_head) == (0, 100, None, 128)
    assert r.payload_position == HEADER_SIZE
    r = reserve(128, 0, CAP, 100)
    assert (r.position, r.pad_position, r.new_head) == (128, None, 256)


def test_counters_are_never_wrapped_positions_are():
    r = reserve(10 * CAP + 64, 10 * CAP, CAP, 100)
    assert (r.position, r.pad_position, r.new_head) == (64, None, 10 * CAP + 192)


def test_exact_fit_at_the_end_does_not_wrap():
    head = CAP - record_size(100)
    r = reserve(head, head, CAP, 100)
    assert (r.position, r.pad_position, r.new_head) == (head, None, CAP)


def test_wrap_writes_a_pad_when_a_header_fits_in_the_tail():
    head = CAP - 96  # 96 bytes left: a header fits, the 128-byte record does not
    r = reserve(head, head, CAP, 100)
    assert (r.position, r.pad_position, r.new_head) == (0, head, head + 96 + 128)


def test_wrap_with_a_tail_shorter_than_a_header_skips_it_implicitly():
    head = CAP - 16  # 16 < HEADER_SIZE: no room even for a PAD header
    r = reserve(head, head, CAP, 100)
    assert (r.position, r.pad_position, r.new_head) == (0, None, head + 16 + 128)


def test_tail_exactly_one_header_long_gets_a_pad():
    head = CAP - HEADER_SIZE
    r = reserve(head, head, CAP, 100)
    assert (r.position, r.pad_position) == (0, head)


# -- reserve: full ------------------------------------------------------------------------


def test_full_ring_refuses_with_the_free_byte_count():
    with pytest.raises(DestinationFull, match="need 128 bytes, 64 free"):
        reserve(CAP + 64, 128, CAP, 100)
    with pytest.raises(DestinationFull, match="need 192 bytes, 64 free"):  # 64 skipped + 128
        reserve(CAP - 64, 0, CAP, 100)
    with pytest.raises(DestinationFull, match="need 32 bytes, 0 free"):
        reserve(CAP, 0, CAP, 1)


def test_exactly_full_is_accepted():
    r = reserve(CAP - 128, 0, CAP, 100)
    assert r.new_head - 0 == CAP


def test_room_in_the_middle_but_not_past_the_skip_is_full():
    # head at CAP - 96 (a 96-byte tail to skip), tail at 64: 160 free in total, but the record
    # must start at 0 which is still unconsumed.
    with pytest.raises(DestinationFull, match="need 224 bytes, 160 free"):
        reserve(CAP - 96, 64, CAP, 100)


def test_wrap_needs_the_unconsumed_start_of_the_ring_to_be_free():
    head, tail = 2 * CAP - 96, CAP + 128  # live bytes [128, CAP - 96) of the ring, 224 free
    r = reserve(head, tail, CAP, 100)  # 96 skipped + 128 record == 224: ends exactly at tail
    assert (r.position, r.pad_position, r.new_head) == (0, CAP - 96, tail + CAP)
    with pytest.raises(DestinationFull, match="need 232 bytes, 224 free"):
        reserve(head, tail, CAP, 105)  # one more aligned word would overwrite live bytes


# -- reserve: a big ring used as a small one while its reader keeps up -----------------------

BIG = 4 * WINDOW


def test_an_empty_big_ring_starts_over_past_the_window():
    head = 5 * BIG + WINDOW - 64  # empty, the record would end past the window
    r = reserve(head, head, BIG, 100)
    assert (r.position, r.pad_position) == (0, WINDOW - 64)
    assert r.new_head == head + (BIG - (WINDOW - 64)) + record_size(100)


def test_a_record_ending_inside_the_window_stays_at_head():
    head = 5 * BIG + WINDOW - record_size(100)
    r = reserve(head, head, BIG, 100)
    assert (r.position, r.pad_position, r.new_head) == (WINDOW - record_size(100), None,
                                                       head + record_size(100))


def test_a_ring_with_unconsumed_records_does_not_start_over():
    """Only an empty ring starts over: a reader that falls behind keeps the whole ring."""
    head = WINDOW + 4096
    r = reserve(head, head - 8, BIG, 100)
    assert (r.position, r.pad_position) == (head, None)


def test_a_big_record_starts_over_only_where_it_fits_before_head():
    """A record bigger than the window goes back to the start of an empty ring only when
    it fits before the head (all of the ring is free then, so that is the only condition)."""
    length = WINDOW
    need = record_size(length)
    r = reserve(need - 8, need - 8, BIG, length)  # does not fit in [0, head)
    assert (r.position, r.pad_position) == (need - 8, None)
    r = reserve(need, need, BIG, length)  # fits exactly
    assert (r.position, r.pad_position, r.new_head) == (0, need, BIG + need)


def test_a_rings_own_window_decides_where_its_records_start_over():
    """The partition's receive_window (PartitionLayout.window), not WINDOW, when given."""
    head = 5 * BIG + WINDOW // 4 - 64  # empty; past a window of WINDOW / 4, inside WINDOW
    assert reserve(head, head, BIG, 100).position == WINDOW // 4 - 64
    r = reserve(head, head, BIG, 100, WINDOW // 4)
    assert (r.position, r.pad_position) == (0, WINDOW // 4 - 64)
    assert starts_over(head, head, WINDOW // 4 - 64, 128, WINDOW // 4)
    assert not starts_over(head, head, WINDOW // 4 - 64, 128)


def test_a_ring_no_bigger_than_the_window_never_starts_over():
    head = 3 * WINDOW + WINDOW - 128  # empty, the record ends at the ring's (= window's) end
    r = reserve(head, head, WINDOW, 100)
    assert (r.position, r.pad_position) == (WINDOW - 128, None)
    assert not starts_over(head, head, WINDOW - 128, 128)


@given(pos=st.integers(0, CAP // ALIGN - 1).map(lambda k: k * ALIGN),
       turns=st.integers(0, 1000),
       length=st.integers(1, max_payload(CAP)))
def test_an_empty_ring_accepts_any_record_up_to_max_payload(pos, turns, length):
    """Liveness: draining the ring must be enough for a sender to make progress.

    Regression: max_payload used to be capacity - HEADER_SIZE, so once the head was off 0 a
    large record needed skip + record > capacity bytes and was refused as DestinationFull
    forever, even by an empty ring.
    """
    head = turns * CAP + pos
    r = reserve(head, head, CAP, length)
    assert r.new_head - head <= CAP


@pytest.mark.parametrize("capacity", [4096, 65536, 256 * 1024, 2 * 1024 * 1024])
def test_a_drained_ring_always_takes_the_largest_record(capacity):
    """The bug report's sequence: small record, drain, largest record -- and mixes of them.

    Before the fix the largest record was capacity - HEADER_SIZE; after a 1000-byte record it
    needed (capacity - 1024) + capacity bytes and a drained ring refused it forever.
    """
    biggest = max_payload(capacity)
    head = 0
    for length in (1000, biggest, 8, biggest, biggest, 1000, 24, biggest, 1):
        r = reserve(head, head, capacity, length)  # the receiver drained everything so far
        head = r.new_head
    with pytest.raises(TooLarge):
        reserve(head, head, capacity, capacity - HEADER_SIZE)  # the old, unplaceable maximum


# -- counters -------------------------------------------------------------------------------


@pytest.mark.parametrize("head,tail", [
    (0, 8),  # tail past head
    (CAP + 8, 0),  # more unconsumed than the ring holds
    (4, 0),  # head not aligned
    (8, 4),  # tail not aligned
    (0, -8),  # negative
    (-8, -16),
])
def test_corrupt_counters_are_refused_by_both_sides(head, tail):
    with pytest.raises(RingCorrupt, match=f"head {head} tail {tail} invalid for capacity {CAP}"):
        check_counters(head, tail, CAP)
    with pytest.raises(RingCorrupt):
        reserve(head, tail, CAP, 8)
    with pytest.raises(RingCorrupt):
        next_record(tail, head, CAP, no_headers)


@pytest.mark.parametrize("capacity", [0, -4096, 4100, 1001])
def test_capacity_must_be_a_positive_multiple_of_align(capacity):
    """An unaligned capacity would make a wrapped head unaligned: the ring would corrupt itself."""
    with pytest.raises(RingCorrupt, match=f"capacity {capacity}"):
        reserve(0, 0, capacity, 8)
    with pytest.raises(RingCorrupt, match=f"capacity {capacity}"):
        next_record(0, 0, capacity, no_headers)


def test_ring_of_one_header_holds_nothing():
    assert max_payload(HEADER_SIZE) <= 0
    with pytest.raises(TooLarge):
        reserve(0, 0, HEADER_SIZE, 1)


# -- next_record -------------------------------------------------------------------------


def test_empty_ring_has_no_record():
    assert next_record(0, 0, CAP, no_headers) is None
    assert next_record(5 * CAP + 64, 5 * CAP + 64, CAP, no_headers) is None


def write(buf: bytearray, position: int, kind: int, source: int, seq: int, length: int) -> None:
    RECORD_HEADER.pack_into(buf, position, kind, source, seq, length)


def test_reads_a_committed_record():
    buf = bytearray(CAP)
    write(buf, 0, KIND_RECORD, 7, 1, 100)
    view = next_record(0, 128, CAP, header_reader(buf))
    assert view == RecordView(0, 7, 1, 100, 128)
    assert view.payload_position == HEADER_SIZE


def test_skips_a_pad_to_the_record_at_zero():
    buf = bytearray(CAP)
    head = CAP - 96
    write(buf, head, KIND_PAD, 0, 0, 0)
    write(buf, 0, KIND_RECORD, 3, 9, 100)
    view = next_record(head, head + 96 + 128, CAP, header_reader(buf))
    assert view == RecordView(0, 3, 9, 100, head + 96 + 128)


def test_skips_a_short_tail_without_reading_it():
    buf = bytearray(CAP)
    tail = CAP - 16
    write(buf, 0, KIND_RECORD, 3, 9, 100)
    reads = []

    def reader(position):
        reads.append(position)
        return RECORD_HEADER.unpack_from(buf, position)

    view = next_record(tail, tail + 16 + 128, CAP, reader)
    assert reads == [0] and view.next_tail == tail + 16 + 128


def test_a_pad_alone_is_consumed_to_nothing():
    buf = bytearray(CAP)
    write(buf, CAP - 96, KIND_PAD, 0, 0, 0)
    assert next_record(CAP - 96, CAP, CAP, header_reader(buf)) is None


def test_garbage_header_is_corrupt():
    buf = bytearray(CAP)
    write(buf, 0, 0xDEADBEEF, 1, 1, 8)
    with pytest.raises(RingCorrupt, match="bad record header kind 0xdeadbeef length 8 at 0"):
        next_record(0, 32, CAP, header_reader(buf))


def test_record_longer_than_the_ring_end_is_corrupt():
    buf = bytearray(CAP)
    write(buf, CAP - 64, KIND_RECORD, 1, 1, 2**64 - 1)
    with pytest.raises(RingCorrupt, match=f"length {2**64 - 1} at {CAP - 64}"):
        next_record(CAP - 64, CAP, CAP, header_reader(buf))


def test_record_running_past_head_is_corrupt():
    buf = bytearray(CAP)
    write(buf, 0, KIND_RECORD, 1, 1, 1000)
    with pytest.raises(RingCorrupt, match="runs past head 128"):
        next_record(0, 128, CAP, header_reader(buf))


@given(capacity=st.sampled_from([4096, 65536, 1 << 20]), used=st.integers(0, 1 << 20),
       pos=st.integers(0, (1 << 20) // ALIGN).map(lambda k: k * ALIGN),
       turns=st.integers(0, 3), length=st.integers(1, 1 << 19),
       window=st.sampled_from([4096, 1 << 16, WINDOW]),
       skew=st.sampled_from([0, 0, 0, 0, 3, -8, 8 << 20]))
def test_has_room_says_what_reserve_would_do(capacity, used, pos, turns, length, window, skew):
    """A writer's look before it asks (`has_room`) agrees with `reserve` on every ring state:
    True exactly when a record of `length` bytes is placed, False exactly when it is refused
    for room, and True for words `reserve` refuses as wrong (`skew`: a misaligned tail, a
    tail past head, more unread than the ring holds)."""
    head = turns * capacity + pos % capacity
    tail = max(0, head - min(used, capacity) // ALIGN * ALIGN + skew)
    try:
        reserve(head, tail, capacity, length, window)
    except DestinationFull:
        assert not has_room(head, tail, capacity, length, window)
    except (TooLarge, RingCorrupt):
        assert has_room(head, tail, capacity, length, window)  # reserve names what is wrong
    else:
        assert has_room(head, tail, capacity, length, window)


@pytest.mark.parametrize("head, tail, capacity, length", [
    (100, 200, 4096, 8),  # tail past head
    (0, 0, 4096, 0),  # no bytes
    (0, 0, 4096, 4096),  # more than half the ring
    (8192, 0, 4096, 8),  # more unread than the ring holds
    (8192, 4099, 4096, 8),  # a misaligned tail (and, read as it stands, no room)
    (0, 0, 4100, 8),  # a capacity that is no multiple of ALIGN
])
def test_has_room_leaves_wrong_words_to_reserve(head, tail, capacity, length):
    """Counters or a length that `reserve` refuses as wrong: the look says True, so the
    writer asks, and the refusal names what is wrong (the look never waits on them)."""
    assert has_room(head, tail, capacity, length)
    with pytest.raises((RingCorrupt, TooLarge)):
        reserve(head, tail, capacity, length)
