"""MVXL and MVCL (adapter/moves.py) on a plain bytearray: range checks before any copy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import BadCount, BadOffset, OutOfBounds, XpmoveError
from adapter.moves import check_range, mvcl, mvxl

SIZE = 256
I64_MAX = 2**63 - 1


def memory() -> tuple[bytearray, memoryview]:
    buf = bytearray(i & 0xFF for i in range(SIZE))
    return buf, memoryview(buf)


@pytest.mark.parametrize("move", [mvxl, mvcl])
def test_a_move_copies_exactly_count_bytes(move):
    buf, view = memory()
    expected = bytearray(buf)
    expected[100:110] = buf[0:10]
    move(view, 100, 0, 10)
    assert buf == expected


@pytest.mark.parametrize("move", [mvxl, mvcl])
def test_the_last_byte_is_in_range(move):
    buf, view = memory()
    move(view, SIZE - 1, 0, 1)
    move(view, 0, SIZE - 1, 1)
    move(view, 0, 0, SIZE)
    assert buf[SIZE - 1] == 0 and buf[0] == 0


@pytest.mark.parametrize("move,kind", [(mvxl, "MVXL"), (mvcl, "MVCL")])
@pytest.mark.parametrize("destination,source,count,error,message", [
    (0, 0, 0, BadCount, "source: count 0 must be > 0"),
    (0, 0, -1, BadCount, "source: count -1 must be > 0"),
    (0, -1, 1, BadOffset, "source: offset -1 must be >= 0"),
    (-1, 0, 1, BadOffset, "destination: offset -1 must be >= 0"),
    (0, SIZE, 1, OutOfBounds, f"source: range [{SIZE}, {SIZE + 1}) exceeds size {SIZE}"),
    (SIZE, 0, 1, OutOfBounds, f"destination: range [{SIZE}, {SIZE + 1}) exceeds size {SIZE}"),
    (SIZE - 5, 0, 10, OutOfBounds, f"destination: range [{SIZE - 5}, {SIZE + 5})"),
    (0, SIZE - 5, 10, OutOfBounds, f"source: range [{SIZE - 5}, {SIZE + 5})"),
    (0, 0, SIZE + 1, OutOfBounds, "source: range [0, 257)"),
    (0, I64_MAX, I64_MAX, OutOfBounds, f"[{I64_MAX}, {2 * I64_MAX})"),
    (I64_MAX, 0, 1, OutOfBounds, f"destination: range [{I64_MAX}, {I64_MAX + 1})"),
    (-(2**63), 0, 1, BadOffset, f"offset {-(2**63)}"),
])
def test_out_of_range_is_refused_and_changes_nothing(move, kind, destination, source, count,
                                                    error, message):
    buf, view = memory()
    before = bytes(buf)
    with pytest.raises(error) as info:
        move(view, destination, source, count)
    assert str(info.value).startswith(kind)
    assert message in str(info.value)
    assert bytes(buf) == before


def test_a_slice_would_have_clamped_silently():
    """Why the explicit check exists: Python slicing does not reject this range."""
    _, view = memory()
    assert len(view[SIZE - 5:SIZE + 5]) == 5
    with pytest.raises(OutOfBounds):
        check_range(SIZE - 5, 10, SIZE, "x")


def test_mvcl_stays_inside_the_region_it_was_given():
    buf = bytearray(3 * SIZE)
    region = memoryview(buf)[SIZE:2 * SIZE]
    with pytest.raises(OutOfBounds):
        mvcl(region, SIZE, 0, 1)  # one past the region: the next region must be untouched
    assert buf == bytearray(3 * SIZE)


@given(destination=st.integers(-8, SIZE + 8), source=st.integers(-8, SIZE + 8),
       count=st.integers(-2, SIZE + 2))
def test_moves_match_a_bytes_model_or_change_nothing(destination, source, count):
    """Including overlapping ranges: the copy behaves like memmove (a snapshot of the source)."""
    buf, view = memory()
    before = bytes(buf)
    try:
        mvcl(view, destination, source, count)
    except XpmoveError:
        assert not (count > 0 and 0 <= source and source + count <= SIZE
                    and 0 <= destination and destination + count <= SIZE)
        assert bytes(buf) == before
        return
    expected = bytearray(before)
    expected[destination:destination + count] = before[source:source + count]
    assert buf == expected
