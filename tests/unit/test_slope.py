"""S = dT/dC, the load generator's figure of merit, on synthetic series."""

from __future__ import annotations

import random

import pytest

from scripts.loadgen.benchcore import (
    MIN_STEADY,
    Sample,
    SlopeError,
    fit_s,
    interval_line,
    parse_routes,
    parse_size,
    percentile,
    routes,
    slope,
    steady_window,
)


def series(points, sending=None) -> list[Sample]:
    """Samples at 0.1 s intervals from (cpu, packets) points; all 'sending' unless told."""
    return [Sample(0.1 * i, c, int(t), 64 * int(t), True if sending is None else sending[i])
            for i, (c, t) in enumerate(points)]


def test_exact_line_gives_its_slope():
    points = [(0.05 * i, 3 + 20_000 * 0.05 * i) for i in range(30)]
    assert slope(points) == pytest.approx(20_000)
    fit = fit_s(series(points))
    assert fit.steady
    assert fit.s == pytest.approx(20_000, rel=1e-4)  # T is rounded to whole packets


def test_noisy_line_is_close():
    rng = random.Random(14)
    points = [(c, 50_000 * c + rng.gauss(0, 200)) for c in (0.02 * i + rng.uniform(-0.004, 0.004)
                                                           for i in range(200))]
    assert slope(points) == pytest.approx(50_000, rel=0.01)


def test_warm_up_and_tail_are_dropped():
    """A slow start (imports, connects) and a drain tail must not bend S."""
    points = []
    c = t = 0.0
    for i in range(50):
        rate = 1_000 if i < 10 else (90_000 if i >= 45 else 30_000)  # warm-up, steady, tail
        c += 0.1
        t += rate * 0.1
        points.append((c, t))
    first, last = steady_window(50)
    assert (first, last) == (10, 44)
    fit = fit_s(series(points))
    assert fit.s == pytest.approx(30_000, rel=1e-3)
    assert (fit.first, fit.last, fit.used) == (10, 44, 35)
    assert abs(slope(points) - 30_000) > 500  # the naive fit over everything is bent


def test_only_samples_while_every_sender_sends_count():
    """After the senders stop, the drain delivers packets for almost no CPU: not steady state."""
    sending = [True] * 40 + [False] * 20
    points = [(0.1 * i, 10_000 * 0.1 * i) if i < 40 else (3.9 + 0.001 * (i - 39),
                                                          39_000 + 5_000 * (i - 39))
              for i in range(60)]
    fit = fit_s(series(points, sending))
    assert fit.s == pytest.approx(10_000)
    assert fit.last < 40


def test_short_run_falls_back_to_all_samples():
    fit = fit_s(series([(0.0, 0), (0.4, 800)], [True, False]))
    assert not fit.steady
    assert fit.s == pytest.approx(2_000)
    assert MIN_STEADY >= 3


@pytest.mark.parametrize("points, message", [
    ([], "at least 2 samples"),
    ([(0.5, 100)], "at least 2 samples"),
    ([(0.3, 0), (0.3, 100), (0.3, 200)], "CPU time did not advance"),
    ([(0.0, 0), (float("nan"), 10)], "finite"),
])
def test_degenerate_input_is_a_clear_error(points, message):
    with pytest.raises(SlopeError, match=message):
        slope(points)


def test_fit_of_a_run_where_cpu_never_moved_names_the_problem():
    with pytest.raises(SlopeError, match="CPU time did not advance"):
        fit_s(series([(0.2, 10 * i) for i in range(10)]))


def test_bad_fractions_rejected():
    with pytest.raises(SlopeError, match="fractions"):
        steady_window(10, 0.6, 0.5)


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0
    with pytest.raises(ValueError):
        percentile(values, 1.5)


def test_routes():
    assert routes([4, 1, 3, 2], "pairs") == [(1, 2), (3, 4)]
    assert routes([1, 2, 3], "pairs") == [(1, 2)]
    assert len(routes([1, 2, 3, 4], "all-to-all")) == 12
    assert parse_routes("1:2, 4:3", [1, 2, 3, 4]) == [(1, 2), (4, 3)]
    for bad, msg in (("1-2", "SRC:DST"), ("1:9", "network ID 9"), ("2:2", "itself")):
        with pytest.raises(ValueError, match=msg):
            parse_routes(bad, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="at least 2"):
        routes([1], "pairs")


def test_sizes_and_interval_line():
    assert [parse_size(s) for s in ("64", "1KiB", "64k", "1MiB")] == [64, 1024, 65536, 1 << 20]
    with pytest.raises(ValueError, match="KiB/MiB"):
        parse_size("1.5MiB")
    line = interval_line("fig11 64 B", 0.5, 1.0, 10_000, 640_000, 0.5)
    assert "0.50-1.00" in line and "10,000 pkt" in line and "S   20 k" in line
