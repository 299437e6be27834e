"""Fig 14's plot: a single packet size gets the full width, so its title is not cut."""

from __future__ import annotations

import struct

import pytest

from scripts.loadgen.bench import plot_fig14


def png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize("sizes", [(1024,), (64, 1024)])
def test_the_figure_is_wide_enough_for_its_title(tmp_path, sizes):
    pytest.importorskip("matplotlib")
    runs = [{"transport": t, "batch": 1, "packet_size": s, "S": 1000.0 * (i + 1),
             "series": [(0.1 * k, 100.0 * k * (i + 1)) for k in range(10)], "fit": {}}
            for s in sizes for i, t in enumerate(("fig11", "tcp"))]
    path = tmp_path / "fig14.png"
    plot_fig14(runs, str(path))
    width, height = png_size(path)
    assert width >= 1000, (width, height)
