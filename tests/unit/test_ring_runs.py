"""Multiple-write runs in the ring (adapter/ring.py): `check_run` accepts exactly the
descriptors that tile a run, and `next_record` reports a run record by its kind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import BadCount
from adapter.ring import (
    KIND_RUN,
    MAX_RUN_RECORDS,
    MIN_RUN,
    RECORD_HEADER,
    RUN_DESCRIPTOR,
    RecordView,
    align,
    check_run,
    next_record,
    record_size,
)
from tests.unit.ring_bytes import CAP, header_reader


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
