"""Verifiable packet contents: block fills and checks against per-packet."""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitions.blocks import MAX_BLOCK
from scripts.workload.pattern import (
    _IMAGE_BYTES,
    _PERIOD,
    _ROW_BY_ROW,
    MIN_PACKET,
    PACKET_HEADER,
    Pattern,
)

MAX_SIZE = 4096
SIZES = [MIN_PACKET, MIN_PACKET + 1, 64, 1000, 3000]
SRC, DST = 5, 9
SENT = 123_456_789_012
LAST = _PERIOD - 1  # the last pattern offset before the offsets wrap


@lru_cache(maxsize=1)
def pattern() -> Pattern:
    return Pattern(MAX_SIZE)


def counter_at(offset: int, src: int = SRC, base: int = 0) -> int:
    """A counter >= base whose pattern offset for `src` is `offset`."""
    c = base + (offset - src * 7 - base) % _PERIOD
    assert (src * 7 + c) % _PERIOD == offset
    return c


def filled_one_by_one(count: int, size: int, first: int, src: int = SRC, dst: int = DST,
                      sent=SENT) -> np.ndarray:
    """`count` packets filled with `Pattern.fill` (the reference), one row each."""
    rows = np.zeros((count, size), dtype=np.uint8)
    for i in range(count):
        ns = sent[i] if isinstance(sent, list) else sent
        pattern().fill(memoryview(rows[i]), src, dst, first + i, ns)
    return rows


@cache
def intact_block(count: int, size: int, first: int) -> np.ndarray:
    rows = np.zeros((count, size), dtype=np.uint8)
    pattern().fill_rows(rows, SRC, DST, first, SENT)
    rows.flags.writeable = False  # tests copy before damaging it
    return rows


def test_the_thresholds_are_exercised():
    # 3000-byte packets take the row-by-row path, 1000-byte ones the vectorised one; 600 rows
    # from the last offset cross the wrap of the pattern offsets at least twice.
    assert 1000 - MIN_PACKET < _ROW_BY_ROW <= 3000 - MIN_PACKET
    assert 1 + 2 * _PERIOD <= 600


# -- fill_rows == fill ------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("count, first", [
    (1, 0), (7, 3), (600, counter_at(LAST)), (600, counter_at(LAST - 1)), (600, counter_at(0)),
    (_PERIOD + 9, counter_at(LAST, base=2**40)), (300, 2**63 - 100),
])
def test_fill_rows_writes_what_fill_writes(size, count, first):
    expected = filled_one_by_one(count, size, first)
    got = np.full((count, size), 0xAA, dtype=np.uint8)
    pattern().fill_rows(got, SRC, DST, first, SENT)
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("src", [0, 1, 36, 2**32 - 1])
def test_fill_rows_for_other_sources(src):
    first = counter_at(LAST - 5, src=src)
    expected = filled_one_by_one(300, 64, first, src=src, dst=2, sent=7)
    got = np.zeros((300, 64), dtype=np.uint8)
    pattern().fill_rows(got, src, 2, first, 7)
    assert got.tobytes() == expected.tobytes()


def test_fill_rows_into_strided_rows_touches_only_the_rows():
    """Like Batch.payloads: the packet rows are a column slice of wider frames."""
    count, size, room = 300, 100, 24
    frames = np.full((count, room + size + 8), 0x5A, dtype=np.uint8)
    rows = frames[:, room:room + size]
    pattern().fill_rows(rows, SRC, DST, counter_at(LAST - 50), SENT)
    assert rows.tobytes() == filled_one_by_one(count, size, counter_at(LAST - 50)).tobytes()
    assert (frames[:, :room] == 0x5A).all() and (frames[:, room + size:] == 0x5A).all()


@pytest.mark.parametrize("size", [0, 1, MIN_PACKET - 1])
def test_fill_rows_refuses_rows_below_the_minimum(size):
    rows = np.zeros((3, size), dtype=np.uint8)
    with pytest.raises(ValueError, match="minimum"):
        pattern().fill_rows(rows, SRC, DST, 0, SENT)
    with pytest.raises(ValueError, match="minimum"):
        pattern().fill(memoryview(bytearray(size)), SRC, DST, 0, SENT)


# -- check_block on intact blocks -------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("count, first", [(1, 0), (600, counter_at(LAST)), (_PERIOD, 17),
                                          (90, 2**40)])
def test_intact_blocks_pass_with_their_timestamps(size, count, first):
    sent = [1_000 + 3 * i for i in range(count)]  # distinct per row: fill, not fill_rows
    rows = filled_one_by_one(count, size, first, sent=sent)
    got = pattern().check_block(rows, SRC, DST)
    assert got is not None
    assert got.tolist() == sent
    for i, row in enumerate(rows):
        assert pattern().check(memoryview(row), SRC, DST) == (True, first + i, sent[i])


@pytest.mark.parametrize("lead", [24, 27])  # 27: rows not 8-byte aligned
@pytest.mark.parametrize("size", SIZES)
def test_check_block_accepts_strided_rows(size, lead):
    """Rows as a receiver hands them over: views into a buffer with headers in between."""
    count = 300
    frames = np.zeros((count, lead + size), dtype=np.uint8)
    frames[:, lead:] = intact_block(count, size, counter_at(LAST - 10))
    got = pattern().check_block(frames[:, lead:], SRC, DST)
    assert got is not None and (got == SENT).all() and len(got) == count


@pytest.mark.parametrize("lead", [24, 27])
def test_bytes_between_packets_are_not_checked(lead):
    """A frame header or padding between packets is not packet bytes: whatever it holds, an
    intact block passes (the check copies it, it does not compare it)."""
    count, size = 300, 1000
    frames = np.random.default_rng(7).integers(0, 256, (count, lead + size), dtype=np.uint8)
    frames[:, lead:] = intact_block(count, size, counter_at(LAST - 10))
    got = pattern().check_block(frames[:, lead:], SRC, DST)
    assert got is not None and (got == SENT).all()


@pytest.mark.parametrize("where", ["body", "counter", "source"])
def test_damage_past_the_first_chunk_fails(where):
    """A block longer than one image is checked in chunks: the last chunk counts too."""
    size = 1000
    count = 2 * (_IMAGE_BYTES // size) + 5
    rows = np.zeros((count, size), dtype=np.uint8)
    pattern().fill_rows(rows, SRC, DST, counter_at(LAST), SENT)
    assert pattern().check_block(rows, SRC, DST) is not None
    bad = count - 3
    if where == "body":
        rows[bad, size // 2] ^= 0x40
    else:
        header = list(PACKET_HEADER.unpack_from(rows[bad]))
        header[2 if where == "counter" else 0] += 1
        PACKET_HEADER.pack_into(rows[bad], 0, *header)
    assert pattern().check_block(rows, SRC, DST) is None
    assert verdicts(rows).count(False) == 1  # and packet by packet, that one is found


@pytest.mark.parametrize("size", [64, 1000, 3000])
def test_a_block_whose_counters_wrap_past_u64_passes(size):
    """Counters are u64 on the wire: a block may cross 2**64 (and a chunk may start past it)."""
    count = 2 * (_IMAGE_BYTES // size) + 5
    rows = np.zeros((count, size), dtype=np.uint8)
    pattern().fill_rows(rows, SRC, DST, 2**64 - 3, SENT)
    got = pattern().check_block(rows, SRC, DST)
    assert got is not None and len(got) == count
    assert [pattern().check(memoryview(r), SRC, DST)[1] for r in rows[:5]] == [
        2**64 - 3, 2**64 - 2, 2**64 - 1, 0, 1]


@pytest.mark.parametrize("size", [64, 1000, 3000])
@pytest.mark.parametrize("count", [1, 2, 20])
def test_garbage_fails_the_block_without_raising(size, count):
    """A header of all ones (counter 2**64 - 1) is just a bad packet to a receiver."""
    rows = np.full((count, size), 0xFF, dtype=np.uint8)
    assert pattern().check_block(rows, SRC, DST) is None


def test_a_lone_row_passes_whatever_its_row_stride():
    """numpy gives a 1-row array any row stride (0 for a broadcast row): it means nothing."""
    row = intact_block(1, 1000, 77)[0]
    assert pattern().check_block(np.broadcast_to(row, (1, 1000)), SRC, DST) is not None
    assert pattern().check_block(row[None, :], SRC, DST) is not None


@pytest.mark.parametrize("size", [64, 3000])
def test_the_largest_block_a_receiver_hands_over(size):
    first = counter_at(LAST - 3, base=2**33)
    rows = np.zeros((MAX_BLOCK, size), dtype=np.uint8)
    pattern().fill_rows(rows, SRC, DST, first, SENT)
    assert rows.tobytes() == filled_one_by_one(MAX_BLOCK, size, first).tobytes()
    got = pattern().check_block(rows, SRC, DST)
    assert got is not None and len(got) == MAX_BLOCK and (got == SENT).all()
    rows[-1, -1] ^= 1
    assert pattern().check_block(rows, SRC, DST) is None


def test_check_block_of_nothing_or_too_little_is_none():
    assert pattern().check_block(np.zeros((0, 64), dtype=np.uint8), SRC, DST) is None
    assert pattern().check_block(np.zeros((2, MIN_PACKET - 1), dtype=np.uint8), SRC,
                                 DST) is None
    assert pattern().check(memoryview(bytes(MIN_PACKET - 1)), SRC, DST)[0] is False


# -- check_block on damaged blocks ------------------------------------------------------------


def verdicts(rows: np.ndarray) -> list[bool]:
    return [pattern().check(memoryview(row), SRC, DST)[0] for row in rows]


@settings(max_examples=250, deadline=None)
@given(size=st.sampled_from(SIZES[1:]), count=st.sampled_from([1, 2, 60, 300]),
       offset=st.sampled_from([0, 100, LAST]), data=st.data())
def test_any_flipped_body_byte_fails_the_block(size, count, offset, data):
    row = data.draw(st.integers(0, count - 1), label="row")
    pos = data.draw(st.integers(MIN_PACKET, size - 1), label="byte")
    mask = data.draw(st.integers(1, 255), label="mask")
    rows = intact_block(count, size, counter_at(offset)).copy()
    rows[row, pos] ^= mask
    assert pattern().check_block(rows, SRC, DST) is None
    assert verdicts(rows) == [i != row for i in range(count)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("src, dst", [(SRC + 1, DST), (SRC, DST + 1), (DST, SRC)])
def test_wrong_source_or_destination_fails(size, src, dst):
    rows = intact_block(300, size, counter_at(LAST - 50))
    assert pattern().check_block(rows, src, dst) is None
    assert not any(pattern().check(memoryview(r), src, dst)[0] for r in rows)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("field, value", [(0, SRC + 1), (1, DST + 1)])
def test_one_row_with_a_wrong_source_or_destination_fails(size, field, value):
    count, bad = 300, 257
    rows = intact_block(count, size, 10).copy()
    header = list(PACKET_HEADER.unpack_from(rows[bad]))
    header[field] = value
    PACKET_HEADER.pack_into(rows[bad], 0, *header)
    assert pattern().check_block(rows, SRC, DST) is None
    assert verdicts(rows) == [i != bad for i in range(count)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("counters", [
    [0, 1, 2, 4, 5],  # a gap
    [3, 2, 1, 0],  # backwards
    [7, 8, 8, 9],  # a duplicate
    [0, 2, 4, 6],  # every second one
    [5, 6, 7, 8 + _PERIOD],  # a jump that lands on the same pattern offset
])
def test_non_consecutive_counters_fail_though_each_packet_is_intact(size, counters):
    rows = np.zeros((len(counters), size), dtype=np.uint8)
    for i, c in enumerate(counters):
        pattern().fill(memoryview(rows[i]), SRC, DST, c, SENT)
    assert pattern().check_block(rows, SRC, DST) is None
    assert verdicts(rows) == [True] * len(counters)
    assert [pattern().check(memoryview(r), SRC, DST)[1] for r in rows] == counters


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stale_row, back", [(0, 1), (150, 1), (150, 150), (299, _PERIOD),
                                             (299, 299)])
def test_a_stale_packet_in_place_fails(size, stale_row, back):
    """Row `stale_row` still holds an earlier packet of the same pair (e.g. a slot the sender
    has not rewritten): whole and intact by itself, but not the packet that belongs there."""
    count, first = 300, 1000
    rows = intact_block(count, size, first).copy()
    pattern().fill(memoryview(rows[stale_row]), SRC, DST, first + stale_row - back, SENT)
    assert pattern().check_block(rows, SRC, DST) is None
    assert verdicts(rows) == [True] * count
    assert pattern().check(memoryview(rows[stale_row]), SRC, DST)[1] == first + stale_row - back


@pytest.mark.parametrize("size", SIZES[1:])
@pytest.mark.parametrize("stale_row", [0, 123, 299])
def test_a_torn_packet_with_a_stale_body_fails(size, stale_row):
    """The header was rewritten for the new packet, the body is still the previous one's."""
    count, first = 300, counter_at(LAST - 1)
    rows = intact_block(count, size, first).copy()
    old = np.zeros(size, dtype=np.uint8)
    pattern().fill(memoryview(old), SRC, DST, first + stale_row - 1, SENT)
    rows[stale_row, MIN_PACKET:] = old[MIN_PACKET:]
    assert pattern().check_block(rows, SRC, DST) is None
    assert verdicts(rows) == [i != stale_row for i in range(count)]


@pytest.mark.parametrize("size", SIZES[1:])
def test_a_body_from_another_source_fails(size):
    rows = intact_block(300, size, 42).copy()
    other = np.zeros((300, size), dtype=np.uint8)
    pattern().fill_rows(other, SRC + 1, DST, 42, SENT)
    rows[77, MIN_PACKET:] = other[77, MIN_PACKET:]
    assert pattern().check_block(rows, SRC, DST) is None
    assert verdicts(rows) == [i != 77 for i in range(300)]
