"""The traceback a failed program's report carries (partitions/main.py: program_traceback):
the program's own innermost frames, whatever depth of xpmove's frames lies below them."""

from __future__ import annotations

import pytest

from adapter.errors import OutOfBounds
from adapter.moves import mvcl
from partitions.main import PROGRAM_FRAMES, program_traceback


def nested(depth: int) -> None:
    if depth:
        nested(depth - 1)
    else:
        mvcl(memoryview(bytearray(64)), 0, 32, 64)  # raises three frames deep in adapter/moves


def report_of(depth: int) -> str:
    try:  # this frame stands for the partition's _run_program, which the report drops
        nested(depth)
    except OutOfBounds as exc:
        return program_traceback(exc)
    raise AssertionError("mvcl moved past the end of its region")


def test_the_programs_line_is_shown_and_the_library_frames_folded() -> None:
    text = report_of(0)
    assert "report_of" not in text  # the caller's frame (the partition's) is not the program's
    assert "in nested" in text and "mvcl(memoryview(" in text  # the line that called us
    assert "(2 frame(s) inside xpmove not shown)" in text
    assert text.count("adapter/moves.py") == 1 and "in check_range" in text  # where it raised
    assert text.rstrip().endswith("MVCL source: range [32, 96) exceeds size 64")


@pytest.mark.parametrize("depth", [3, 10])
def test_deep_programs_show_their_innermost_frames(depth: int) -> None:
    text = report_of(depth)
    assert text.count("in nested") == min(depth + 1, PROGRAM_FRAMES)
    assert "mvcl(memoryview(" in text
