"""`xpmove soak`: all-to-all traffic in every flow (fig11, fig12, and leases: fig12-lease)
while partitions and the adapter are killed.

The books are kept where no kill can reach them: the segment's per-pair tables. `committed`
(the adapter's last sequence number per pair, rolled back for every abandoned commit) is what
was accepted; `delivered` (the last sequence number each receiver consumed, written before it
frees the space) is what arrived. After the traffic drains, lost = committed - delivered over
all pairs. Duplicates are counted by the receivers (a sequence number seen twice).
If the drain times out, the pairs that disagree are listed; with XPMOVE_DEBUG=1 set, every
partition also dumps its threads' stacks to stderr (faulthandler on SIGUSR1).

With `rogue`, a hostile process (scripts/rogue.py) posts locks, doorbells and recall semaphores
at random during
the kills, and writes garbage words into the words of a few chosen destinations (a quarter of
them, at least one). A post poisons nothing: it must be absorbed. A garbage word in a
destination's ring control block or in a pair word whose destination it is POISONS that
destination: the books and the receivers' counts of a poisoned destination are reported, not
promised. Every promise holds for the others: nothing lost, doubled or corrupt, their locks
free, never refused as corrupt, their receivers never stopped, no process died unless the soak
killed it, no sender stopped (scripts/soak_report.py: `broken_promises` is the verdict).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Collection

from rich.console import Console

from adapter import receive_area
from hypervisor.config import MachineConfig, with_program
from hypervisor.machine import Machine, MachineError
from hypervisor.names import RunRegistry
from scripts.books import destination_books, pair_books
from scripts.console import make_console
from scripts.launch import IntervalPrinter, signals_deferred, traffic_errors
from scripts.rogue import RoguePlan, RogueProcess
from scripts.shares import Incarnations, collect
from scripts.soak_report import (  # noqa: F401  (report_table, poison_lines: the CLI's)
    KillBook,
    Poisoned,
    SoakReport,
    broken_promises,
    poison_lines,
    report_table,
    tally,
)
from scripts.workload.program import PROGRAM, TRAFFIC_FLOWS

POLL_S = 0.05  # supervision period: a death is noticed and repaired within this
DRAIN_TIMEOUT_S = 30.0
ADAPTER_SHARE = 0.25  # fraction of kills aimed at the adapter
LOOK_EVERY_S = 1.0  # how often the adapter's refusals and the receivers' errors are read
POISON_SHARE = 4  # the rogue poisons one destination in this many (at least one)
SOAK_FLOWS = TRAFFIC_FLOWS  # every partition sends by each (leases too), to every other
# Machine._supervise's event for a child that died; the soak's own kills are SIGKILL
DIED = re.compile(r"(?P<name>.+) died \(exit code (?P<code>-?\d+)\)")


def books_by_destination(machine: Machine) -> dict[int, tuple[int, int]]:
    """Per destination, (committed, delivered) summed over every source, from the segment."""
    assert machine.memory is not None
    return destination_books(pair_books(machine.memory.view, machine.layout))


def segment_totals(machine: Machine) -> tuple[int, int]:
    """(committed, delivered) summed over every ordered pair, read from the segment."""
    return tally(books_by_destination(machine), ())


def pair_detail(machine: Machine, skip: Collection[int] = ()) -> list[str]:
    """Pairs whose books disagree, with the destination's unconsumed bytes: for the report
    (destinations in `skip`, the poisoned ones, are left out)."""
    assert machine.memory is not None
    words = receive_area.words(machine.memory.view)
    by_id = machine.layout.by_id()

    def unconsumed(dst: int) -> int:
        return receive_area.read_head(words, by_id[dst]) - receive_area.read_tail(words, by_id[dst])

    return [f"{src} -> {dst}: committed {c}, delivered {d}, {unconsumed(dst)} bytes unconsumed "
            f"at {dst}"
            for (src, dst), (c, d) in pair_books(machine.memory.view, machine.layout).items()
            if c != d and dst not in skip]


def start_traffic(machine: Machine, nid: int, shape: dict, until: float) -> None:
    """Start a partition's share of the traffic (`shape`: packet size and batch); if it dies
    meanwhile, its restart will."""
    remaining = until - time.monotonic()
    peers = [p for p in machine.partitions if p != nid]
    command = {"cmd": "traffic", "peers": peers, **shape,
               "duration": remaining, "send_timeout": 5.0}
    if remaining <= 0:  # too late to send, never too late to drain what is waiting for it
        command = {"cmd": "receive_on"}
    try:
        reply = machine.call(nid, command)
    except MachineError:
        return
    if not reply.get("ok"):
        raise MachineError(f"partition {nid} refused traffic: {reply.get('message')}")


class SoakInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the soak: `report` holds what was counted until then
    (accepted and delivered from the segment's books; lost and locks_free not determined,
    since the traffic was not drained) and `elapsed` the seconds since the machine started."""

    def __init__(self, report: SoakReport, elapsed: float) -> None:
        super().__init__(f"soak interrupted after {elapsed:.1f} s")
        self.report = report
        self.elapsed = elapsed


class _Soak:
    """One soak's state: the machine, the rogue (if any), what was seen, the report."""

    def __init__(self, machine: Machine, console: Console, rng: random.Random, shape: dict,
                 rogue: bool) -> None:
        self.machine = machine
        self.console = console
        self.rng = rng
        self.shape = shape
        self.report = SoakReport(rogue=rogue)
        self.rogue: RogueProcess | None = None
        self.refused: dict[int, str] = {}  # destination -> the adapter's RingCorrupt reason
        self.receiver_errors: dict[int, str] = {}
        self.incarnations = Incarnations(machine)  # and what the killed ones counted
        self.absorbed: dict[int, int] = {}  # adapter pid -> stray lock posts it absorbed
        self.kills = KillBook()  # the deaths the soak caused
        self._next_look = 0.0

    def resume(self, until: float) -> None:
        """Give every partition incarnation started since we last looked its share of
        traffic (what its predecessors counted is kept)."""
        for nid in self.incarnations.new():
            start_traffic(self.machine, nid, self.shape, until)

    def poisoned(self) -> set[int]:
        """The destinations the rogue wrote a garbage word for (so far)."""
        return {int(w["dst"]) for w in self.rogue.writes} if self.rogue else set()

    def start_rogue(self, kill_every: float) -> None:
        ids = sorted(self.machine.partitions)
        targets = tuple(sorted(self.rng.sample(ids, max(1, len(ids) // POISON_SHARE))))
        plan = RoguePlan(self.machine.prefix, self.machine.layout, targets,
                         self.rng.getrandbits(32), kill_every, kill_every / 2)
        self.rogue = RogueProcess(plan).start()
        self.console.print(f"  rogue started: stray posts on every lock, doorbell and recall, "
                           f"garbage words into the words of destination(s) {list(targets)}")

    def stop_rogue(self) -> None:
        """Idempotent; on every path (the end of the traffic, Ctrl-C, a failure)."""
        if self.rogue is not None:
            self.rogue.stop()
            self.report.lock_posts = self.rogue.done.get("lock_posts", 0)
            self.report.bell_posts = self.rogue.done.get("bell_posts", 0)
            self.report.recall_posts = self.rogue.done.get("recall_posts", 0)
            self.report.room_posts = self.rogue.done.get("room_posts", 0)
            self.report.rogue_failure = self.rogue.failure

    def events(self) -> None:
        """Print what supervision did; a death the soak did not cause is a broken promise."""
        while self.machine.events:
            event = self.machine.events.pop(0)
            self.console.print(f"  {event}")
            died = DIED.fullmatch(event)
            if died and not self.kills.died(died["name"], int(died["code"])):
                self.report.deaths.append(f"{event}: not killed by the soak")

    def look(self, force: bool = False) -> None:
        """Every LOOK_EVERY_S: which destinations the adapter refuses as corrupt, how many
        stray lock posts it absorbed, and which receivers stopped on an error (all are lost
        with the process that knew them)."""
        now = time.monotonic()
        if not force and now < self._next_look:
            return
        self._next_look = now + LOOK_EVERY_S
        try:
            adapter = self.machine.adapter_stats(timeout=1.0)
            self.absorbed[self.machine.pid()] = adapter["errors"].get("stray_lock_release", 0)
        except MachineError:
            adapter = {}
        for dst, why in adapter.get("corrupt", {}).items():
            self.refused.setdefault(int(dst), why)
        for nid, child in list(self.machine.partitions.items()):
            if child.proc.poll() is not None:
                continue  # dead: left to poll()
            try:
                counts = self.machine.call(nid, {"cmd": "bench_count"}, timeout=1.0)
            except MachineError:
                continue
            for error in counts.get("receiver_errors", {}).values():
                self.receiver_errors.setdefault(nid, error)

    def fill(self) -> None:
        """The books and the receivers' counts into the report, split by poisoned or not."""
        report, stats = self.report, self.incarnations.counted()
        poisoned = self.poisoned()
        books = books_by_destination(self.machine)
        report.accepted, report.delivered = tally(books, poisoned)
        kept = [s for nid, s in stats.items() if nid not in poisoned]
        report.duplicated = sum(s.get("duplicates", 0) for s in kept)
        report.corrupt = sum(s.get("corrupt", 0) for s in kept)
        errors: Counter[str] = Counter()
        for s in stats.values():
            errors.update(s.get("errors", {}))
        report.sender_errors = dict(errors)
        report.failed_reported = sum(errors.values())
        report.sender_failures = [f"partition {nid}'s sender stopped: {kind}"
                                  for nid, s in sorted(stats.items())
                                  for kind in s.get("errors", {}) if kind.startswith("sender: ")]
        report.restarts = sum(self.machine.restarts.values())
        report.stray_posts_absorbed = sum(self.absorbed.values())
        report.innocents_hurt = [
            *(f"destination {nid} was refused as corrupt but never poisoned: {why}"
              for nid, why in sorted(self.refused.items()) if nid not in poisoned),
            *(f"the receiver of {nid} (never poisoned) stopped: {error}"
              for nid, error in sorted(self.receiver_errors.items()) if nid not in poisoned)]
        writes = self.rogue.writes if self.rogue else []
        report.poisoned = [
            Poisoned(nid, [w for w in writes if w["dst"] == nid], *books[nid],
                     self.refused.get(nid, ""), self.receiver_errors.get(nid, ""),
                     stats[nid]["duplicates"], stats[nid]["corrupt"])
            for nid in sorted(poisoned)]

    def run(self, duration: float, kill_every: float) -> None:
        machine, report, console = self.machine, self.report, self.console
        machine.start()
        console.print(f"soak: run {machine.prefix}, {len(machine.partitions)} partitions, "
                      f"{duration:g} s, a kill every {kill_every:g} s, batch "
                      f"{self.shape['batch']}, seed {self.report.seed} (--seed replays its "
                      f"choices)")
        intervals = IntervalPrinter(console, "delivered")
        until = time.monotonic() + duration
        for nid in machine.partitions:
            start_traffic(machine, nid, self.shape, until)
        if report.rogue:
            self.start_rogue(kill_every)
        next_kill = time.monotonic() + kill_every
        while time.monotonic() < until:
            time.sleep(POLL_S)  # supervision period, not synchronisation
            machine.poll()
            self.resume(until)
            self.events()
            if time.monotonic() >= next_kill:
                next_kill += kill_every
                victim = None if self.rng.random() < ADAPTER_SHARE else self.rng.choice(
                    list(machine.partitions))
                child = machine.adapter if victim is None else machine.partitions[victim]
                if child is not None and child.proc.poll() is None:  # alive: it will die of it
                    self.kills.killed(child.name)
                machine.kill(victim)
                report.kills += 1
                report.adapter_kills += victim is None
                console.print(f"  killed {'adapter' if victim is None else f'partition {victim}'}")
            self.incarnations.last.update(collect(machine))
            if report.rogue:  # without one, the drain's last look suffices (and costs less)
                self.look()
            if intervals.due():
                delivered = tally(books_by_destination(machine), self.poisoned())[1]
                intervals.tick(delivered, traffic_errors(self.incarnations.last))
        self.stop_rogue()  # the promises are checked on what the rogue left
        self.drain(until)

    def drain(self, until: float) -> None:
        machine, console = self.machine, self.console
        poisoned = self.poisoned()
        if poisoned:
            console.print(f"  rogue stopped: destination(s) {sorted(poisoned)} poisoned; the "
                          f"others are drained and checked")
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            machine.poll()
            self.resume(until)
            self.events()
            stats = collect(machine)
            self.incarnations.last.update(stats)
            committed, delivered = tally(books_by_destination(machine), poisoned)
            drained = all(s["sender_done"] for s in stats.values()) and committed == delivered
            locks = self.locks() if drained else None  # None: the adapter is restarting
            if locks is not None:
                break
            if time.monotonic() > deadline and drained:
                console.print("[red]drained, but the adapter did not answer for its locks")
                break
            if time.monotonic() > deadline:
                console.print(f"[red]drain timed out: {committed - delivered} not delivered")
                for line in pair_detail(machine, poisoned):
                    console.print(f"  {line}")
                if os.environ.get("XPMOVE_DEBUG"):  # every partition dumps its threads' stacks
                    for nid in machine.partitions:
                        machine.kill(nid, signal.SIGUSR1)
                for nid, st in stats.items():
                    console.print(f"  partition {nid}: errors {st.get('errors')}")
                break
            time.sleep(POLL_S)
        self.look(force=True)
        self.fill()
        self.report.lost = self.report.accepted - self.report.delivered
        self.report.locks_free = locks is not None and all(
            state == "free" for dst, state in locks.items() if int(dst) not in poisoned)

    def locks(self) -> dict[str, str] | None:
        """Every lock's state in the adapter's book; None if it does not answer (a restart
        may be backing off)."""
        try:
            return self.machine.adapter_stats(timeout=1.0)["locks"]
        except MachineError:
            return None


def soak(config: MachineConfig, duration: float, kill_every: float, size: int = 1024,
         seed: int | None = None, console: Console | None = None,
         registry: RunRegistry | None = None, batch: int = 1, rogue: bool = False,
         flows: tuple[str, ...] = SOAK_FLOWS) -> SoakReport:
    """`batch` > 1 sends batches as multiple-write runs (MOVE_RUN in fig11, GRANT_RUN in
    fig12, a run loaned under the lease in fig12-lease), so kills land inside runs as well as
    between single moves. `flows` as launch's: each partition sends by all of them. `rogue`: a
    hostile process attacks during the kills (see the module docstring). An interrupt raises
    SoakInterrupted carrying the report so far, after the rogue and the machine have stopped."""
    console = console or make_console()
    if seed is None:  # chosen here and reported, so a failing soak can be replayed
        seed = random.SystemRandom().randrange(1 << 31)
    config = dataclasses.replace(config, restart="always", restart_limit=1_000_000,
                                 adapter_restart_limit=1_000_000)  # the kills are ours
    machine = Machine(with_program(config, PROGRAM), registry=registry)
    run = _Soak(machine, console, random.Random(seed),
                {"size": size, "batch": batch, "flows": list(flows)}, rogue)
    run.report.seed = seed
    started = time.monotonic()
    try:
        try:
            run.run(duration, kill_every)
        except KeyboardInterrupt:
            with signals_deferred():  # a second Ctrl-C must not cost the report
                console.print("[yellow]interrupted: stopping the machine")
                run.stop_rogue()
                run.report.drained = False
                if machine.running:  # the books are in the segment (a start that was
                    # interrupted has stopped it already, its memory closed): read them
                    run.fill()
            raise SoakInterrupted(run.report, time.monotonic() - started) from None
    finally:
        with signals_deferred():
            run.stop_rogue()
            machine.stop()
    return run.report
