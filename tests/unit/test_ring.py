"""Ring arithmetic of the receive area (adapter/ring.py), without processes or shared memory.

The ring lives in a plain bytearray here; the producer is `reserve` plus the writes the adapter
(or a Fig 12 driver) makes, the consumer is `next_record` plus the receiver's tail update.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from adapter.errors import BadCount, DestinationFull, RingCorrupt, TooLarge
from adapter.ring import (
    ALIGN,
    HEADER_SIZE,
    KIND_PAD,
    KIND_RECORD,
    KIND_RUN,
    MAX_RUN_RECORDS,
    MIN_RUN,
    RECORD_HEADER,
    RUN_DESCRIPTOR,
    RecordView,
    align,
    check_counters,
    check_run,
    max_payload,
    next_record,
    record_size,
    reserve,
)

CAP = 4096


def header_reader(buf: bytearray):
    return lambda position: RECORD_HEADER.unpack_from(buf, position)


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


# -- a simulated ring: producer and consumer driven at random -----------------------------------


class RingSimulation(RuleBasedStateMachine):
    """One producer, one consumer, a bytearray ring and nothing but the pure functions.

    Checks after every step: counters valid; live records never overlap each other (nor does
    a new record or its PAD overlap a live one); the consumer sees records in FIFO order with
    intact payloads; DestinationFull only when there really is no room, never for an empty
    ring; at the end everything accepted has been consumed (nothing lost).
    """

    @initialize(capacity=st.integers(8, 96).map(lambda k: k * ALIGN),
                start=st.integers(0, 2**40))
    def setup(self, capacity, start):
        self.capacity = capacity
        self.buf = bytearray(capacity)
        self.head = self.tail = start * ALIGN  # counters far from 0 must work the same
        self.live: deque[tuple[int, int, int, bytes]] = deque()  # seq, position, size, payload
        self.seq = 0
        self.accepted: list[int] = []
        self.consumed: list[int] = []

    def payload(self, seq: int, length: int) -> bytes:
        return bytes((seq * 131 + i * 7) & 0xFF for i in range(length))

    def live_bytes(self) -> set[int]:
        return {(pos + i) for _, pos, size, _ in self.live for i in range(size)}

    @rule(length=st.one_of(st.integers(-2, 40), st.integers(-2, 800)))
    def produce(self, length):
        try:
            r = reserve(self.head, self.tail, self.capacity, length)
        except TooLarge:
            assert length <= 0 or length > max_payload(self.capacity)
            return
        except DestinationFull:
            assert 0 < length <= max_payload(self.capacity)
            assert self.head != self.tail, "an empty ring refused a record it can hold"
            need = record_size(length)
            pos = self.head % self.capacity
            skip = 0 if pos + need <= self.capacity else self.capacity - pos
            assert skip + need > self.capacity - (self.head - self.tail)
            return
        need = record_size(length)
        assert 0 <= r.position and r.position + need <= self.capacity
        written = set(range(r.position, r.position + need))
        if r.pad_position is not None:
            assert r.pad_position + HEADER_SIZE <= self.capacity
            written |= set(range(r.pad_position, r.pad_position + HEADER_SIZE))
        assert not written & self.live_bytes(), "a write would overwrite unconsumed bytes"
        assert r.new_head - self.tail <= self.capacity
        self.seq += 1
        data = self.payload(self.seq, length)
        if r.pad_position is not None:
            RECORD_HEADER.pack_into(self.buf, r.pad_position, KIND_PAD, 0, 0, 0)
        RECORD_HEADER.pack_into(self.buf, r.position, KIND_RECORD, 42, self.seq, length)
        self.buf[r.payload_position:r.payload_position + length] = data
        self.head = r.new_head  # published last
        self.live.append((self.seq, r.position, need, data))
        self.accepted.append(self.seq)

    @rule(steps=st.integers(1, 4))
    def consume(self, steps):
        for _ in range(steps):
            if not self.consume_one():
                break

    def consume_one(self) -> bool:
        view = next_record(self.tail, self.head, self.capacity, header_reader(self.buf))
        if view is None:
            assert not self.live, "a committed record became invisible"
            assert self.tail == self.head, "padding is always followed by its record"
            return False
        seq, position, size, data = self.live.popleft()
        assert (view.seq, view.source_id, view.position, view.length) == (
            seq, 42, position, len(data))
        got = bytes(self.buf[view.payload_position:view.payload_position + view.length])
        assert got == data, "payload torn or overwritten"
        self.tail = view.next_tail
        self.consumed.append(seq)
        return True

    @precondition(lambda self: self.head == self.tail)
    @rule(length=st.integers(1, 2000))
    def empty_ring_takes_any_legal_record(self, length):
        if length <= max_payload(self.capacity):
            self.produce(length)
            assert self.live, "an empty ring refused a record it can hold"

    @invariant()
    def counters_valid(self):
        check_counters(self.head, self.tail, self.capacity)
        assert sum(size for _, _, size, _ in self.live) <= self.head - self.tail
        assert len(self.live_bytes()) == sum(size for _, _, size, _ in self.live)

    def teardown(self):
        if not hasattr(self, "live"):
            return
        while self.consume_one():
            pass
        assert self.consumed == self.accepted, "a record was lost or reordered"


TestRingSimulation = RingSimulation.TestCase
TestRingSimulation.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_check_run_gives_the_stride_of_an_honest_run():
    assert check_run(RUN_DESCRIPTOR.size + 10 * 64, 10, 64) == 64
    assert check_run(RUN_DESCRIPTOR.size + 3 * 8, 3, 5) == 8  # packets padded to ALIGN
    assert check_run(MIN_RUN, 1, 1) == 8


@pytest.mark.parametrize("count, packets, length", [
    (0, 1, 1), (MIN_RUN - 8, 1, 1), (MIN_RUN + 1, 1, 1),  # too small, or not a multiple of 8
    (RUN_DESCRIPTOR.size + 64, 0, 64),  # no packets
    (RUN_DESCRIPTOR.size + 64, 1, 0),  # empty packets
    (RUN_DESCRIPTOR.size + 64, 2, 64),  # more than fit
    (RUN_DESCRIPTOR.size + 128, 1, 64),  # fewer than fill it
    (RUN_DESCRIPTOR.size + 64, 1, 57 + 64),  # one too long
    (RUN_DESCRIPTOR.size + 9 * 8, 9, 8),  # more than max_packets (8 below)
])
def test_check_run_refuses_a_descriptor_that_does_not_tile_the_run(count, packets, length):
    with pytest.raises(BadCount, match=f"run of {count} bytes"):
        check_run(count, packets, length, max_packets=8)


@given(packets=st.integers(1, 64), length=st.integers(1, 300),
       lie=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))
def test_check_run_accepts_exactly_the_descriptors_that_tile(packets, length, lie):
    count = RUN_DESCRIPTOR.size + packets * align(length)
    assert check_run(count, packets, length) == align(length)
    tiles = 1 <= lie[0] <= MAX_RUN_RECORDS and lie[1] >= 1 and (
        RUN_DESCRIPTOR.size + lie[0] * align(lie[1]) == count)
    if tiles:
        assert check_run(count, *lie) == align(lie[1])
    else:
        with pytest.raises(BadCount):
            check_run(count, *lie)


def test_next_record_reports_a_run_record_by_kind():
    buf = bytearray(CAP)
    length = RUN_DESCRIPTOR.size + 4 * 64
    RECORD_HEADER.pack_into(buf, 0, KIND_RUN, 7, 11, length)
    view = next_record(0, record_size(length), CAP, header_reader(buf))
    assert view == RecordView(0, 7, 11, length, record_size(length), KIND_RUN)
