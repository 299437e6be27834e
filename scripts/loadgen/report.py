"""The bench's report (scripts/loadgen/bench.py): the terminal tables of the runs, the floor,
the lone-packet latency, the scaling and the targets, and the Markdown summary that
benchmarks/README.md quotes. Pure: results in, text out."""

from __future__ import annotations

from scripts.loadgen import targets
from scripts.loadgen.benchcore import human_size, run_label, si
from scripts.loadgen.options import TRANSPORTS
from scripts.tables import Col, Grid


def relative_to_tcp(runs: list[dict]) -> None:
    """S_vs_tcp: S over the tcp run of the same size AND batch (the targets compare bests)."""
    tcp = {(r["packet_size"], r.get("batch", 1)): r["S"] for r in runs if r["transport"] == "tcp"}
    for r in runs:
        base = tcp.get((r["packet_size"], r.get("batch", 1)))
        r["S_vs_tcp"] = r["S"] / base if base and r["S"] else None


RUN_CAPTION = ("run: transport and bN = N packets per request (per sendall for tcp/vswitch); "
               "\"(M used)\": the sender area or the smallest receive ring holds only M, so M "
               "went per request")

def detail_table(title: str, runs: list[dict], memcpy_gbps: float) -> Grid:
    """One row per run. %memcpy: bytes/s against the memcpy bandwidth over a working set
    above the caches."""
    detail = Grid(title, caption=RUN_CAPTION, columns=[Col("run", "left", True), *map(Col, (
                      "size", "packets", "CPU s", "wall s", "S", "S/tcp", "S transport",
                      "%floor", "pkt/s", "MB/s", "%memcpy", "p50 us", "p99 us", "lost",
                      "corrupt"))],
                  drop=("wall s", "CPU s", "%memcpy", "pkt/s", "p50 us", "p99 us", "MB/s",
                        "%floor", "S transport", "packets"))
    for r in runs:
        detail.add_row(run_label(r), *_detail_cells(r, memcpy_gbps))
    return detail


def summary_tables(runs: list[dict], memcpy_gbps: float) -> list[Grid]:
    detail = detail_table("Fig 14: S = dT/dC = packets delivered and verified per CPU-second "
                          "of every process on the path (S/tcp: tcp of the same batch)",
                          runs, memcpy_gbps)
    sizes = sorted({r["packet_size"] for r in runs})
    matrix = Grid("S by packet size (x tcp of the same batch)",
                  [Col("run", "left", True), *(Col(human_size(s), text=True) for s in sizes)])
    for label, cells in _matrix(runs, sizes):
        matrix.add_row(label, *cells)
    return [detail, matrix]


def _detail_cells(r: dict, memcpy_gbps: float) -> list[str]:
    rel = r.get("S_vs_tcp")
    s_tr, floor = r.get("S_transport"), r.get("S_vs_floor")
    return [human_size(r["packet_size"]), f"{r['packets']:,}", f"{r['cpu_s']:.2f}",
            f"{r['wall_s']:.2f}", _s_cell(r), f"{rel:.2f}x" if rel else "-",
            f"{s_tr:,.0f}" if s_tr else "-", _percent(floor),
            f"{r['pps']:,.0f}",
            f"{r['bytes_per_s'] / 1e6:,.1f}",
            f"{100 * r['bytes_per_s'] / (memcpy_gbps * 1e9):.1f}" if memcpy_gbps else "-",
            f"{r['latency_p50_us']:,.0f}", f"{r['latency_p99_us']:,.0f}",
            _flag(r["lost"]), _flag(r["corrupt"])]


def _matrix(runs: list[dict], sizes: list[int]) -> list[tuple[str, list[str]]]:
    """One row per transport and batch, transports in the bench's order (TRANSPORTS)."""
    by = {(run_label(r), r["packet_size"]): r for r in runs}
    out = []
    for label in dict.fromkeys(run_label(r) for r in sorted(
            runs, key=lambda r: (TRANSPORTS.index(r["transport"]) if r["transport"] in
                                 TRANSPORTS else len(TRANSPORTS), r.get("batch", 1)))):
        cells = []
        for size in sizes:
            r = by.get((label, size))
            rel = r.get("S_vs_tcp") if r else None
            cells.append("-" if r is None else _s_cell(r, si) + (f" ({rel:.2f}x)" if rel else ""))
        out.append((label, cells))
    return out


FLOOR_CAPTION = ("floor: fill + check alone, no transport, in a process started as the "
                 "partitions are (the zero-copy limit; the split's S where the split measured "
                 "above the loop alone, which can only be a slow spell); split: the same with "
                 "the check in a second process, the batch handed over, the better of both on "
                 "one core and on two (cores; what any two-process transport could reach); S "
                 "transport: S on C minus every participant's fill and check CPU")


def _split_cells(f: dict) -> tuple[str, str, str]:
    """The split floor's S, its cores and its share of the floor, or dashes."""
    share = targets.split_share(f)
    if share is None:
        return "-", "-", "-"
    return f"{f['split']['S']:,.0f}", str(f["split"]["cores"]), f"{share:.0%}"


def floor_table(floor: dict[str, dict]) -> Grid:
    table = Grid("Floor: S of the workload's fill + check alone, no transport",
                 [Col("size"), Col("S floor"), Col("us/pkt"), Col("batch"), Col("S split"),
                  Col("cores"), Col("split %")],
                 caption=FLOOR_CAPTION)
    for size, f in sorted(floor.items(), key=lambda kv: int(kv[0])):
        table.add_row(human_size(int(size)), f"{f['S']:,.0f}",
                      f"{1e6 / f['S']:.2f}" if f["S"] else "-", str(f["batch"]),
                      *_split_cells(f))
    return table


def latency_table(latency: dict[str, dict]) -> Grid:
    table = Grid("Lone 64 B packets, batch 1, one route, one packet per "
                 f"{next(iter(latency.values()))['interval_s'] * 1e3:g} ms: one-way latency "
                 "(send timestamp in the packet to verified at the receiver)",
                 [Col("transport", "left", True), *map(Col, (
                     "route", "packets", "p50 us", "p99 us", "max us", "lost", "corrupt"))],
                 drop=("route", "max us"))
    for t, r in latency.items():
        table.add_row(t, f"{r['route'][0]}->{r['route'][1]}", f"{r['packets']:,}",
                      f"{r['p50_us']:,.0f}", f"{r['p99_us']:,.0f}", f"{r['max_us']:,.0f}",
                      _flag(r["lost"]), _flag(r["corrupt"]))
    return table


def scaling_table(scaling: list[dict]) -> Grid:
    table = Grid("Scaling: 1 KiB all-to-all, per-packet CPU = 1/S (steady window) and C/T "
                 "(whole run), every process on the path",
                 [Col("run", "left", True), *map(Col, (
                     "partitions", "routes", "packets", "S", "us/pkt (1/S)", "us/pkt (C/T)",
                     "lost", "corrupt"))],
                 drop=("routes", "packets"))
    for r in scaling:
        table.add_row(*_scaling_cells(r))
    return table


def _scaling_cells(r: dict) -> list[str]:
    return [run_label(r), str(r["partitions"]), str(len(r["routes"])), f"{r['packets']:,}",
            _s_cell(r), f"{1e6 / r['S']:.1f}" if r["S"] else "-",
            f"{1e6 * r['cpu_s'] / r['packets']:.1f}" if r["packets"] else "-",
            _flag(r["lost"]), _flag(r["corrupt"])]


def targets_table(judged: list[dict]) -> Grid:
    """Issue 14's targets: each with both operands and the verdict (targets.py)."""
    table = Grid("Targets (issue 14; every operand measured in this one run)",
                 [Col("target", "left", True), Col("ratio"), Col("goal"),
                  Col("verdict", "left", True), Col("compared", "left", True)],
                 caption=targets.CAPTION)
    style = {True: "[bold green]", False: "[bold red]", None: "[yellow]"}
    for t in judged:
        table.add_row(t["name"], targets.measured_text(t), t["goal"], style[t["met"]]
                      + t["verdict"], t.get("detail", ""))
    return table


def markdown_summary(results: dict) -> str:
    """The results as Markdown tables (for benchmarks/README.md)."""
    runs = results["runs"]
    host = results.get("host", {})
    lines = ["| run | size | packets | CPU s | wall s | S (pkt/CPU-s) | S / S_tcp | S transport "
             "| % floor | pkt/s | MB/s | p50 us | p99 us | lost | corrupt |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        rel = r.get("S_vs_tcp")
        s_tr, floor = r.get("S_transport"), r.get("S_vs_floor")
        lines.append(
            f"| {run_label(r)} | {human_size(r['packet_size'])} | {r['packets']:,} | "
            f"{r['cpu_s']:.2f} | {r['wall_s']:.2f} | {_s_cell(r)} | "
            f"{f'{rel:.2f}' if rel else '-'} | {f'{s_tr:,.0f}' if s_tr else '-'} | "
            f"{_percent(floor)} | {r['pps']:,.0f} | "
            f"{r['bytes_per_s'] / 1e6:,.1f} | "
            f"{r['latency_p50_us']:,.0f} | {r['latency_p99_us']:,.0f} | {r['lost']} | "
            f"{r['corrupt']} |")
    sizes = sorted({r["packet_size"] for r in runs})
    lines += ["", "| S (x tcp of the same batch) | " + " | ".join(human_size(s) for s in sizes)
              + " |", "|---|" + "---:|" * len(sizes)]
    for label, cells in _matrix(runs, sizes):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if results.get("floor"):
        lines += ["", f"Floor ({FLOOR_CAPTION}):", "",
                  "| size | S floor | batch | S split | cores | split % |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for size, f in sorted(results["floor"].items(), key=lambda kv: int(kv[0])):
            split, cores, share = _split_cells(f)
            lines.append(f"| {human_size(int(size))} | {f['S']:,.0f} | {f['batch']} | {split} "
                         f"| {cores} | {share} |")
    if results.get("single_stream"):
        lines += ["", "Single stream (one route):", "",
                  "| run | size | packets | S (pkt/CPU-s) | MB/s | lost | corrupt |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in results["single_stream"]:
            lines.append(f"| {run_label(r)} | {human_size(r['packet_size'])} | {r['packets']:,} | "
                         f"{_s_cell(r)} | {r['bytes_per_s'] / 1e6:,.1f} | {r['lost']} | "
                         f"{r['corrupt']} |")
    if results.get("latency"):
        lines += ["", "Lone 64 B packets (batch 1, one route, paced):", "",
                  "| transport | packets | p50 us | p99 us | max us | lost | corrupt |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for t, r in results["latency"].items():
            lines.append(f"| {t} | {r['packets']:,} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | "
                         f"{r['max_us']:,.0f} | {r['lost']} | {r['corrupt']} |")
    if results.get("scaling"):
        lines += ["", "Scaling, 1 KiB all-to-all:", "",
                  "| run | partitions | routes | packets | S | us/pkt (1/S) | us/pkt (C/T) | lost"
                  " | corrupt |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["scaling"]:
            lines.append("| " + " | ".join(_scaling_cells(r)) + " |")
    if results.get("targets"):
        lines += ["", "| target | ratio | goal | verdict | compared |",
                  "|---|---:|---:|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['name']} | {targets.measured_text(t)} | {t['goal']} | "
                         f"{t['verdict']} | {t.get('detail', '')} |")
        lines += ["", f"({targets.CAPTION}.)"]
    if host:
        lines += ["", f"Host: {host.get('cpu_count')} CPUs, {host.get('platform')}, Python "
                      f"{host.get('python')}; memcpy {host.get('memcpy_GBps', 0):.1f} GB/s "
                      f"(1 MiB, in cache), {host.get('memcpy_dram_GBps', 0):.1f} GB/s (over "
                      f"{host.get('memcpy_dram_working_set_bytes', 0) >> 20} MiB)."]
    return "\n".join(lines).replace("[bold red]", "") + "\n"


def _percent(share: float | None) -> str:
    """A share of the floor in whole per cent, cut down as the targets table cuts it (a run at
    69.9 % of the floor reads 69, under a 70 % target it missed)."""
    return str(targets.hundredths(share)) if share else "-"


def _s_cell(r: dict, fmt=lambda x: f"{x:,.0f}") -> str:
    return "-" if "error" in r.get("fit", {}) else fmt(r["S"])


def _flag(n: int) -> str:
    return "0" if n == 0 else f"[bold red]{n}"


