"""How a program's end is reported (partitions/program_report.py): the traceback shows the
program's own line whatever depth of library frames lies below it, a wait the stop cut short
is the stop, and nothing the program left undone is lost from the report."""

from __future__ import annotations

import tomllib

import pytest

from adapter.errors import DestinationFull, OutOfBounds
from partitions.cork import QueueFull
from partitions.loan import LoanLeftOpen
from partitions.program_report import (
    PROGRAM_FRAMES,
    program_traceback,
    raised,
    with_problems,
)


def nested(depth: int) -> None:
    if depth:
        nested(depth - 1)
    else:
        from adapter.moves import mvcl
        mvcl(memoryview(bytearray(64)), 0, 32, 64)  # raises three frames deep in adapter/moves


def report_of(call, *args) -> str:
    try:  # this frame stands for the partition's _run_program, which the report drops
        call(*args)
    except Exception as exc:
        return program_traceback(exc)
    raise AssertionError("it did not raise")


def test_the_programs_line_is_shown_and_the_library_frames_folded() -> None:
    text = report_of(nested, 0)
    assert "report_of" not in text  # the caller's frame (the partition's) is not the program's
    assert "in nested" in text and "mvcl(memoryview(" in text  # the line that called us
    assert "(2 frame(s) not shown)" in text
    assert text.count("adapter/moves.py") == 1 and "in check_range" in text  # where it raised
    assert text.index("not shown") < text.index("in check_range")
    assert text.rstrip().endswith("MVCL source: range [32, 96) exceeds size 64")


@pytest.mark.parametrize("depth", [3, 10])
def test_deep_programs_show_their_innermost_frames(depth: int) -> None:
    text = report_of(nested, depth)
    assert text.count("in nested") == min(depth + 1, PROGRAM_FRAMES)
    assert "mvcl(memoryview(" in text


def parse_config(text: str) -> None:
    tomllib.loads(text)  # the standard library's frames are not the program's either


def test_standard_library_frames_are_folded_like_ours() -> None:
    text = report_of(parse_config, "x = ")
    assert "in parse_config" in text and "tomllib.loads(text)" in text
    assert "frame(s) not shown" in text


def chained() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise RuntimeError("lookup failed") from exc


def test_a_chained_exception_keeps_its_cause() -> None:
    text = report_of(chained)
    assert "KeyError: 'missing'" in text and "direct cause" in text
    assert text.rstrip().endswith("RuntimeError: lookup failed")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no")


def test_an_exception_that_cannot_be_printed_is_still_reported() -> None:
    report = raised(Unprintable(), stopping=False)
    assert (report["outcome"], report["error"]) == ("raised", "Unprintable")
    assert report["message"] == "(its str() raised ValueError)"


def cut_short(exc: QueueFull) -> QueueFull:
    exc.cut_short = True  # as the wait that noticed the stop marks it
    return exc


def test_only_a_wait_the_stop_cut_short_is_the_stop() -> None:
    assert raised(cut_short(QueueFull("q")), stopping=True)["outcome"] == "stopped"
    assert raised(cut_short(QueueFull("q")), stopping=False)["outcome"] == "raised"
    # raised after the stop, but not by a wait the stop ended: a failure of the program's
    assert raised(DestinationFull("full"), stopping=True)["outcome"] == "raised"
    assert raised(ValueError("bug"), stopping=True)["outcome"] == "raised"


def test_what_the_program_left_undone_is_its_failure() -> None:
    left = LoanLeftOpen("1 loan open")
    assert with_problems({"outcome": "returned"}, []) == {"outcome": "returned"}
    assert with_problems({"outcome": "returned"}, [left]) == {
        "outcome": "raised", "error": "LoanLeftOpen", "message": "1 loan open"}
    stopped = {"outcome": "stopped", "error": "QueueFull", "message": "stopping",
               "traceback": "t"}
    assert with_problems(stopped, [left, OutOfBounds("x")]) == {
        "outcome": "raised", "error": "LoanLeftOpen", "traceback": "t",
        "message": "1 loan open (its wait was cut short by the stop: QueueFull: stopping); "
                   "and x"}
    failed = {"outcome": "raised", "error": "ValueError", "message": "bug"}
    assert with_problems(failed, [left])["message"] == "bug; and 1 loan open"
