"""The load generator's arithmetic (pure: no processes, no clocks, no I/O).

* `fit_s` -- S = dT/dC, the figure of merit of Fig 14: the least-squares slope of cumulative
  verified packets T over cumulative CPU seconds C, fitted on the steady-state samples only.
  Steady state = the samples taken while every sender was still sending (so neither the
  start-up before the first packet nor the drain after the last one counts), minus the first
  WARMUP (20 %) and the last TAIL (10 %) of them. A run too short to leave MIN_STEADY samples
  (a smoke test with a few packets) falls back to every sample, origin included; the result
  says so.
* percentiles, routes (which partition sends to which), size parsing and the iperf3-style
  interval line. The targets are judged in targets.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WARMUP = 0.2
TAIL = 0.1
MIN_STEADY = 3


class BenchError(RuntimeError):
    """A run could not be carried out (a partition refused, a process died)."""


class SlopeError(ValueError):
    """S cannot be computed from these samples; says why."""


@dataclass(frozen=True)
class Sample:
    wall_s: float  # since the run started
    cpu_s: float  # C: CPU seconds of every process on the path since the run started
    packets: int  # T: packets delivered and verified so far
    bytes: int
    sending: bool  # every sender was still sending when this sample was taken


@dataclass(frozen=True)
class Fit:
    s: float  # packets per CPU-second
    first: int  # index of the first sample used
    last: int  # index of the last sample used (inclusive)
    steady: bool  # False: fell back to all samples (run too short for a steady window)

    @property
    def used(self) -> int:
        return self.last - self.first + 1


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        raise SlopeError(f"need at least 2 samples to fit a slope, got {n}")
    if not all(math.isfinite(x) and math.isfinite(y) for x, y in points):
        raise SlopeError("samples must be finite numbers")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx <= 1e-12 * max(1.0, mx * mx):
        raise SlopeError(f"CPU time did not advance over the {n} samples (all at C = {mx:.6f} "
                         f"s): no slope")
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx


def steady_window(n: int, warmup: float = WARMUP, tail: float = TAIL) -> tuple[int, int]:
    """[first, last] indices left of `n` samples after dropping the warm-up and tail fractions."""
    if not (0 <= warmup < 1 and 0 <= tail < 1 and warmup + tail < 1):
        raise SlopeError(f"warm-up {warmup} and tail {tail} must be fractions summing below 1")
    first = int(n * warmup)
    last = n - 1 - int(n * tail)
    return first, last


def fit_s(samples: Sequence[Sample], warmup: float = WARMUP, tail: float = TAIL) -> Fit:
    """S on the steady-state samples (see the module docstring for which)."""
    sending = [i for i, s in enumerate(samples) if s.sending]
    if sending:
        lo, hi = sending[0], sending[-1]
        first, last = steady_window(hi - lo + 1, warmup, tail)
        first, last = lo + first, lo + last
        if last - first + 1 >= MIN_STEADY:
            points = [(s.cpu_s, s.packets) for s in samples[first:last + 1]]
            return Fit(slope(points), first, last, True)
    points = [(s.cpu_s, s.packets) for s in samples]
    return Fit(slope(points), 0, len(samples) - 1, False)


def without_work(samples: Sequence[Sample], work_s: Sequence[float]) -> list[Sample]:
    """The samples with C minus the workload's own fill and check time (`work_s`, cumulative
    CPU seconds at each sample): fitted with `fit_s`, they give S_transport, the transport's
    own cost per packet."""
    if len(work_s) != len(samples):
        raise ValueError(f"{len(work_s)} work times for {len(samples)} samples")
    return [Sample(s.wall_s, max(0.0, s.cpu_s - w), s.packets, s.bytes, s.sending)
            for s, w in zip(samples, work_s, strict=True)]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of `values`; 0.0 when there are none."""
    if not 0 <= q <= 1:
        raise ValueError(f"percentile {q} is not in [0, 1]")
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])


def run_label(r: dict) -> str:
    """'fig12-loan b16384': a run's transport and batch (or the label it was given)."""
    return r.get("label") or f"{r['transport']} b{r.get('batch', 1)}"


def routes(ids: Sequence[int], topology: str) -> list[tuple[int, int]]:
    """(sender, receiver) pairs: 'pairs' = 1->2, 3->4, ...; 'all-to-all' = every ordered pair."""
    ids = sorted(ids)
    if len(ids) < 2:
        raise ValueError(f"topology needs at least 2 partitions, the machine has {len(ids)}")
    if topology == "pairs":
        return [(ids[i], ids[i + 1]) for i in range(0, len(ids) - 1, 2)]
    if topology == "all-to-all":
        return [(s, d) for s in ids for d in ids if s != d]
    raise ValueError(f"topology {topology!r} is not 'pairs' or 'all-to-all'")


def parse_routes(text: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """'1:2,3:4' -> [(1, 2), (3, 4)], every ID checked against the machine."""
    out = []
    for part in text.split(","):
        src, sep, dst = part.strip().partition(":")
        if not sep or not src.strip().isdigit() or not dst.strip().isdigit():
            raise ValueError(f"--pairs: {part!r} is not SRC:DST")
        pair = (int(src), int(dst))
        for nid in pair:
            if nid not in ids:
                raise ValueError(f"--pairs: network ID {nid} is not in the machine {sorted(ids)}")
        if pair[0] == pair[1]:
            raise ValueError(f"--pairs: {part!r} sends to itself")
        if pair not in out:
            out.append(pair)
    return out


_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20}


def parse_size(text: str) -> int:
    """'64', '1KiB', '64k', '1MiB' -> bytes."""
    t = text.strip().lower()
    digits = len(t) - len(t.lstrip("0123456789"))
    number, unit = t[:digits], t[digits:].strip()
    if not number or unit not in _UNITS:
        raise ValueError(f"size {text!r}: use bytes or a KiB/MiB suffix (e.g. 64, 1KiB, 1MiB)")
    return int(number) * _UNITS[unit]


def human_size(n: int) -> str:
    """1048576 -> '1 MiB'; 1048552 -> '1 MiB-24' (just under a MiB); 1000 -> '1000 B'."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        short = -n % scale
        if n >= scale // 2 and short == 0:
            return f"{n // scale} {unit}"
        if unit == "MiB" and n >= scale // 2 and 0 < short <= 64:
            return f"{(n + short) // scale} {unit}-{short}"
    return f"{n} B"


def si(x: float, unit: str = "") -> str:
    """3 significant digits with a k/M/G prefix: 12345 -> '12.3 k'."""
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def interval_line(label: str, t0: float, t1: float, packets: int, nbytes: int,
                  cpu: float) -> str:
    """One iperf3-style line for the interval [t0, t1] of a run."""
    dt = max(t1 - t0, 1e-9)
    s = f"{si(packets / cpu)}" if cpu > 0 else "-"
    return (f"[{label}] {t0:5.2f}-{t1:<5.2f} s {packets:>9,} pkt {si(nbytes, 'B'):>8} "
            f"{si(packets / dt, 'pkt/s'):>11} {si(nbytes * 8 / dt, 'bit/s'):>12}  "
            f"cpu {cpu:4.2f} s  S {s:>6}")


def installed_transports(transports: Sequence[str], needs: dict[str, str | None],
                         have: Callable[[str | None], bool]) -> tuple[tuple[str, ...], list[str]]:
    """The transports whose package `have` finds (`needs`: transport -> module, None or absent =
    nothing to install), and one note per transport left out (never silently)."""
    kept, notes = [], []
    for t in transports:
        module = needs.get(t)
        if have(module):
            kept.append(t)
        else:
            notes.append(f"note: skipping {t}: its package {module!r} is not installed "
                         f"(pip install -e '.[peers]')")
    return tuple(kept), notes


# -- packet sizes the phases and targets pick --------------------------------------------------

KiB_ = 1024
MiB_ = 1 << 20
SCALING_SIZE = KiB_  # the scaling phase: 1 KiB all-to-all
SIZE_SLACK = 64  # a run of size s counts for target size t if t - SIZE_SLACK <= s <= t


def matches_size(size: int, target: int) -> bool:
    """The default 1 MiB packet is capped a few bytes below (1 MiB-24): it still counts."""
    return target - SIZE_SLACK <= size <= target
