"""`xpmove status`, its pure parts: the snapshot's segment words, run selection, rendering at
80 columns, the JSON shape. The real socket and machine: tests/integration/test_status.py."""

from __future__ import annotations

import json
import re

import pytest

from adapter import receive_area
from hypervisor import status as hv_status
from hypervisor.config import MachineConfig, PartitionConfig
from hypervisor.layout import plan_segment
from scripts.status import (
    StatusError,
    adapter_grid,
    partitions_grid,
    pick_run,
    render,
    runs_grid,
    runs_json,
)
from scripts.tables import ELLIPSIS, render_text

MiB = 1 << 20


def test_control_word_offsets_are_the_commit_protocols():
    """The platform repeats three offsets of adapter/receive_area.py (it may not import it)."""
    assert hv_status.HEAD_OFFSET == receive_area.HEAD_OFFSET
    assert hv_status.HOLDER_OFFSET == receive_area.HOLDER_OFFSET
    assert hv_status.TAIL_OFFSET == receive_area.TAIL_OFFSET


def _layout(n: int = 3):
    parts = tuple(PartitionConfig(f"p{i}", 10 * i, MiB, MiB // 4) for i in range(1, n + 1))
    return plan_segment(MachineConfig(partitions=parts))


def test_segment_status_reads_the_words_of_each_partition():
    layout = _layout(3)
    segment = bytearray(layout.total_size)
    words = memoryview(segment).cast("Q")
    seq = {(0, 1): 5, (0, 2): 7, (1, 0): 3, (2, 0): 11}  # (src, dst): last committed
    delivered = {(0, 1): 4, (0, 2): 7, (1, 0): 3, (2, 0): 9}  # (src, dst): last consumed
    for (s, d), v in seq.items():
        words[layout.seq_address(s, d) >> 3] = v
    for (s, d), v in delivered.items():
        words[layout.delivered_address(s, d) >> 3] = v
    p0 = layout.partitions[0]
    words[(p0.control + receive_area.HEAD_OFFSET) >> 3] = 5000
    words[(p0.control + receive_area.TAIL_OFFSET) >> 3] = 1000
    words[(p0.control + receive_area.HOLDER_OFFSET) >> 3] = 20
    got = hv_status.segment_status(words, layout)
    assert [g["network_id"] for g in got] == [10, 20, 30]
    assert got[0] == {"network_id": 10, "packets_out": 12, "packets_in": 12, "packets_queued": 2,
                      "ring_used": 4000, "ring_size": MiB // 4, "ring_bytes_in": 5000,
                      "holder": 20}
    assert (got[1]["packets_out"], got[1]["packets_in"], got[1]["packets_queued"]) == (3, 4, 1)
    assert (got[2]["packets_out"], got[2]["packets_in"], got[2]["holder"]) == (11, 7, 0)
    words.release()


def test_a_torn_head_tail_pair_never_shows_negative_fill():
    layout = _layout(2)
    segment = bytearray(layout.total_size)
    words = memoryview(segment).cast("Q")
    p = layout.partitions[1]
    words[(p.control + receive_area.TAIL_OFFSET) >> 3] = 800  # tail read after a newer head
    words[(p.control + receive_area.HEAD_OFFSET) >> 3] = 400
    assert hv_status.segment_status(words, layout)[1]["ring_used"] == 0
    words.release()


# -- run selection -------------------------------------------------------------------------------
RUNS = [{"prefix": p, "owner_pid": 100 + i, "partitions": ["a", "b"], "started": 1.0,
         "status_socket": f"/tmp/{p}.sock"}
        for i, p in enumerate(["xpm-3f9a1c2b", "xpm-3f00aaaa", "xpm-77777777"])]


def test_the_only_run_is_picked_without_a_name():
    assert pick_run(RUNS[:1], None) is RUNS[0]


def test_several_runs_without_a_name_are_listed_not_picked():
    assert pick_run(RUNS, None) is None


@pytest.mark.parametrize("wanted", ["xpm-3f9a1c2b", "xpm-3f9", "3f9a", "xpm-3f9a1c2b"])
def test_a_unique_leading_part_picks_the_run(wanted):
    assert pick_run(RUNS, wanted) is RUNS[0]


def test_an_ambiguous_name_lists_the_candidates():
    with pytest.raises(StatusError, match="xpm-3f9a1c2b, xpm-3f00aaaa"):
        pick_run(RUNS, "xpm-3f")


def test_an_unknown_name_lists_the_running_ones():
    with pytest.raises(StatusError, match=r"no running machine 'xpm-0000'.*xpm-77777777"):
        pick_run(RUNS, "xpm-0000")


def test_no_run_at_all_says_so():
    with pytest.raises(StatusError, match="no running machine"):
        pick_run([], None)


def test_the_run_list_fits_80_columns_and_has_a_json_form():
    text = render_text(runs_grid(RUNS), 80)
    assert ELLIPSIS not in text and all(len(line) <= 80 for line in text.splitlines())
    assert all(r["prefix"] in text for r in RUNS)
    doc = json.loads(json.dumps(runs_json(RUNS)))
    assert [r["prefix"] for r in doc["runs"]] == [r["prefix"] for r in RUNS]
    assert set(doc["runs"][0]) == {"prefix", "owner_pid", "partitions", "started"}


# -- rendering -------------------------------------------------------------------------------
def snapshot(n: int = 4, big: int = 123_456_789, name: str = "charlie") -> dict:
    parts = [{"name": f"{name}{i}", "network_id": i, "pid": 4_194_000 + i, "state": "running",
              "restarts": 2, "exit_code": None, "packets_out": big + i, "packets_in": big - i,
              "packets_queued": 12_345, "ring_used": 3 * MiB, "ring_size": 4 * MiB,
              "ring_bytes_in": big * 1000,
              "lock": {"value": 0, "holder": 2, "state": "granted", "waits": 98_765},
              "outcome": None, "error": None} for i in range(1, n + 1)]
    return {"version": 1, "prefix": "xpm-3f9a1c2b", "owner_pid": 4242, "time": 1000.0,
            "started": 940.0, "lock_timeout_s": 1.0, "restart": "never", "partitions": parts,
            "adapter": {"pid": 4_194_001, "state": "running", "restarts": 1, "exit_code": None,
                        "counters": {"requests": big * 10, "moves": big * 10,
                                     "bytes": big * 10_000, "grants": big},
                        "errors": {"destination_full": 1_234_567, "lock_timeout": 3},
                        "stats_error": None},
            "events": ["adapter restarted (pid 4194001), 4 drivers reconnected"]}


def numbers(snap: dict) -> list[str]:
    """Every number of the snapshot as the tables print it (thousands separators)."""
    out = []
    for p in snap["partitions"]:
        out += [f"{p['packets_out']:,}", f"{p['packets_in']:,}"]
    out += [f"{v:,}" for v in snap["adapter"]["counters"].values()]
    out += [f"{v:,}" for v in snap["adapter"]["errors"].values()]
    return out


@pytest.mark.parametrize("n", [2, 4, 16])
@pytest.mark.parametrize("big", [7, 123_456_789, 98_765_432_109])
def test_every_table_fits_80_columns_with_every_number_whole(n, big):
    snap = snapshot(n, big)
    before = dict(snap, time=999.0, partitions=[dict(p, packets_out=p["packets_out"] - 5000)
                                               for p in snap["partitions"]])
    text = render_text(render(snap, before), 80)
    assert ELLIPSIS not in text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for number in numbers(snap):
        assert re.search(rf"(?<![\d,]){re.escape(number)}(?![\d,])", text), (number, text)
    for p in snap["partitions"]:
        assert p["name"] in text


def test_80_columns_keep_the_essential_columns():
    """With counts in the millions (a minute of soak) nothing the brief names goes."""
    text = render_text(partitions_grid(snapshot(4, big=12_345_678)), 80)
    header = next(line for line in text.splitlines() if "name" in line)
    for column in ("name", "ID", "pid", "state", "pkts out", "pkts in", "ring", "lock"):
        assert column in header, header


def test_a_wide_terminal_shows_every_column():
    text = render_text(render(snapshot(4), snapshot(4)), 220)
    for column in ("pid", "rst", "out/s", "queued", "ring KiB", "holder", "waits", "ended"):
        assert column in text
    assert "not shown" not in text


def test_the_adapter_table_shows_counters_errors_and_a_missing_answer():
    snap = snapshot(2)
    text = render_text(adapter_grid(snap), 80)
    assert "destination_full" in text and "1,234,567" in text and "grants" in text
    snap["adapter"].update(counters={}, errors={}, stats_error="MachineError: adapter busy")
    text = " ".join(render_text(adapter_grid(snap), 80).split())
    assert "counters unavailable: MachineError: adapter busy" in text


def test_the_snapshot_is_plain_json():
    snap = snapshot(2)
    assert json.loads(json.dumps(snap)) == snap
