"""A simulated ring (adapter/ring.py): one producer and one consumer driven at random by
hypothesis over a bytearray, with nothing but the ring's pure functions."""

from __future__ import annotations

from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from adapter import ring
from adapter.errors import DestinationFull, TooLarge
from adapter.ring import (
    ALIGN,
    HEADER_SIZE,
    KIND_PAD,
    KIND_RECORD,
    RECORD_HEADER,
    check_counters,
    max_payload,
    next_record,
    record_size,
    reserve,
)
from tests.unit.ring_bytes import header_reader

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


class SmallWindowSimulation(RingSimulation):
    """The same with a window (ring.WINDOW) smaller than the ring, so records start over at
    the ring's start when they find it empty (ring.starts_over): nothing else may change."""

    @initialize(window=st.integers(1, 96).map(lambda k: k * ALIGN))
    def small_window(self, window):
        self.saved_window, ring.WINDOW = ring.WINDOW, window

    def teardown(self):
        try:
            super().teardown()
        finally:
            if hasattr(self, "saved_window"):
                ring.WINDOW = self.saved_window


TestSmallWindowSimulation = SmallWindowSimulation.TestCase
TestSmallWindowSimulation.settings = settings(max_examples=150, stateful_step_count=60,
                                              deadline=None)
