"""Fig 14's plot: cumulative packets against CPU seconds, a panel per packet size.

Each transport is drawn at its best batch only (the run with the highest S of that size among
runs that lost nothing): with every batch of every transport a panel had ~30 lines and the
legend hid them. Both axes are logarithmic, so transports whose S differs a hundredfold stay
apart (T = S * C is a line of slope 1, shifted up by log S); the floor (fill and check alone,
no transport) is the dotted reference. Redraw a saved run with

    python -m scripts.loadgen.plot results.json fig14.png
"""

from __future__ import annotations

import json
import sys

from scripts.loadgen.benchcore import human_size, run_label, si

COLORS = ("tab:blue", "tab:green", "tab:red", "tab:orange", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "black", "gold")
DASHES = ("-", (0, (5, 2)))


def usable(r: dict) -> bool:
    """A run whose S was fitted (no fit error) and whose packets all arrived intact."""
    return ("error" not in r.get("fit", {}) and r.get("S", 0) > 0
            and not r.get("lost") and not r.get("corrupt"))


def best_runs(runs: list[dict]) -> dict[int, list[dict]]:
    """Per packet size, each transport's run with the highest S (in first-seen transport
    order). A transport with no usable run (fit error, loss) keeps its best run anyway, so it
    is not silently dropped from the figure; usable runs always win over unusable ones."""
    best: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_transport = best.setdefault(r["packet_size"], {})
        seen = by_transport.get(r["transport"])
        if seen is None or (usable(r), r.get("S", 0)) > (usable(seen), seen.get("S", 0)):
            by_transport[r["transport"]] = r
    return {size: list(best[size].values()) for size in sorted(best)}


def floor_s(floor: dict | None, size: int) -> float | None:
    """The floor's S at a size; a saved JSON has string keys, a live run int keys."""
    if not floor:
        return None
    entry = floor.get(size) or floor.get(str(size))
    return entry["S"] if entry else None


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("xpmove bench: --plot needs matplotlib, the optional 'plot' extra: "
                         "pip install -e '.[plot]'") from None


def plot_fig14(runs: list[dict], path: str, title: str = "",
               floor: dict | None = None) -> None:
    """Cumulative packets (y) against CPU seconds (x), both logarithmic: a panel per size,
    a line per transport at its best batch, its legend beside the panel."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = best_runs(runs)
    transports = list(dict.fromkeys(r["transport"] for r in runs))
    colors = dict(zip(transports, COLORS, strict=False))
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    # a lone panel is as wide as two, so the figure's title (and legend) are never cut
    fig, axes = plt.subplots(rows, cols, figsize=(15, 4.2 * rows + 0.7), squeeze=False)
    for ax, (size, best) in zip(axes.flat, panels.items(), strict=False):
        best = sorted(best, key=lambda r: -r.get("S", 0))
        xmax = max((p[0] for r in best for p in r["series"]), default=1.0) or 1.0
        for i, r in enumerate(best):
            points = [p for p in r["series"] if p[0] > 0 and p[1] > 0]
            note = "" if usable(r) else " (lossy or unfitted)"
            ax.plot([p[0] for p in points], [p[1] for p in points],
                    color=colors.get(r["transport"]), linestyle=DASHES[i % 2], linewidth=1.5,
                    label=f"{run_label(r)}: S = {si(r['S'])}{note}")
        s_floor = floor_s(floor, size)
        if s_floor:
            x0 = xmax / 40
            ax.plot([x0, xmax], [s_floor * x0, s_floor * xmax], color="gray", linestyle=":",
                    linewidth=1.2, label=f"floor (fill + check only): S = {si(s_floor)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"packet size {human_size(size)}", fontsize=10)
        ax.set_xlabel("CPU seconds consumed (C)", fontsize=9)
        ax.set_ylabel("packets delivered (T)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                  title="best batch, S in pkt/CPU-s", title_fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or "Fig 14: cumulative packets against CPU consumed, each transport at "
                 "its best batch; S = dT/dC over the steady window", fontsize=11, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """python -m scripts.loadgen.plot results.json out.png: redraw Fig 14 from saved results."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m scripts.loadgen.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        results = json.load(f)
    if not results.get("runs"):
        print(f"{args[0]}: no 'runs' to plot", file=sys.stderr)
        return 1
    plot_fig14(results["runs"], args[1], floor=results.get("floor"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
