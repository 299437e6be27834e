"""Every result table reads at 80 columns (a pipe's width) without a cut number, and wide
terminals get every column (scripts/tables.py)."""

from __future__ import annotations

import re

import pytest

from scripts.launch import adapter_table, partition_table
from scripts.loadgen.report import latency_table, scaling_table, summary_tables, targets_table
from scripts.soak import SoakReport, report_table
from scripts.tables import ELLIPSIS, Col, Grid, render_text

NUMBER = re.compile(r"\d[\d,.]*")


def numbers_of(grid: Grid, shown: str) -> list[str]:
    """The numbers of every cell of the columns `shown` rendered (by header)."""
    keep = [i for i, c in enumerate(grid.columns) if c.header in shown]
    return [n for row in grid.rows for i in keep for n in NUMBER.findall(row[i])]


def stats(n: int) -> dict:
    return {"sent": {"2": 3_000_000 + n}, "received": {"2": 2_999_999}, "bytes_out": 3_145_728_000,
            "bytes_in": 3_145_727_000, "corrupt": 0, "gaps": 0, "duplicates": 0,
            "errors": {"DestinationFull": 12_345}, "latency_p50_us": 641.7,
            "latency_p99_us": 132_451.2}


RUN = {"transport": "fig12", "batch": 16384, "batch_used": 2047, "packet_size": 1024,
       "packets": 12_345_678, "cpu_s": 123.45, "wall_s": 61.2, "S": 2_345_678.9,
       "S_vs_tcp": 2.62, "pps": 1_234_567.0, "bytes_per_s": 1.26e9, "latency_p50_us": 1234.0,
       "latency_p99_us": 98765.0, "lost": 0, "corrupt": 0}


def grids() -> dict[str, Grid]:
    names = {1: ("alpha", "stopped"), 2: ("charlie-the-long-name", "running"),
             3: ("delta", "dead")}
    tcp = {**RUN, "transport": "tcp", "S_vs_tcp": 1.0}
    detail, matrix = summary_tables([RUN, tcp, {**RUN, "packet_size": 65536}], 9.5)
    latency = {t: {"interval_s": 0.002, "route": (1, 2), "packets": 200, "p50_us": 412.0,
                   "p99_us": 12_345.0, "max_us": 123_456.0, "lost": 0, "corrupt": 0}
               for t in ("fig11", "fig12", "vswitch", "tcp")}
    scaling = [{**RUN, "partitions": 16, "routes": [(1, 2)] * 240}]
    targets = [{"name": "S best adapter path >= every peer at 1 KiB", "ratio": 2.62,
                "goal": ">= 1x", "met": True, "verdict": "MET",
                "detail": "fig12-loan b16384 (2047 used) S 1.67 M vs iceoryx2 b32 S 636 k"}]
    return {
        "launch partitions": partition_table(names, {1: stats(1), 2: stats(2), 3: stats(3)}),
        "launch adapter": adapter_table({"counters": {"bytes": 12_288_000_000, "moves": 12_000},
                                         "errors": {"lock_timeout": 3}, "locks": {"1": "free"}}),
        "soak": report_table(SoakReport(23_501_696, 23_501_696, 0, 0, 0, 0, 12, 4, 12, True)),
        "bench detail": detail,
        "bench matrix": matrix,
        "bench latency": latency_table(latency),
        "bench scaling": scaling_table(scaling),
        "bench targets": targets_table(targets),
    }


@pytest.mark.parametrize("name", sorted(grids()))
def test_no_number_is_cut_at_80_columns(name):
    grid = grids()[name]
    table = grid.table(80)
    text = render_text(grid, 80)
    assert ELLIPSIS not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    shown = [str(c.header) for c in table.columns]
    flat = " ".join(text.split())
    for number in numbers_of(grid, shown):
        assert number in flat, f"{number} not whole in\n{text}"


@pytest.mark.parametrize("name", sorted(grids()))
def test_a_wide_terminal_gets_every_column(name):
    grid = grids()[name]
    assert [str(c.header) for c in grid.table(250).columns] == [c.header for c in grid.columns]


def test_narrow_drops_columns_in_order_and_says_so():
    grid = Grid("t", [Col("name", "left", True), Col("a"), Col("b")], drop=("b", "a"))
    grid.add_row("x", "1" * 30, "2" * 30)
    headers = [str(c.header) for c in grid.table(50).columns]
    assert headers == ["name", "a"]
    assert "not shown: b" in render_text(grid, 50)


def test_a_row_must_match_the_columns():
    grid = Grid("t", [Col("a"), Col("b")])
    with pytest.raises(ValueError, match="row of 1 cells for 2 columns"):
        grid.add_row("1")
