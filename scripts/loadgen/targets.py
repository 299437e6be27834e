"""Issue 14's targets, judged from one bench run's results (pure: result dicts in, verdicts out).

Every target compares two operands measured in the same run; it is MET, MISSED, or "not
measured" with the reason when the run lacks an operand (never left out). Transports are picked
by name, so adapter paths added later count without a change here:

* an adapter path is any transport whose name starts with fig11 or fig12 (fig11, fig12,
  fig12-loan, fig12-lease, fig11-sync, fig12-sync), at any batch;
* the peers are what a user would pick instead (iceoryx2, zmq, pipe, tcp, vswitch), each at
  its own best batch.

The targets, in the order printed:

(a) at 64 B, 1 KiB, 64 KiB and 1 MiB: S of the best adapter path >= S of every peer;
(b) one packet per call at 1 KiB: the better of fig11/fig12 at batch 1 (`port.send` once per
    packet; not the -sync variants, the patent's literal synchronous flow, nor fig12-loan,
    which makes no send call) >= tcp at batch 1, and >= iceoryx2 at batch 1;
(c) the best adapter path >= 50 % of the floor (fill + check alone) at 1 KiB, >= 70 % at
    64 KiB and 1 MiB;
(d) lone 64 B packets: the lowest p50 of the adapter paths <= tcp's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from scripts.loadgen.benchcore import human_size, matches_size, si

KiB, MiB = 1024, 1 << 20
ADAPTER_PREFIXES = ("fig11", "fig12")
PEERS = ("iceoryx2", "zmq", "pipe", "tcp", "vswitch")
PEER_SIZES = (64, KiB, 64 * KiB, MiB)
PER_PACKET = ("fig11", "fig12")  # port.send once per packet (see the module docstring)
PER_PACKET_SIZE = KiB
PER_PACKET_PEERS = ("tcp", "iceoryx2")
FLOOR_SHARES = ((KiB, 0.5), (64 * KiB, 0.7), (MiB, 0.7))  # (packet size, least S / floor)
LATENCY_PEER = "tcp"
PKT_PER_CPU_S = "pkt/CPU-s"


def is_adapter_path(transport: str) -> bool:
    return transport.startswith(ADAPTER_PREFIXES)


@dataclass(frozen=True)
class Operand:
    """One side of a comparison: what was measured, and its value."""

    label: str  # e.g. "fig12 b32", "tcp b1", "floor"
    value: float
    unit: str = PKT_PER_CPU_S

    def text(self) -> str:
        if self.unit == PKT_PER_CPU_S:
            return f"{self.label} S {si(self.value)}"
        return f"{self.label} {self.value:,.0f} {self.unit}"


@dataclass(frozen=True)
class Target:
    """One line of the targets table. `met` is None when the run did not measure it."""

    name: str
    goal: str  # ">= 1x", ">= 70%", "<= 1x"
    left: Operand | None = None  # the adapter's side
    right: Operand | None = None  # what it is held against
    ratio: float | None = None  # left / right
    met: bool | None = None
    note: str = ""  # why it is not measured, or what else the reader needs

    @property
    def verdict(self) -> str:
        return "not measured" if self.met is None else ("MET" if self.met else "MISSED")

    @property
    def compared(self) -> str:
        sides = " vs ".join(o.text() for o in (self.left, self.right) if o is not None)
        return "; ".join(p for p in (sides, self.note) if p)

    def as_json(self) -> dict:
        return {"name": self.name, "goal": self.goal,
                "left": None if self.left is None else asdict(self.left),
                "right": None if self.right is None else asdict(self.right),
                "ratio": self.ratio, "met": self.met, "verdict": self.verdict,
                "detail": self.compared}


def measured_text(target: Mapping) -> str:
    """The ratio as the table shows it (a share when the goal is a percentage), cut toward
    the side the goal excludes (down for ">=", up for "<="): a ratio never reads as the goal
    its verdict missed (0.699 of a ">= 70%" goal is "69%", not "70%")."""
    ratio = target.get("ratio")
    if ratio is None:
        return "-"
    goal = target.get("goal", "")
    cut = hundredths(ratio, up=goal.startswith("<="))
    return f"{cut}%" if goal.endswith("%") else f"{cut / 100:.2f}x"


def hundredths(ratio: float, up: bool = False) -> int:
    """`ratio` in whole hundredths (per cent, or hundredths of x), cut down (or `up`) rather
    than rounded: what a ">=" (or "<=") goal compares never reads as on its other side."""
    return math.ceil(ratio * 100 - 1e-9) if up else math.floor(ratio * 100 + 1e-9)


# -- picking runs -----------------------------------------------------------------------------


def usable(run: Mapping) -> bool:
    """A run whose S can be compared: fitted, positive, nothing lost or corrupt."""
    return (run.get("S", 0) > 0 and "error" not in run.get("fit", {})
            and not run.get("lost") and not run.get("corrupt"))


def best_run(runs: Sequence[Mapping], pick: Callable[[str], bool], size: int,
             batch: int | None = None) -> Mapping | None:
    """The usable run with the highest S among the transports `pick` accepts, at (about)
    `size` (a 1 MiB packet capped a few bytes below still counts), at `batch` if given."""
    found = [r for r in runs if pick(r["transport"]) and matches_size(r["packet_size"], size)
             and (batch is None or r.get("batch", 1) == batch) and usable(r)]
    return max(found, key=lambda r: r["S"], default=None)


def run_label(run: Mapping) -> str:
    """'fig11 b32', or 'fig11 b32 (3 used)' when the sender area or the destination ring
    capped the batch at 3 packets per request (the bench prints a note saying so)."""
    batch, used = run.get("batch", 1), run.get("batch_used")
    return f"{run['transport']} b{batch}" + (f" ({used} used)" if used and used != batch else "")


def _s(run: Mapping) -> Operand:
    return Operand(run_label(run), run["S"])


def _at_least(name: str, least: float, left: Operand, right: Operand, note: str = "",
              share: bool = False) -> Target:
    ratio = left.value / right.value
    goal = f">= {least:.0%}" if share else f">= {least:g}x"
    return Target(name, goal, left, right, ratio, ratio >= least, note)


# -- the targets ------------------------------------------------------------------------------


def peers_target(runs: Sequence[Mapping], size: int) -> Target:
    """(a) the best adapter path against the strongest peer at `size`. MISSED as soon as one
    measured peer is ahead; MET only when every peer was measured and none is."""
    name = f"S best adapter path >= every peer at {human_size(size)}"
    adapter = best_run(runs, is_adapter_path, size)
    peers = {p: best_run(runs, lambda t, p=p: t == p, size) for p in PEERS}
    missing = [p for p, r in peers.items() if r is None]
    lacking = [w for w, gone in (("adapter-path", adapter is None),
                                 ("peer", len(missing) == len(PEERS))) if gone]
    if lacking:
        return Target(name, ">= 1x", note=f"not measured: no usable {' or '.join(lacking)} run "
                                          f"at {human_size(size)}")
    assert adapter is not None
    strongest = max((r for r in peers.values() if r is not None), key=lambda r: r["S"])
    t = _at_least(name, 1.0, _s(adapter), _s(strongest))
    if missing and t.met:
        return Target(t.name, t.goal, t.left, t.right, t.ratio, None,
                      f"not measured: no usable {', '.join(missing)} run")
    return Target(t.name, t.goal, t.left, t.right, t.ratio, t.met,
                  f"not in this run: {', '.join(missing)}" if missing else "")


def per_packet_targets(runs: Sequence[Mapping]) -> list[Target]:
    """(b) one packet per call at 1 KiB: the better of fig11/fig12 at batch 1 against each
    of tcp and iceoryx2 at batch 1."""
    size = human_size(PER_PACKET_SIZE)
    adapter = best_run(runs, lambda t: t in PER_PACKET, PER_PACKET_SIZE, batch=1)
    out = []
    for peer in PER_PACKET_PEERS:
        name = f"one packet per call at {size}: {'/'.join(PER_PACKET)} b1 >= {peer} b1"
        other = best_run(runs, lambda t, p=peer: t == p, PER_PACKET_SIZE, batch=1)
        if adapter is None or other is None:
            lacking = [w for w, r in ((f"{'/'.join(PER_PACKET)} b1", adapter),
                                      (f"{peer} b1", other)) if r is None]
            out.append(Target(name, ">= 1x", note=f"not measured: no usable "
                                                  f"{' or '.join(lacking)} run at {size}"))
        else:
            out.append(_at_least(name, 1.0, _s(adapter), _s(other)))
    return out


def floor_targets(runs: Sequence[Mapping], floor: Mapping[str, Mapping] | None) -> list[Target]:
    """(c) the best adapter path's S over the floor of its packet size (`floor`: the run's
    top-level {"<size>": {"S", "batch"}})."""
    out = []
    for size, least in FLOOR_SHARES:
        name = f"S best adapter path / floor at {human_size(size)}"
        adapter = best_run(runs, is_adapter_path, size)
        f = (floor or {}).get(str(adapter["packet_size"])) if adapter else None
        if adapter is None or not f or not f.get("S"):
            why = "no usable adapter-path run" if adapter is None else "no floor"
            out.append(Target(name, f">= {least:.0%}",
                              note=f"not measured: {why} at {human_size(size)}"))
        else:
            out.append(_at_least(name, least, _s(adapter), Operand("floor", f["S"]),
                                 share=True, note=_split_note(f)))
    return out


def split_share(floor: Mapping) -> float | None:
    """The split floor's S over the floor's (floor.py), None if the run has no split."""
    split = floor.get("split")
    return split["S"] / floor["S"] if split and floor["S"] else None


def _split_note(floor: Mapping) -> str:
    """What the floor's loop reaches with its check in a second process (floor.py): the
    most a two-process transport could, beside the floor target's operands."""
    share = split_share(floor)
    if share is None:
        return ""
    note = (f"fill + check in two processes, no transport: S {si(floor['split']['S'])} "
            f"({share:.0%} of the floor)")
    alone = floor.get("alone")
    if alone is not None and alone < floor["S"]:
        note += f"; the one-thread loop measured S {si(alone)}, below it: the floor is the split's"
    return note


def latency_target(latency: Mapping[str, Mapping] | None) -> Target:
    """(d) lone 64 B packets: the lowest p50 of the adapter paths against tcp's."""
    name = f"lone 64 B p50: best adapter path <= {LATENCY_PEER}"
    if latency is None:
        return Target(name, "<= 1x", note="not measured: no latency phase (--latency)")
    have = {t: r for t, r in latency.items() if r.get("packets", 0) > 0}
    adapter = min((t for t in have if is_adapter_path(t)), key=lambda t: have[t]["p50_us"],
                  default=None)
    if adapter is None or LATENCY_PEER not in have:
        lacking = [w for w, ok in (("adapter-path", adapter), (LATENCY_PEER, LATENCY_PEER in have))
                   if not ok]
        return Target(name, "<= 1x", note=f"not measured: no lone-packet latency of "
                                          f"{' or '.join(lacking)}")
    left = Operand(f"{adapter} p50", have[adapter]["p50_us"], "us")
    right = Operand(f"{LATENCY_PEER} p50", have[LATENCY_PEER]["p50_us"], "us")
    ratio = left.value / right.value if right.value > 0 else float("inf")
    return Target(name, "<= 1x", left, right, ratio, ratio <= 1.0)


def evaluate(runs: Sequence[Mapping], floor: Mapping[str, Mapping] | None = None,
             latency: Mapping[str, Mapping] | None = None) -> list[Target]:
    """Every target of issue 14, in its order, from one run's results."""
    return [*(peers_target(runs, size) for size in PEER_SIZES), *per_packet_targets(runs),
            *floor_targets(runs, floor), latency_target(latency)]


CAPTION = ("adapter path = any transport named fig11* or fig12*, at its best batch; every peer "
           "(iceoryx2, zmq, pipe, tcp, vswitch) at ITS best batch; one packet per call = "
           "fig11/fig12 at batch 1 (not -sync, not -loan); floor = fill + check alone")
