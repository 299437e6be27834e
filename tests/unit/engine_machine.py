"""The adapter's request engine (adapter/engine.py) over one bytearray segment, for unit tests
without processes: a bytearray is the segment, counters are the locks and doorbells, `now` is
driven by hand.

The test plays every other party itself through `Machine`: the sender (bytes in its region),
the Fig 12 driver (MVXL, publish head, free the lock), the receiver (reads records up to head)
and the crash. The test_engine_*.py files test the engine with it (their fixture `m` is in
conftest.py); the driver's and the receiver's unit tests run against its engine.
"""

from __future__ import annotations

from adapter import receive_area
from adapter.engine import Engine
from adapter.errors import Status
from adapter.moves import mvxl
from adapter.protocol import (
    REPLY_HEADER,
    Move,
    Request,
    Result,
    decode_reply_header,
    decode_results,
)
from adapter.ring import RECORD_HEADER, RUN_DESCRIPTOR, align, next_record
from hypervisor.config import PAGE_SIZE, MachineConfig, PartitionConfig
from hypervisor.layout import PartitionLayout, SegmentLayout, plan_segment

TIMEOUT = 1.0  # the engine's lock timeout, in the seconds of the hand-driven clock
IDS = (1, 2, 3)


class FakeLock:
    """A binary semaphore as a counter (the engine's Lock protocol)."""

    def __init__(self) -> None:
        self.value = 1

    def try_acquire(self) -> bool:
        if self.value > 0:
            self.value -= 1
            return True
        return False

    def release(self) -> None:
        self.value += 1


class FakeBell:
    def __init__(self) -> None:
        self.rings = 0

    def release(self) -> None:
        self.rings += 1


class Machine:
    """One engine over one bytearray segment, plus the test's views of it."""

    def __init__(self, ids: tuple[int, ...] = IDS) -> None:
        self.ids = ids
        parts = tuple(PartitionConfig(f"p{i}", i, 16 * PAGE_SIZE, 4 * PAGE_SIZE) for i in ids)
        self.layout: SegmentLayout = plan_segment(MachineConfig(partitions=parts))
        self.mem = memoryview(bytearray(self.layout.total_size))
        self.words = receive_area.words(self.mem)
        self.by_id = self.layout.by_id()
        self.locks = {i: FakeLock() for i in ids}
        self.bells = {i: FakeBell() for i in ids}
        self.engine = self.fresh_engine()
        self.engine.recover(0.0)
        for i in ids:
            self.engine.attach(i)
        self._ids = iter(range(1, 1 << 30))

    def fresh_engine(self) -> Engine:
        """A new engine over the same memory and locks (a restarted adapter)."""
        return Engine(self.mem, self.layout, self.locks, self.bells, TIMEOUT)

    def p(self, network_id: int) -> PartitionLayout:
        return self.by_id[network_id]

    def put(self, network_id: int, offset: int, data: bytes) -> None:
        """The sender writes into its own region."""
        base = self.p(network_id).base + offset
        self.mem[base:base + len(data)] = data

    def submit(self, src: int, op: int, moves: list[tuple[int, int, int]], now: float = 0.0,
               engine: Engine | None = None) -> tuple[int, tuple[Result, ...]] | None:
        """Submit from `src` (moves as (dst, offset, count)); (frame status, results) or None."""
        request = Request(op, next(self._ids), tuple(Move(src, d, o, c) for d, o, c in moves))
        frame = (engine or self.engine).submit(src, request, now)
        return None if frame is None else decode(frame)

    def head(self, dst: int) -> int:
        return receive_area.read_head(self.words, self.p(dst))

    def seq(self, src: int, dst: int) -> int:
        return receive_area.read_seq(self.words,
                                     self.layout.seq_address(self.p(src).index, self.p(dst).index))

    def records(self, dst: int) -> list[tuple[int, int, int, bytes]]:
        """What the receiver of `dst` sees: (kind, source ID, seq, payload) up to head."""
        d = self.p(dst)
        tail, head, out = receive_area.read_tail(self.words, d), self.head(dst), []
        while (rv := next_record(tail, head, d.receive_size,
                                 lambda pos: RECORD_HEADER.unpack_from(self.mem,
                                                                       d.receive_base + pos))):
            start = d.receive_base + rv.payload_position
            out.append((rv.kind, rv.source_id, rv.seq, bytes(self.mem[start:start + rv.length])))
            tail = rv.next_tail
        return out

    def drive(self, result: Result, dst: int, publish: bool = True) -> None:
        """The Fig 12 driver: MVXL, publish the commit, prove the release, free the lock."""
        mvxl(self.mem, result.dst_address, result.src_address, result.count)
        if publish:
            receive_area.publish_head(self.words, self.p(dst).control, result.commit_value)
        self.free(dst)

    def free(self, dst: int) -> None:
        """The holder's free: the grant's token as `released`, then the post."""
        receive_area.prove_release(self.words, receive_area.RingWords.of(self.p(dst)))
        self.locks[dst].release()

    def lock_state(self, dst: int, engine: Engine | None = None) -> str:
        return (engine or self.engine).book.state(dst).value


def decode(frame: bytes) -> tuple[int, tuple[Result, ...]]:
    _, _, status, n = decode_reply_header(frame[:REPLY_HEADER.size])
    return status, decode_results(frame, n, REPLY_HEADER.size)


def ok(reply) -> tuple[Result, ...]:
    assert reply is not None, "parked"
    status, results = reply
    assert status == Status.OK
    assert all(r.status == Status.OK for r in results), results
    return results


def run_bytes(packets: list[bytes]) -> bytes:
    """A multiple-write run as the sender lays it out: descriptor, then each packet padded."""
    length = len(packets[0])
    body = b"".join(p + bytes(align(length) - length) for p in packets)
    return RUN_DESCRIPTOR.pack(len(packets), length) + body
