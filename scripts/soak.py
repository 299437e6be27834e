"""`xpmove soak`: all-to-all traffic in both flows while partitions and the adapter are killed.

The books are kept where no kill can reach them: the segment's per-pair tables. `committed`
(the adapter's last sequence number per pair, rolled back for every abandoned commit) is what
was accepted; `delivered` (the last sequence number each receiver consumed, written before it
frees the space) is what arrived. After the traffic drains, lost = committed - delivered over
all pairs. Duplicates are counted by the receivers (a sequence number seen twice).
If the drain times out, the pairs that disagree are listed; with XPMOVE_DEBUG=1 set, every
partition also dumps its threads' stacks to stderr (faulthandler on SIGUSR1).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
from dataclasses import dataclass

from rich.console import Console

from adapter import receive_area
from adapter.protocol import Flow
from hypervisor.config import MachineConfig, with_program
from hypervisor.machine import Machine, MachineError
from hypervisor.names import RunRegistry
from scripts.launch import IntervalPrinter, collect, signals_deferred, traffic_errors
from scripts.tables import Col, Grid
from scripts.workload.program import PROGRAM

POLL_S = 0.05  # supervision period: a death is noticed and repaired within this
DRAIN_TIMEOUT_S = 30.0
ADAPTER_SHARE = 0.25  # fraction of kills aimed at the adapter


@dataclass
class SoakReport:
    accepted: int = 0
    delivered: int = 0
    failed_reported: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    kills: int = 0
    adapter_kills: int = 0
    restarts: int = 0
    locks_free: bool = False

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.corrupt == 0 and self.locks_free


def pair_books(machine: Machine) -> tuple[int, int]:
    """(committed, delivered) summed over every ordered pair, read from the segment."""
    assert machine.memory is not None
    words = receive_area.words(machine.memory.view)
    committed = delivered = 0
    for src in machine.layout.partitions:
        for dst in machine.layout.partitions:
            if src.index != dst.index:
                committed += words[machine.layout.seq_address(src.index, dst.index) >> 3]
                delivered += words[machine.layout.delivered_address(src.index, dst.index) >> 3]
    return committed, delivered


def pair_detail(machine: Machine) -> list[str]:
    """Pairs whose books disagree, with the destination's unconsumed bytes: for the report."""
    assert machine.memory is not None
    words = receive_area.words(machine.memory.view)
    lines = []
    for src in machine.layout.partitions:
        for dst in machine.layout.partitions:
            c = words[machine.layout.seq_address(src.index, dst.index) >> 3]
            d = words[machine.layout.delivered_address(src.index, dst.index) >> 3]
            if c != d:
                pending = receive_area.read_head(words, dst) - receive_area.read_tail(words, dst)
                lines.append(f"{src.network_id} -> {dst.network_id}: committed {c}, delivered "
                             f"{d}, {pending} bytes unconsumed at {dst.network_id}")
    return lines


def start_traffic(machine: Machine, nid: int, shape: dict, until: float) -> None:
    """Start a partition's share of the traffic (`shape`: packet size and batch); if it dies
    meanwhile, its restart will."""
    remaining = until - time.monotonic()
    peers = [p for p in machine.partitions if p != nid]
    command = {"cmd": "traffic", "peers": peers, "flows": [f.value for f in Flow], **shape,
               "duration": remaining, "send_timeout": 5.0}
    if remaining <= 0:  # too late to send, never too late to drain what is waiting for it
        command = {"cmd": "receive_on"}
    try:
        reply = machine.call(nid, command)
    except MachineError:
        return
    if not reply.get("ok"):
        raise MachineError(f"partition {nid} refused traffic: {reply.get('message')}")


def resume_restarted(machine: Machine, seen: dict, shape: dict, until: float) -> None:
    """Give every partition incarnation started since we last looked its share of traffic.

    Restarts happen wherever the machine notices a death (its poll, or a failed call), so
    compare against what we have seen rather than around one poll."""
    for key, n in list(machine.restarts.items()):
        if key != "adapter" and n > seen.get(key, 0):
            seen[key] = n
            start_traffic(machine, key, shape, until)


class SoakInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the soak: `report` holds what was counted until then
    (accepted and delivered from the segment's books; lost and locks_free not determined,
    since the traffic was not drained) and `elapsed` the seconds since the machine started."""

    def __init__(self, report: SoakReport, elapsed: float) -> None:
        super().__init__(f"soak interrupted after {elapsed:.1f} s")
        self.report = report
        self.elapsed = elapsed


def _tally(report: SoakReport, machine: Machine, last_stats: dict[int, dict]) -> None:
    """The receivers' and the machine's counts into the report."""
    report.failed_reported = sum(sum(s.get("errors", {}).values()) for s in last_stats.values())
    report.duplicated = sum(s.get("duplicates", 0) for s in last_stats.values())
    report.corrupt = sum(s.get("corrupt", 0) for s in last_stats.values())
    report.restarts = sum(machine.restarts.values())


def soak(config: MachineConfig, duration: float, kill_every: float, size: int = 1024,
         seed: int | None = None, console: Console | None = None,
         registry: RunRegistry | None = None, batch: int = 1) -> SoakReport:
    """`batch` > 1 sends batches as multiple-write runs (MOVE_RUN in fig11, GRANT_RUN in
    fig12), so kills land inside runs as well as between single moves. An interrupt raises
    SoakInterrupted carrying the report so far, after the machine has stopped."""
    console = console or Console()
    shape = {"size": size, "batch": batch}
    rng = random.Random(seed)
    config = dataclasses.replace(config, restart="always", restart_limit=1_000_000)
    machine = Machine(with_program(config, PROGRAM), registry=registry)
    report = SoakReport()
    last_stats: dict[int, dict] = {}
    started = time.monotonic()
    try:
        try:
            _soak(machine, report, last_stats, console, rng, duration, kill_every, shape)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping the machine")
            if machine.memory is not None:  # the books are in the segment: read them first
                report.accepted, report.delivered = pair_books(machine)
            _tally(report, machine, last_stats)
            raise SoakInterrupted(report, time.monotonic() - started) from None
    finally:
        with signals_deferred():
            machine.stop()
    return report


def _soak(machine: Machine, report: SoakReport, last_stats: dict[int, dict], console: Console,
          rng: random.Random, duration: float, kill_every: float, shape: dict) -> None:
    machine.start()
    console.print(f"soak: run {machine.prefix}, {len(machine.partitions)} partitions, "
                  f"{duration:g} s, a kill every {kill_every:g} s, batch {shape['batch']}")
    intervals = IntervalPrinter(console, "delivered")
    until = time.monotonic() + duration
    seen: dict = {}
    for nid in machine.partitions:
        start_traffic(machine, nid, shape, until)
    next_kill = time.monotonic() + kill_every
    while time.monotonic() < until:
        time.sleep(POLL_S)  # supervision period, not synchronisation
        machine.poll()
        resume_restarted(machine, seen, shape, until)
        while machine.events:
            console.print(f"  {machine.events.pop(0)}")
        if time.monotonic() >= next_kill:
            next_kill += kill_every
            victim = None if rng.random() < ADAPTER_SHARE else rng.choice(
                list(machine.partitions))
            machine.kill(victim)
            report.kills += 1
            report.adapter_kills += victim is None
            console.print(f"  killed {'adapter' if victim is None else f'partition {victim}'}")
        last_stats.update(collect(machine))
        if intervals.due():
            intervals.tick(pair_books(machine)[1], traffic_errors(last_stats))
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        machine.poll()
        resume_restarted(machine, seen, shape, until)
        stats = collect(machine)
        last_stats.update(stats)
        committed, delivered = pair_books(machine)
        if all(s["sender_done"] for s in stats.values()) and committed == delivered:
            break
        if time.monotonic() > deadline:
            console.print(f"[red]drain timed out: {committed - delivered} not delivered")
            for line in pair_detail(machine):
                console.print(f"  {line}")
            if os.environ.get("XPMOVE_DEBUG"):  # every partition dumps its threads' stacks
                for nid in machine.partitions:
                    machine.kill(nid, signal.SIGUSR1)
            for nid, st in stats.items():
                console.print(f"  partition {nid}: errors {st.get('errors')} "
                              f"{st.get('receiver_errors', '')}")
            break
        time.sleep(POLL_S)
    report.accepted, report.delivered = pair_books(machine)
    report.lost = report.accepted - report.delivered
    _tally(report, machine, last_stats)
    locks = machine.adapter_stats()["locks"]
    report.locks_free = all(state == "free" for state in locks.values())


def report_table(report: SoakReport) -> Grid:
    table = Grid("soak", [Col("what", "left", True), Col("count")])
    for field in dataclasses.fields(report):
        table.add_row(field.name.replace("_", " "), str(getattr(report, field.name)))
    return table
