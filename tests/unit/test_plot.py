"""Fig 14's plot: each transport at its best batch, a single packet size gets the full width
(so its title is not cut), and a saved run can be redrawn from its JSON."""

from __future__ import annotations

import json
import struct

import pytest

from scripts.loadgen.plot import best_runs, floor_s, main, plot_fig14


def png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def run(transport: str, batch: int, size: int, s: float, **extra) -> dict:
    return {"transport": transport, "batch": batch, "packet_size": size, "S": s,
            "label": f"{transport} b{batch}", "lost": 0, "corrupt": 0, "fit": {},
            "series": [(0.1 * k, s * 0.1 * k) for k in range(10)], **extra}


def test_best_runs_keeps_one_run_per_transport_and_size_the_highest_s():
    runs = [run("fig11", 1, 64, 10.0), run("fig11", 128, 64, 30.0), run("fig11", 16384, 64, 20.0),
            run("tcp", 1, 64, 5.0), run("tcp", 128, 64, 7.0), run("fig11", 1, 1024, 9.0),
            run("fig11", 128, 1024, 3.0)]
    best = best_runs(runs)
    assert list(best) == [64, 1024]
    assert [(r["transport"], r["batch"]) for r in best[64]] == [("fig11", 128), ("tcp", 128)]
    assert [(r["transport"], r["batch"]) for r in best[1024]] == [("fig11", 1)]


def test_best_runs_prefers_a_clean_fitted_run_over_a_lossy_or_unfitted_faster_one():
    runs = [run("iceoryx2", 1, 64, 99.0, lost=31), run("iceoryx2", 128, 64, 5.0),
            run("pipe", 1, 64, 50.0, fit={"error": "too few samples"}), run("pipe", 128, 64, 4.0)]
    assert [r["batch"] for r in best_runs(runs)[64]] == [128, 128]


def test_best_runs_keeps_a_transport_whose_every_run_is_lossy():
    runs = [run("iceoryx2", 1, 64, 9.0, lost=3), run("iceoryx2", 128, 64, 5.0, lost=1)]
    assert [r["batch"] for r in best_runs(runs)[64]] == [1]


def test_floor_s_reads_int_and_saved_json_string_keys():
    assert floor_s({64: {"S": 2.0}}, 64) == 2.0
    assert floor_s({"64": {"S": 3.0}}, 64) == 3.0
    assert floor_s(None, 64) is None and floor_s({"64": {"S": 3.0}}, 1024) is None


@pytest.mark.parametrize("sizes", [(1024,), (64, 1024)])
def test_the_figure_is_wide_enough_for_its_title(tmp_path, sizes):
    pytest.importorskip("matplotlib")
    runs = [run(t, 1, s, 1000.0 * (i + 1)) for s in sizes for i, t in enumerate(("fig11", "tcp"))]
    path = tmp_path / "fig14.png"
    plot_fig14(runs, str(path), floor={str(s): {"S": 5000.0} for s in sizes})
    width, height = png_size(path)
    assert width >= 1000, (width, height)


def test_a_saved_run_is_redrawn_from_its_json(tmp_path):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": [run("fig11", b, 64, 10.0 * b) for b in (1, 128)],
                                   "floor": {"64": {"S": 5000.0}}}))
    out = tmp_path / "fig14.png"
    assert main([str(results), str(out)]) == 0
    assert png_size(out)[0] >= 1000


def test_the_redraw_refuses_results_without_runs(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": []}))
    assert main([str(results), str(tmp_path / "out.png")]) == 1
    assert "no 'runs'" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
    assert main([str(results)]) == 2
