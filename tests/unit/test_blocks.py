"""Finding runs of equal records (partitions.blocks) over hand-built record buffers."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitions.blocks import (
    HEADER_BYTES,
    MAX_BLOCK,
    as_bytes,
    find_block,
    header_view,
    payload_rows,
    uniform_prefix,
)

RECORD = struct.Struct("<IIQQ")  # tag, source, seq, length


def payload_of(i: int, length: int) -> bytes:
    """A payload that differs from record to record (so a wrong row cannot pass)."""
    return bytes((i * 31 + j * 7 + 1) % 256 for j in range(length))


def records(headers: list[tuple[int, int, int, int]], stride: int, lead: int = 0,
            tail: int = 0) -> bytearray:
    """`lead` junk bytes, then one record of `stride` bytes per header (header + payload of
    the header's own length, zero padding to the stride), then `tail` junk bytes."""
    buf = bytearray(b"\xee" * lead)
    for i, (tag, source, seq, length) in enumerate(headers):
        body = payload_of(i, min(length, stride - HEADER_BYTES))
        record = RECORD.pack(tag, source, seq, length) + body
        buf += record + bytes(stride - len(record))
    return buf + b"\xee" * tail


def uniform(count: int, tag: int = 5, source: int = 3, seq: int = 100, length: int = 40
            ) -> list[tuple[int, int, int, int]]:
    return [(tag, source, seq + i, length) for i in range(count)]


def test_header_layout_matches_the_record_struct():
    assert HEADER_BYTES == RECORD.size == 24


def test_header_view_reads_every_field_at_the_stride():
    hs = [(7, 9, 2**40 + 1, 12), (1, 2, 3, 4), (2**32 - 1, 0, 2**64 - 1, 0)]
    flat = as_bytes(records(hs, stride=48, lead=8))
    view = header_view(flat, 8, 48, 3)
    assert [(int(h["tag"]), int(h["source"]), int(h["seq"]), int(h["length"]))
            for h in view] == hs


@pytest.mark.parametrize("count", [1, 2, 3, 17, 200])
def test_all_uniform_is_the_full_count(count):
    flat = as_bytes(records(uniform(count), stride=64))
    assert uniform_prefix(header_view(flat, 0, 64, count)) == count
    assert find_block(flat, 0, 64, count) == count


@pytest.mark.parametrize("tail_follows", [False, True])
@pytest.mark.parametrize("k", [1, 2, 5, 9])
@pytest.mark.parametrize("field", ["seq", "source", "length", "tag", "seq_back", "seq_same"])
def test_a_break_at_position_k_ends_the_block_there(field, k, tail_follows):
    hs = uniform(10)
    tag, source, seq, length = hs[k]
    broken = {"seq": (tag, source, seq + 1, length),
              "seq_back": (tag, source, seq - 2, length),
              "seq_same": (tag, source, seq - 1, length),
              "source": (tag, source + 1, seq, length),
              "length": (tag, source, seq, length + 8),
              "tag": (tag ^ 0x100, source, seq, length)}[field]
    hs[k] = broken
    if tail_follows:  # the records after the break continue the broken one
        hs[k + 1:] = [(broken[0], broken[1], broken[2] + j + 1, broken[3])
                      for j in range(len(hs) - k - 1)]
    # else only record k is off: the ones after it would continue the first again
    flat = as_bytes(records(hs, stride=80, lead=16))
    assert uniform_prefix(header_view(flat, 16, 80, len(hs))) == k
    assert find_block(flat, 16, 80, len(hs)) == k


def test_a_break_only_in_the_high_bits_is_seen():
    """The comparisons are full-width: high-bit differences in each field break the block."""
    for i, change in enumerate([(1 << 31, 0, 0, 0), (0, 1 << 31, 0, 0), (0, 0, 1 << 40, 0),
                                (0, 0, 0, 1 << 40)]):
        hs = uniform(4)
        hs[2] = tuple(a + b for a, b in zip(hs[2], change, strict=True))
        flat = as_bytes(records(hs, stride=64))
        assert find_block(flat, 0, 64, 4) == 2, i


def test_seq_counting_across_the_u64_wrap_is_consecutive():
    hs = [(1, 1, (2**64 - 2 + i) % 2**64, 8) for i in range(4)]
    flat = as_bytes(records(hs, stride=32))
    assert find_block(flat, 0, 32, 4) == 4


@pytest.mark.parametrize("most", [0, 1])
def test_most_at_most_one_is_most(most):
    # Even a garbage buffer: nothing is looked at.
    flat = as_bytes(bytearray(b"\xff" * 10))
    assert find_block(flat, 0, 64, most) == most


def test_most_limits_the_block():
    flat = as_bytes(records(uniform(10), stride=64))
    assert find_block(flat, 0, 64, 6) == 6
    assert find_block(flat, 64 * 3, 64, 7) == 7  # starting in the middle of the run
    assert find_block(flat, 64 * 3, 64, 2) == 2


def test_max_block_caps_the_rows_of_one_call():
    count = MAX_BLOCK + 5
    stride = HEADER_BYTES
    hdr = np.zeros(count, dtype=[("tag", "<u4"), ("source", "<u4"), ("seq", "<u8"),
                                 ("length", "<u8")])
    hdr["tag"], hdr["source"], hdr["length"] = 2, 4, 0
    hdr["seq"] = np.arange(1, count + 1, dtype=np.uint64)
    flat = as_bytes(bytearray(hdr.tobytes()))
    assert find_block(flat, 0, stride, count) == MAX_BLOCK
    assert find_block(flat, MAX_BLOCK * stride, stride, 5) == 5
    assert uniform_prefix(header_view(flat, 0, stride, count)) == count  # no cap here


@pytest.mark.parametrize("length, stride", [(0, 24), (1, 32), (40, 64), (40, 72), (1000, 1024)])
def test_payload_rows_are_exactly_the_payloads(length, stride):
    hs = uniform(7, length=length)
    lead = 40
    buf = records(hs, stride=stride, lead=lead, tail=30)
    flat = as_bytes(buf)
    rows = payload_rows(flat, lead, stride, len(hs), length)
    assert rows.shape == (len(hs), length)
    assert rows.dtype == np.uint8
    for i, row in enumerate(rows):
        assert row.tobytes() == payload_of(i, length)
    # Views into the receive memory, not copies.
    if length:
        assert np.shares_memory(rows, flat)
        buf[lead + stride + HEADER_BYTES] ^= 0xFF
        assert rows[1, 0] == payload_of(1, length)[0] ^ 0xFF


def test_payload_rows_of_a_prefix_leave_the_rest_alone():
    hs = uniform(5, length=16)
    flat = as_bytes(records(hs, stride=40))
    rows = payload_rows(flat, 40, 40, 2, 16)
    assert [r.tobytes() for r in rows] == [payload_of(1, 16), payload_of(2, 16)]


def reference_prefix(hs: list[tuple[int, int, int, int]]) -> int:
    tag, source, seq, length = hs[0]
    n = 0
    for i, (t, s, q, ln) in enumerate(hs):
        if (t, s, ln) != (tag, source, length) or q != (seq + i) % 2**64:
            break
        n += 1
    return n


# Each field of each later record is changed with probability 1/12 (a value of 0), so long runs
# and breaks in every field, alone or together, are all frequent.
field_changes = st.tuples(st.integers(0, 11), st.integers(0, 11), st.integers(0, 11),
                          st.integers(0, 11), st.sampled_from([0, 2, 2**64 - 1]))


@st.composite
def header_lists(draw):
    tag, source, seq, length = draw(st.tuples(st.integers(0, 2**32 - 1),
                                              st.integers(0, 2**32 - 1),
                                              st.integers(0, 2**64 - 1), st.integers(0, 2**20)))
    hs = [(tag, source, seq, length)]
    for dt, ds, dq, dl, bad_step in draw(st.lists(field_changes, max_size=40)):
        seq = (seq + (1 if dq else bad_step)) % 2**64
        hs.append(((tag + (dt == 0)) % 2**32, (source + (ds == 0)) % 2**32, seq,
                   length + (dl == 0)))
    return hs


@settings(max_examples=300, deadline=None)
@given(header_lists(), st.integers(0, 3))
def test_uniform_prefix_matches_a_reference_loop(hs, pad):
    stride = HEADER_BYTES + 8 * pad
    flat = as_bytes(records(hs, stride=stride, lead=pad))
    assert uniform_prefix(header_view(flat, pad, stride, len(hs))) == reference_prefix(hs)
    assert find_block(flat, pad, stride, len(hs)) == min(reference_prefix(hs), MAX_BLOCK)
