"""The performance issue's targets, evaluated from a bench run's results.

Synthetic run dicts in the shape `xpmove bench --json` writes: each target is met, missed, or
"not measured" (met None) when the run lacks what it needs.
"""

from __future__ import annotations

import pytest

from scripts.loadgen.benchcore import (
    RATIO_TARGETS,
    evaluate_targets,
    format_measured,
    latency_targets,
    matches_size,
    memcpy_target,
    ratio_target,
    scaling_target,
    verdict,
)

KiB, MiB = 1024, 1 << 20
PAIRS = [[1, 2], [3, 4]]


def run(transport: str, size: int, s: float, batch: int = 1, *, routes=None, bps: float = 0.0,
        **extra) -> dict:
    return {"transport": transport, "packet_size": size, "S": s, "batch": batch,
            "fit": {"first": 2, "last": 17, "samples": 16, "steady": True},
            "bytes_per_s": bps or s * size, "routes": routes or PAIRS, "lost": 0, "corrupt": 0,
            **extra}


def by_name(targets, start: str):
    [t] = [t for t in targets if t.name.startswith(start)]
    return t


def test_ratio_compares_best_adapter_with_best_tcp_across_batches():
    runs = [run("fig11", 64, 10_000, 1), run("fig11", 64, 90_000, 32),
            run("fig12", 64, 80_000, 32), run("tcp", 64, 40_000, 1),
            run("tcp", 64, 100_000, 32)]
    t = ratio_target(runs, 64, 2.0)
    assert t.measured == pytest.approx(0.9)  # 90 k over tcp's best, not over tcp b1's 40 k
    assert t.met is False and verdict(t) == "MISSED"
    assert "fig11 b32" in t.detail and "tcp b32" in t.detail


def test_ratio_met():
    t = ratio_target([run("fig12", 64 * KiB, 80_000, 32), run("tcp", 64 * KiB, 10_000, 1)],
                     64 * KiB, 8.0)
    assert t.measured == pytest.approx(8.0) and t.met is True and verdict(t) == "MET"
    assert format_measured(t) == "8.00x"


def test_capped_1_mib_packets_count_for_the_1_mib_target():
    assert matches_size(MiB - 24, MiB) and matches_size(MiB, MiB)
    assert not matches_size(MiB - 4096, MiB) and not matches_size(MiB + 1, MiB)
    t = ratio_target([run("fig11", MiB - 24, 12_000), run("tcp", MiB - 24, 1_000)], MiB, 10.0)
    assert t.met is True and "1 MiB-24" in t.detail
    capped = ratio_target([run("fig11", MiB, 12_000, 32, batch_used=3),
                           run("tcp", MiB, 1_000, 32, batch_used=4)], MiB, 10.0)
    assert "fig11 b32 (3 used)" in capped.detail and "tcp b32 (4 used)" in capped.detail


@pytest.mark.parametrize("runs, why", [
    ([run("tcp", KiB, 5_000)], "fig11/fig12"),
    ([run("fig11", KiB, 5_000)], "tcp"),
    ([run("fig11", 64, 5_000), run("tcp", 64, 5_000)], "fig11/fig12 and tcp"),  # wrong size
    ([run("fig11", KiB, 5_000), run("tcp", KiB, 0.0, fit={"error": "CPU time did not "
                                                                    "advance"})], "tcp"),
    ([run("fig11", KiB, 5_000, lost=3), run("tcp", KiB, 5_000)], "fig11/fig12"),
])
def test_ratio_not_measured_names_what_is_missing(runs, why):
    t = ratio_target(runs, KiB, 3.0)
    assert t.met is None and t.measured is None and verdict(t) == "not measured"
    assert f"no usable {why} run at 1 KiB" in t.detail
    assert format_measured(t) == "-"


def test_memcpy_uses_single_stream_runs_only():
    concurrent = run("fig11", MiB, 3_000, routes=PAIRS, bps=6e9)  # two streams: not counted
    single = run("fig12", MiB, 2_000, 3, routes=[[1, 2]], bps=3.5e9)
    t = memcpy_target([concurrent, single], 6e9, "over 16 MiB")
    assert t.measured == pytest.approx(3.5 / 6) and t.met is True
    assert "fig12 b3" in t.detail and "over 16 MiB" in t.detail
    assert format_measured(t) == "58%"
    missed = memcpy_target([run("fig11", MiB, 1_000, routes=[[1, 2]], bps=1e9)], 6e9)
    assert missed.met is False
    assert memcpy_target([concurrent], 6e9).met is None
    assert "no memcpy" in memcpy_target([single], 0.0).detail


def scaling_rows(s2: float, s16: float) -> list[dict]:
    return [run("fig11", KiB, s2, 32, partitions=2), run("fig12", KiB, s2 / 2, 1, partitions=2),
            run("fig11", KiB, s16, 32, partitions=16), run("fig12", KiB, s16 / 2, 1,
                                                           partitions=16)]


def test_scaling_per_packet_cpu_ratio():
    met = scaling_target(scaling_rows(20_000, 17_000))  # 58.8 us against 50 us: 1.18x
    assert met.measured == pytest.approx(20 / 17) and met.met is True
    assert met.name.startswith("per-packet CPU 16 / 2 partitions")
    missed = scaling_target(scaling_rows(20_000, 10_000))  # per-packet CPU doubles
    assert missed.measured == pytest.approx(2.0) and missed.met is False
    assert scaling_target(None).met is None
    assert "--scaling" in scaling_target([]).detail
    only_two = scaling_target(scaling_rows(20_000, 10_000)[:2])
    assert only_two.met is None and "two machine sizes" in only_two.detail


def test_latency_targets():
    lat = {t: {"p50_us": p, "p99_us": 2 * p, "packets": 200}
           for t, p in (("fig11", 140.0), ("fig12", 200.0), ("vswitch", 160.0), ("tcp", 100.0))}
    every, ratio = latency_targets(lat, ("fig11", "fig12", "vswitch", "tcp"))
    assert every.met is True and every.target == "4 of 4"
    assert ratio.measured == pytest.approx(1.4) and ratio.met is True
    slow = {**lat, "fig11": {"p50_us": 400.0, "p99_us": 900.0, "packets": 200}}
    assert latency_targets(slow, ("fig11", "tcp"))[1].met is False
    gone = {**lat, "vswitch": {"p50_us": 0.0, "p99_us": 0.0, "packets": 0}}
    every, _ = latency_targets(gone, ("fig11", "fig12", "vswitch", "tcp"))
    assert every.met is False and "missing vswitch" in every.detail
    no_tcp = latency_targets(lat, ("fig11", "fig12"))
    assert no_tcp[0].met is True and no_tcp[1].met is None and "tcp" in no_tcp[1].detail
    assert [t.met for t in latency_targets(None, ("fig11", "tcp"))] == [None, None]


def test_evaluate_every_target_in_order_and_json_shape():
    runs = [run(t, size, s) for size, _ in RATIO_TARGETS for t, s in (("fig11", 9_000),
                                                                      ("tcp", 3_000))]
    targets = evaluate_targets(runs, memcpy_bps=5e9)
    assert len(targets) == len(RATIO_TARGETS) + 4  # memcpy, scaling, 2 latency
    assert [t.met for t in targets[:4]] == [True, True, False, False]  # 3x against 2,3,8,10
    assert by_name(targets, "single-stream").met is None  # pairs only: no single stream
    assert by_name(targets, "per-packet CPU").met is None
    assert by_name(targets, "lone 64 B p50 fig11").met is None
    for t in targets:
        assert set(t.as_json()) >= {"name", "measured", "target", "met"}
    single = run("fig11", MiB, 3_000, routes=[[1, 2]], bps=4e9)
    assert by_name(evaluate_targets([*runs, single], memcpy_bps=5e9),
                   "single-stream").met is True


def test_the_scaling_config_is_where_the_bench_looks():
    """`xpmove bench --scaling` without --scaling-config reads configs/sixteen.toml."""
    from scripts.loadgen.bench import SIXTEEN

    assert SIXTEEN.is_file(), SIXTEEN
