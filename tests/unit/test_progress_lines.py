"""launch's progress lines where no bar is drawn (a pipe, a log): one per interval, and the
part of an interval in which the traffic ended, so the lines add up to the total."""

from __future__ import annotations

import io

from rich.console import Console

from scripts.launch import IntervalPrinter


def lines(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line]


def test_the_last_part_of_an_interval_is_printed_when_the_traffic_ends() -> None:
    out = io.StringIO()
    printer = IntervalPrinter(Console(file=out, width=160))
    assert printer.enabled  # not a terminal
    printer.tick(500, 0)  # not due yet: nothing
    assert lines(out) == []
    printer.last(700, 1)
    (line,) = lines(out)
    assert "700 verified" in line and "errors 1" in line


def test_nothing_more_is_printed_when_the_last_line_had_it_all() -> None:
    out = io.StringIO()
    printer = IntervalPrinter(Console(file=out, width=160))
    printer.t0 -= 10  # an interval is due
    printer.tick(900, 0)
    printer.last(900, 0)
    assert len(lines(out)) == 1
