"""Batch layout in sender memory (scripts.workload.transports: BatchLayout, make_batch,
batch_capacity), without processes: where each packet goes, and how many fit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.ring import ALIGN, RUN_DESCRIPTOR, check_run
from scripts.workload.frames import FRAME
from scripts.workload.transports import BatchLayout, batch_capacity, make_batch

RUN = BatchLayout(0, RUN_DESCRIPTOR.size, ALIGN)  # a multiple-write run (adapter flows)
FRAMES = BatchLayout(FRAME.size)  # socket frames


@given(size=st.integers(1, 300), n=st.integers(1, 40))
def test_a_run_batch_is_laid_out_as_the_ring_holds_it(size, n):
    """Descriptor first, then the packets each padded to ALIGN: exactly what check_run accepts
    for the bytes the driver names (lead + slots)."""
    region = memoryview(bytearray(RUN.lead + n * RUN.stride(size)))
    batch = make_batch(region, size, RUN, n)
    assert batch.stride % ALIGN == 0 and batch.stride - size < ALIGN
    assert [s.offset for s in batch.slots] == [RUN.lead + i * batch.stride for i in range(n)]
    assert all(len(s.payload) == size for s in batch.slots)
    assert len(batch.lead) == RUN_DESCRIPTOR.size
    assert batch.payloads.shape == (n, size)
    count = RUN.lead + n * batch.stride
    assert check_run(count, n, size) == batch.stride


def test_payload_rows_are_the_slots_memory():
    region = memoryview(bytearray(RUN.lead + 3 * 16))
    batch = make_batch(region, 13, RUN, 3)
    batch.payloads[1, :] = 7
    assert bytes(batch.slots[1].payload) == bytes([7]) * 13
    assert bytes(region[RUN.lead + 16:RUN.lead + 16 + 13]) == bytes([7]) * 13
    assert bytes(region[:RUN.lead]) == bytes(RUN.lead)  # the descriptor is untouched


def test_frame_batches_are_back_to_back_frames():
    region = memoryview(bytearray(4 * (FRAME.size + 10)))
    batch = make_batch(region, 10, FRAMES, 4)
    assert batch.stride == FRAME.size + 10 and len(batch.span) == 4 * batch.stride
    assert [s.offset for s in batch.slots] == [i * batch.stride + FRAME.size for i in range(4)]
    assert len(batch.lead) == 0


def test_a_prefix_keeps_the_layout():
    region = memoryview(bytearray(RUN.lead + 5 * 64))
    batch = make_batch(region, 64, RUN, 5).prefix(2)
    assert len(batch.slots) == 2 and batch.payloads.shape == (2, 64)
    assert batch.layout == RUN and len(batch.lead) == RUN.lead


@pytest.mark.parametrize("space, size, wanted, most, expected", [
    (8 + 10 * 64, 64, 100, 100, 10),  # the sender area bounds it
    (8 + 10 * 64, 64, 3, 100, 3),  # what was asked for
    (8 + 10 * 64, 64, 100, 4, 4),  # what one request may carry
    (8 + 64, 64, 100, 100, 1),
    (8 + 10 * 64, 60, 100, 100, 10),  # 60-byte packets take 64 bytes each
])
def test_batch_capacity(space, size, wanted, most, expected):
    assert batch_capacity(space, size, RUN, wanted, most) == expected


def test_a_packet_that_does_not_fit_the_sender_area_is_refused_by_size():
    with pytest.raises(ValueError, match="a 100-byte packet"):
        batch_capacity(100, 100, RUN, 1)
