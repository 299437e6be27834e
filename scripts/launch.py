"""`xpmove launch`: start the machine, run the built-in all-to-all traffic, report, stop.

Every partition sends verified packets to every other partition in both flows (Fig 11 and
Fig 12); receivers check source, per-pair sequence and every byte. The run is bounded by a
packet count or a duration; Ctrl-C or SIGTERM ends it early, still shutting down cleanly.
Packets are counted from the segment's books, and a partition the machine restarts continues
its share of the traffic (scripts/shares.py).
"""

from __future__ import annotations

import resource
import signal
import time
from collections.abc import Callable, Collection
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from adapter.protocol import Flow
from adapter.ring import max_payload
from hypervisor.config import MachineConfig, with_program
from hypervisor.machine import Machine
from scripts.console import make_console
from scripts.loadgen.benchcore import si
from scripts.shares import Shares, collect
from scripts.tables import Col, Grid
from scripts.workload.program import PROGRAM

POLL_S = 0.2
INTERVAL_S = 1.0  # one progress line a second when the output is not a terminal
DRAIN_TIMEOUT_S = 30.0  # after the senders finish, how long receivers may take to catch up
# ... unless nothing has arrived for this long and some packets are known never to arrive (a
# cluster host's fabric gave up on a proxy ring, or dropped records): the drain ends then
STALL_S = 2.0


@dataclass(frozen=True)
class TrafficOptions:
    packets: int | None = 500  # per peer and flow
    duration: float | None = None
    size: int = 1024
    flows: tuple[str, ...] = tuple(f.value for f in Flow)


def totals(stats: dict[int, dict], unreachable: Collection[int] = ()) -> tuple[int, int]:
    """(packets accepted by the adapter for delivery, packets received: the books count every
    packet a receiver consumed, intact or not); with `unreachable`, only what was accepted
    for, and arrived at, the other destinations."""
    sent = sum(n for s in stats.values() for dst, n in s.get("sent", {}).items()
               if int(dst) not in unreachable)
    received = sum(sum(s.get("received", {}).values()) for nid, s in stats.items()
                   if nid not in unreachable)
    return sent, received


def verified(stats: dict[int, dict]) -> int:
    """Packets received intact: received less what the receivers found corrupt."""
    return totals(stats)[1] - sum(s.get("corrupt", 0) for s in stats.values())


def gone_for_good(machine: Machine) -> set[int]:
    """Partitions that ended and will not come back, here or (on a cluster) on another host:
    what was accepted for them can never be verified, so the drain does not wait for it."""
    gone = set(machine.retired)
    if machine.gateway is not None:
        gone |= {nid for nid, state in machine.gateway.remote_states().items()
                 if state == "gone"}
    return gone


def interval_line(t0: float, t1: float, verified: int, before: int, errors: int,
                  what: str = "verified") -> str:
    """One iperf3-style progress line for [t0, t1] s of traffic (for logs and pipes, where no
    progress bar is drawn): packets `what` so far, the rate over the interval, errors so far."""
    rate = (verified - before) / max(t1 - t0, 1e-9)
    return (f"[{t0:6.1f}-{t1:6.1f} s] {verified:>12,} {what} {si(rate, 'pkt/s'):>12} "
            f"errors {errors:,}")


def traffic_errors(stats: dict[int, dict]) -> int:
    """Refused sends and corrupt, missing or duplicated packets, over every partition."""
    return sum(sum(s.get("errors", {}).values()) + s.get("corrupt", 0) + s.get("gaps", 0)
               + s.get("duplicates", 0) for s in stats.values())


class IntervalPrinter:
    """Prints an interval line every INTERVAL_S when the console is not a terminal."""

    def __init__(self, console: Console, what: str = "verified") -> None:
        self.console = console
        self.what = what
        self.enabled = not console.is_terminal
        self.start = self.t0 = time.monotonic()
        self.before = 0

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self.t0 >= INTERVAL_S

    def tick(self, verified: int, errors: int) -> None:
        """Print the line if one is due."""
        if self.due():
            self._line(verified, errors)

    def last(self, verified: int, errors: int) -> None:
        """The traffic ended: the part of an interval since the last line, if it verified
        anything (so the lines add up to the total, as iperf3's do)."""
        if self.enabled and verified != self.before:
            self._line(verified, errors)

    def _line(self, verified: int, errors: int) -> None:
        now = time.monotonic()
        self.console.print(interval_line(self.t0 - self.start, now - self.start, verified,
                                         self.before, errors, self.what),
                           highlight=False, soft_wrap=True)
        self.console.file.flush()  # a pipe is block-buffered: the line must show now
        self.t0, self.before = now, verified


# packets accepted, verified; senders done; errors; the drain deadline passed; the drain has
# stalled on packets known never to arrive
Look = tuple[int, int, bool, int, bool, bool]


def run_traffic(machine: Machine, shares: Shares, console: Console,
                combine: Callable[[Look], Look] | None = None,
                undeliverable: Callable[[], bool] = lambda: False) -> dict[int, dict]:
    """Start every local partition's share of the traffic and supervise until the senders
    are done and every accepted packet arrived (or the drain deadline). A partition the
    machine restarts continues its share. `combine` turns this host's progress into the
    whole cluster's (every host calls it once per look, so it may be a collective).
    `undeliverable()`: whether this host knows of packets that can never arrive (a cluster
    fabric's problems); then a drain with no arrival for STALL_S ends without waiting out
    DRAIN_TIMEOUT_S."""
    shares.start()
    expected = None
    if shares.packets is not None:
        n = len(shares.everyone)
        expected = shares.packets * len(shares.flows) * n * (n - 1)
    drain_deadline = None
    senders_done = False
    last_received, moved_at = -1, time.monotonic()
    intervals = IntervalPrinter(console)
    # the description carries the counts: with --duration there is no total to format
    with Progress(TextColumn("[bold]traffic"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("0 packets verified", total=expected)
        while True:
            for child in machine.poll(liveness=True):  # a hung adapter is replaced too
                console.print(f"[red]{child.name} died (exit code {child.exit_code})")
            for line in shares.resume():
                console.print(f"[yellow]{line}")
            stats = shares.look()
            gone = gone_for_good(machine)
            sent, received = totals(stats, gone)
            # whether the drain is over is decided in the look too: on a cluster every host
            # must end in the same look, and each has its own clock
            now = time.monotonic()
            late = drain_deadline is not None and now > drain_deadline
            stuck = senders_done and now - moved_at > STALL_S and undeliverable()
            look = (sent, received,
                    all(s.get("sender_done", False) or nid in gone for nid, s in stats.items()),
                    traffic_errors(stats), late, stuck)
            sent, received, senders_done, errors, late, stuck = (combine(look) if combine
                                                                 else look)
            if received != last_received:  # the whole cluster's count: the same on every host
                last_received, moved_at = received, time.monotonic()
            of = f"{expected:,}" if expected is not None else f"{sent:,} accepted"
            progress.update(task, completed=received, total=expected or max(sent, 1),
                            description=f"{received:,} of {of} packets verified")
            intervals.tick(received, errors)
            if senders_done and received >= sent:
                intervals.last(received, errors)
                return stats
            if senders_done:
                drain_deadline = drain_deadline or time.monotonic() + DRAIN_TIMEOUT_S
                if late or stuck:
                    intervals.last(received, errors)
                    console.print(f"[red]receivers still missing {sent - received} packets "
                                  + (f"after {DRAIN_TIMEOUT_S} s" if late else
                                     f"and none arrived for {STALL_S} s: some are known "
                                     f"never to arrive (the problems below)"))
                    return stats
            time.sleep(POLL_S)  # pacing the report, not synchronisation


def machine_cpu(machine: Machine) -> float:
    """User + system CPU seconds so far of this process (the hypervisor; on a cluster, with
    its fabric), of every live child of the machine, and of every child it has reaped (a
    killed adapter's or partition's CPU until its death): what a run costs, all of it, as
    the difference of two readings."""
    times = psutil.Process().cpu_times()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = times.user + times.system + reaped.ru_utime + reaped.ru_stime
    for child in machine.children():
        try:
            times = psutil.Process(child.proc.pid).cpu_times()
        except psutil.Error:
            continue  # dead: counted in `reaped` once it is reaped
        total += times.user + times.system
    return total


def cost_line(verified: int, cpu: float, where: str = "every process of the machine") -> str:
    """The run's S: packets verified per CPU-second of `where`."""
    return (f"cost: {cpu:.2f} CPU-s over {where}: "
            f"{verified / max(cpu, 1e-9):,.0f} packets per CPU-second")


def partition_table(partitions: dict[int, tuple[str, str]], stats: dict[int, dict]) -> Grid:
    """One row per partition: `partitions` maps network ID to (name, state)."""
    text = ("name", "state", "errors")
    table = Grid("partitions (packets and bytes out / in; bad = corrupt + gaps + dups)",
                 [Col(c, "left", True) if c in text else Col(c)
                  for c in ("name", "ID", "state", "pkts out", "MB out", "pkts in", "MB in",
                            "bad", "errors", "p50 us", "p99 us")],
                 drop=("MB out", "MB in", "p50 us", "p99 us", "state"))
    for nid, (name, state) in partitions.items():
        s = stats.get(nid, {})
        errors = ", ".join(f"{k} {v}" for k, v in s.get("errors", {}).items()) or "0"
        bad = s.get("corrupt", 0) + s.get("gaps", 0) + s.get("duplicates", 0)
        table.add_row(name, str(nid), state,
                      f"{sum(s.get('sent', {}).values()):,}", f"{s.get('bytes_out', 0) / 1e6:.1f}",
                      f"{sum(s.get('received', {}).values()):,}",
                      f"{s.get('bytes_in', 0) / 1e6:.1f}", str(bad), errors,
                      f"{s.get('latency_p50_us', 0):.0f}", f"{s.get('latency_p99_us', 0):.0f}")
    return table


def adapter_table(adapter: dict) -> Grid:
    table = Grid(adapter.get("title", "adapter"), [Col("counter", "left", True), Col("value")])
    for k, v in sorted(adapter.get("counters", {}).items()):
        table.add_row(k, f"{v:,}")
    for k, v in sorted(adapter.get("errors", {}).items()):
        table.add_row(f"errors: {k}", f"{v:,}")
    busy = [k for k, state in adapter.get("locks", {}).items() if state != "free"]
    table.add_row("locks not free", ", ".join(busy) or "none")
    return table


def _ignored(signum: int, frame: object) -> None:
    """A Python-level no-op, not SIG_IGN: a signal the interpreter noted just before the
    switch is then ignored quietly (with SIG_IGN it prints 'ignored due to race condition'),
    and a child started meanwhile keeps the default disposition."""


@contextmanager
def signals_deferred():
    """A second Ctrl-C (or SIGTERM) must not cut the clean-up short."""
    previous = {sig: signal.signal(sig, _ignored) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def largest_packet(config: MachineConfig) -> int:
    """The biggest packet every partition can both hold (sender area) and receive (ring)."""
    return min(min(p.memory_size - p.receive_size, max_payload(p.receive_size))
               for p in config.partitions)


def launch(config: MachineConfig, options: TrafficOptions, console: Console | None = None) -> int:
    """Run the machine once; 0 when every packet was accepted and arrived intact, and all
    shut down."""
    console = console or make_console()
    machine = Machine(with_program(config, PROGRAM))
    stats: dict[int, dict] = {}
    adapter: dict = {}
    shares: Shares | None = None
    interrupted = False
    try:
        try:
            machine.start()
            console.print(f"machine up: run {machine.prefix}, {len(machine.partitions)} "
                          f"partitions, segment {machine.layout.total_size:,} bytes")
            cpu = machine_cpu(machine)
            shares = Shares(machine, options.size, options.packets, options.duration,
                            options.flows)
            stats = run_traffic(machine, shares, console)
            cpu = machine_cpu(machine) - cpu
            console.print(cost_line(verified(stats), cpu), highlight=False)
        except KeyboardInterrupt:
            interrupted = True
        with signals_deferred():  # a second Ctrl-C must not cost the report (calls are bounded)
            if interrupted:
                console.print("[yellow]interrupted: stopping the machine")
            if machine.running:
                stats = shares.look("halt") if shares is not None else collect(machine, "halt")
                adapter = machine.adapter_stats()
    finally:
        with signals_deferred():
            machine.stop()
    with signals_deferred():  # the report, whole
        return report(console, {nid: (c.name, c.state.value)
                                for nid, c in machine.partitions.items()},
                      stats, [adapter] if adapter else [],
                      [c.name for c in machine.children() if c.state.value == "dead"],
                      interrupted, restarted=restarted_partitions(machine))


def restarted_partitions(machine: Machine, where: str = "") -> list[str]:
    """'NAME (n times)' for each partition the machine restarted (`where`: its host)."""
    return [f"{machine.partitions[nid].name}{where} ({n} time{'s' * (n > 1)})"
            for nid, n in machine.restarts.items() if nid != "adapter" and n]


def report(console: Console, partitions: dict[int, tuple[str, str]], stats: dict[int, dict],
           adapters: list[dict], dead: list[str], interrupted: bool,
           problems: tuple[str, ...] = (), restarted: list[str] | None = None) -> int:
    """Print the partition and adapter tables and the verdict line; the exit code. `problems`
    are faults found elsewhere (a cluster's fabrics) that make the run not clean; `restarted`
    names the partitions the machine restarted (their traffic went on: not a fault)."""
    console.print(partition_table(partitions, stats))
    for adapter in adapters:
        console.print(adapter_table(adapter))
    for problem in problems:
        console.print(f"[red]{problem}", soft_wrap=True)
    sent, received = totals(stats)[0], verified(stats)
    bad = sum(s.get("corrupt", 0) + s.get("gaps", 0) + s.get("duplicates", 0)
              for s in stats.values())
    refused = sum(sum(s.get("errors", {}).values()) for s in stats.values())
    clean = (received == sent and bad == 0 and not dead and refused == 0 and not problems
             and all(v == "free" for a in adapters for v in a.get("locks", {}).values()))
    summary = (f"{refused:,} refused, {bad} corrupt/gap/duplicate, "
               f"dead: {', '.join(dead) or 'none'}"
               + (f", restarted: {', '.join(restarted)}" if restarted else "")
               + "; all IPC names unlinked")
    if interrupted:
        # the stop cut the traffic short: what was accepted but not yet verified was in flight
        console.print(f"[yellow]interrupted[/]: {received:,} of {sent:,} accepted packets "
                      f"verified before the stop (packets in flight when stopped are not lost: "
                      f"the stop ended the traffic before their receivers read them), "
                      f"{summary}", soft_wrap=True)  # one line: logs grep it whole
        return 130
    verdict = "[green]clean" if clean else "[red]NOT clean"
    console.print(f"{verdict}: {received:,} of {sent:,} accepted packets verified, {summary}",
                  soft_wrap=True)
    return 0 if clean else 1


if __name__ == "__main__":
    import sys

    from scripts.cli import main

    sys.exit(main(["launch", *sys.argv[1:]]))
