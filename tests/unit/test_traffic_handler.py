"""The workload's receive handler (receive_check.make_handler): what it counts for intact,
corrupt, duplicate and out-of-order blocks, short (memoryviews, one check each) and long (rows,
one check_block), and the sampled fill/check timing. Frames go through the real FrameStamper
and FrameReader."""

from __future__ import annotations

import pytest

from hypervisor.layout import PartitionLayout
from partitions.blocks import SMALL_BLOCK
from partitions.memory import PartitionView
from scripts.workload.frames import FRAME, FrameReader, FrameStamper
from scripts.workload.receive_check import TIME_EVERY, ReceiveStats, make_handler, timing_scale
from scripts.workload.traffic import Traffic
from scripts.workload.transports import BatchLayout, make_batch

SRC, DST, SIZE = 1, 2, 64
SPACE = 1 << 20


def receiver() -> tuple[Traffic, ReceiveStats, object]:
    region = memoryview(bytearray(2 * SPACE))
    view = PartitionView(region, PartitionLayout(0, "p", DST, 0, 2 * SPACE, SPACE, SPACE, 0))
    traffic = Traffic(DST, view, SPACE)
    rx = ReceiveStats()
    return traffic, rx, make_handler("tcp", rx, traffic.pattern, DST, traffic._last_seq)


def frames(traffic: Traffic, stamper: FrameStamper, count: int, first_counter: int,
           corrupt: int | None = None) -> bytes:
    """`count` framed packets from SRC to DST, packet counters from `first_counter`; the
    packet at index `corrupt` gets one body byte flipped."""
    batch = make_batch(memoryview(bytearray(SPACE)), SIZE, BatchLayout(FRAME.size), count)
    for i, slot in enumerate(batch.slots):
        traffic.pattern.fill(slot.payload, SRC, DST, first_counter + i, 123)
    if corrupt is not None:
        batch.slots[corrupt].payload[-1] ^= 0xFF
    stamper.stamped(DST, stamper.stamp(DST, batch))
    return bytes(batch.span)


def deliver(handler, data: bytes) -> int:
    reader = FrameReader()
    with reader.recv_buffer() as buf:
        buf[:len(data)] = data
    reader.wrote(len(data))
    return reader.drain(handler)


@pytest.mark.parametrize("count", [1, 5, SMALL_BLOCK - 1, SMALL_BLOCK, 40])
def test_intact_blocks_count_every_packet_and_keep_latencies(count):
    traffic, rx, handler = receiver()
    stamper = FrameStamper(SRC)
    assert deliver(handler, frames(traffic, stamper, count, 1)) == count
    assert deliver(handler, frames(traffic, stamper, count, 1 + count)) == count
    assert rx.received[SRC] == 2 * count and rx.bytes_in == 2 * count * SIZE
    assert (rx.corrupt, rx.gaps, rx.duplicates) == (0, 0, 0)
    assert rx.arrivals == 2 * count and len(rx.latencies_ns) == 2 * count  # stride 1


@pytest.mark.parametrize("count, bad", [(1, 0), (5, 0), (5, 4), (SMALL_BLOCK - 1, 7), (40, 20)])
def test_a_corrupt_packet_is_counted_alone(count, bad):
    traffic, rx, handler = receiver()
    deliver(handler, frames(traffic, FrameStamper(SRC), count, 1, corrupt=bad))
    assert rx.corrupt == 1 and rx.received[SRC] == count - 1
    # a corrupt packet's sequence number is not taken: the next one counts it as a gap
    assert rx.gaps == (1 if bad < count - 1 else 0) and rx.duplicates == 0


@pytest.mark.parametrize("count", [1, 3, 20])
def test_repeated_sequence_numbers_are_duplicates_and_skipped_ones_gaps(count):
    traffic, rx, handler = receiver()
    stamper = FrameStamper(SRC)
    data = frames(traffic, stamper, count, 1)
    deliver(handler, data)
    deliver(handler, data)  # the same frames again
    assert rx.duplicates == count and rx.received[SRC] == count
    stamper.stamped(DST, stamper._seq[DST] + 5)  # five frames never sent
    deliver(handler, frames(traffic, stamper, count, 1 + count))
    assert rx.gaps == 5 and rx.received[SRC] == 2 * count


def test_check_time_is_sampled_below_small_block_and_always_above():
    traffic, rx, handler = receiver()
    stamper = FrameStamper(SRC)
    counter = 1
    for _ in range(TIME_EVERY - 1):  # short blocks: none timed yet
        deliver(handler, frames(traffic, stamper, 3, counter))
        counter += 3
    assert rx.check_s == 0.0
    deliver(handler, frames(traffic, stamper, 3, counter))  # the TIME_EVERY-th: timed
    counter += 3
    assert rx.check_s > 0.0
    before = rx.check_s
    deliver(handler, frames(traffic, stamper, SMALL_BLOCK, counter))  # long: always timed
    assert rx.check_s > before
    assert timing_scale(1) == TIME_EVERY and timing_scale(SMALL_BLOCK) == 1
