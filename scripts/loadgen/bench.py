"""`xpmove bench`: the load generator of Fig 14, the invention side by side with the prior art.

One machine, one run per (packet size, transport), sizes in the outer loop so the transports
of one size are measured back to back under the same conditions:

* ``fig11`` / ``fig12``: partitions move packets through the cross-partition adapter (at batch
  1, one per-packet `port.send_from` call each, queued: the port coalesces them into runs).
* ``fig12-loan``: Fig 12 with no move, the packets are filled in the destination's ring (a
  loan, `port.loan_run`), then committed.
* ``fig12-lease``: under a standing grant (`port.lease`), no request at all: one `lease.send`
  per packet at batch 1, each bigger batch a run loaned under the lease and filled in place.
* ``fig11-sync`` / ``fig12-sync``: the patent's literal flow, one synchronous request per packet
  (`sync=True`); run at batch 1 only (batched, they are fig11 / fig12).
* ``vswitch``: the prior art of Fig 7B, TCP on loopback through a virtual switch process that
  the bench starts next to the machine (scripts/loadgen/vswitch.py).
* ``tcp``: the prior art without the switch, partition to partition over TCP on loopback.
* ``zmq``, ``pipe``, ``iceoryx2``: what a Python user would pick instead (the ``peers`` extra;
  scripts/workload/peers.py, iceoryx2_peer.py): pyzmq PUSH/PULL over ipc://, multiprocessing
  Connections over AF_UNIX, iceoryx2 publish-subscribe with zero-copy loans. A peer whose
  package is missing is skipped with a note.

The same partition processes, running the built-in workload program (scripts/workload/), send
the same packets (pattern.py) and verify every one with the same check; transports.py and the
modules it names hold all per-transport code.

While a run goes on the bench samples, every SAMPLE_S, T (packets delivered and verified, asked
of the receivers) and C (user + system CPU seconds, psutil, of every process on the path: all
partitions, the adapter for the fig11*/fig12* ones, the switch for vswitch, and this process, whose
polling is thus charged to every transport alike). S = dT/dC is fitted by
scripts.loadgen.benchcore.fit_s on the steady-state samples. Exit status 1 if any packet was
lost or corrupt (or a run failed), 130 when interrupted (the runs finished so far are reported
and written, without a floor: only the clean-up follows a Ctrl-C). This file is the command:
its phases and their order. One run is runs.py (the virtual switch child vswitch_process.py);
the names and options options.py; beside the runs, measure.py (the CPU meter, memcpy, the
floor), report.py (the tables, the Markdown summary) and targets.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from adapter.ring import max_payload
from hypervisor.config import ConfigError, MachineConfig, load_config, with_program
from hypervisor.layout import SegmentLayout
from hypervisor.machine import Machine, MachineError
from hypervisor.names import RunRegistry
from partitions.blocks import SMALL_BLOCK
from scripts.cli_types import BadOption
from scripts.launch import signals_deferred
from scripts.loadgen import benchcore, targets
from scripts.loadgen.benchcore import (
    BenchError,
    human_size,
    run_label,
)
from scripts.loadgen.floor import FLOOR_ROUNDS, FLOOR_SECONDS, measured_floors
from scripts.loadgen.measure import host_info
from scripts.loadgen.options import (
    ADAPTER_TRANSPORTS,
    BATCHING,
    DEFAULT_SIZES,
    SAMPLE_S,
    SIXTEEN,
    SYNC_FLOWS,
    TRANSPORTS,
    BenchOptions,
    latency_shares,
)
from scripts.loadgen.placement import place_routes, placement_note
from scripts.loadgen.plot import plot_fig14, require_matplotlib
from scripts.loadgen.report import (
    detail_table,
    floor_table,
    latency_table,
    markdown_summary,
    relative_to_tcp,
    scaling_table,
    summary_tables,
    targets_table,
)
from scripts.loadgen.runs import Bench, RunPlan
from scripts.loadgen.vswitch_process import VSwitchProcess
from scripts.workload import peers as peer_transports
from scripts.workload.frames import FRAME
from scripts.workload.iceoryx2_peer import Iceoryx2Home
from scripts.workload.pattern import MIN_PACKET
from scripts.workload.program import PROGRAM
from scripts.workload.receive_check import TIME_EVERY


@dataclass
class Outcome:
    """How the bench's phases ended: interrupted (Ctrl-C) or failed (a run could not be
    carried out); either stops the phases after it."""

    interrupted: bool = False
    failed: bool = False

    @contextmanager
    def phase(self, console: Console, on_interrupt: str, on_failure: str) -> Iterator[None]:
        """Run a phase; Ctrl-C or a BenchError/MachineError ends it with a line saying so."""
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
            console.print(f"[yellow]interrupted: {on_interrupt}")
        except (BenchError, MachineError) as exc:
            self.failed = True
            console.print(f"[red]{on_failure}: {exc}")


# -- the command ------------------------------------------------------------------------------


def size_limit(layout: SegmentLayout, transports: tuple[str, ...]) -> tuple[int, str]:
    """The largest packet every partition can send (sender area) and receive (its ring)."""
    limit, why = None, ""
    for p in layout.partitions:
        for cap, what in ((p.receive_offset - FRAME.size, f"sender area of {p.name}"),
                          (max_payload(p.receive_size) if any(
                              t in ADAPTER_TRANSPORTS for t in transports) else None,
                           f"{human_size(p.receive_size)} receive ring of {p.name}")):
            if cap is not None and (limit is None or cap < limit):
                limit, why = cap, what
    assert limit is not None
    return limit, why


def choose_sizes(options: BenchOptions, layout: SegmentLayout, console: Console
                 ) -> tuple[int, ...]:
    """The run's packet sizes: given ones are checked, default ones capped to the limit."""
    limit, why = size_limit(layout, options.transports)
    if options.sizes is None:
        sizes = tuple(dict.fromkeys(min(s, limit) for s in DEFAULT_SIZES))
        for s in DEFAULT_SIZES:
            if s > limit:
                console.print(f"note: default size {human_size(s)} capped to {limit:,} B, the "
                              f"largest packet the {why} accepts")
        return sizes
    for size in options.sizes:
        if size < MIN_PACKET:
            raise BadOption(f"--sizes: {size} is below the minimum packet of {MIN_PACKET} "
                            f"bytes")
        if size > limit:
            raise BadOption(f"--sizes: {size:,} B is larger than the {why} accepts "
                            f"({limit:,} B)")
    return options.sizes


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                    TextColumn("{task.completed:,.1f}/{task.total:,.1f}"), TimeElapsedColumn(),
                    console=console, transient=True, refresh_per_second=4)


def scaling_configs(options: BenchOptions) -> tuple[MachineConfig, MachineConfig]:
    """The scaling phase's machines: the first two partitions of the sixteen-partition config,
    and all of them (checked before anything starts)."""
    path = options.scaling_config or str(SIXTEEN)
    try:
        big = load_config(path)
    except ConfigError as exc:
        raise SystemExit(f"xpmove bench: --scaling: {exc}") from None
    if len(big.partitions) < 3:
        raise SystemExit(f"xpmove bench: --scaling: {path} has {len(big.partitions)} "
                         f"partitions; it needs more than 2")
    return replace(big, partitions=big.partitions[:2]), big


def scaling_phase(options: BenchOptions, configs: tuple[MachineConfig, ...], console: Console,
                  registry: RunRegistry | None) -> list[dict]:
    """fig11/fig12/fig12-loan at 1 KiB all-to-all on each machine in turn (never two at once),
    per batch."""
    flows = [t for t in options.transports if t in BATCHING] or list(BATCHING)
    out: list[dict] = []
    for cfg in configs:
        machine = Machine(with_program(cfg, PROGRAM), registry=registry)
        try:
            machine.start()
            ids = [p.network_id for p in cfg.partitions]
            route_list = benchcore.routes(ids, "all-to-all")
            console.print(f"scaling: {len(ids)} partitions up, {len(route_list)} routes")
            with _progress(console) as progress:
                b = Bench(machine, options, console, None, progress)
                for batch in options.batches:
                    for t in flows:
                        r = b.run(RunPlan(t, benchcore.SCALING_SIZE, route_list, batch,
                                          "scaling"))
                        r["partitions"] = len(ids)
                        out.append(r)
        finally:
            with signals_deferred():
                machine.stop()
    return out


def run_matrix(sizes: list[int] | tuple[int, ...], options: BenchOptions
               ) -> list[tuple[int, int, str]]:
    """(size, batch, transport) of every run, in order; fig11-sync / fig12-sync at batch 1
    only (batched, they would be fig11 / fig12)."""
    return [(size, batch, t) for size in sizes for batch in options.batches
            for t in options.transports if batch == 1 or t not in SYNC_FLOWS]


def bench(config: MachineConfig, options: BenchOptions, console: Console | None = None,
          registry: RunRegistry | None = None) -> tuple[int, dict]:
    """Run every (size, batch, transport), then the single-stream, lone-packet latency and
    (with options.scaling) scaling phases; judge issue 14's targets (targets.py).
    Return (exit status, results in the --json shape). Missed targets do not change the
    exit status: they are reported."""
    console = console or Console()
    for t in options.transports:
        if t not in TRANSPORTS:
            raise SystemExit(f"xpmove bench: --transports: unknown {t!r} (use {TRANSPORTS})")
    usable, notes = benchcore.installed_transports(
        options.transports, peer_transports.PEER_MODULES, peer_transports.installed)
    for note in notes:
        console.print(note, highlight=False, markup=False)
    if not usable:
        raise SystemExit("xpmove bench: --transports: none of them is installed")
    options = replace(options, transports=usable)
    if not options.batches or any(b < 1 for b in options.batches):
        raise SystemExit(f"xpmove bench: --batch {options.batches}: give values >= 1")
    if options.plot_path:
        require_matplotlib()
    scaling_cfgs = scaling_configs(options) if options.scaling else None
    ids = [p.network_id for p in config.partitions]
    try:
        route_list = (benchcore.parse_routes(options.pairs, ids) if options.pairs
                      else benchcore.routes(ids, options.topology))
    except ValueError as exc:
        raise BadOption(str(exc)) from None  # a usage error: exit 2, as the parser's
    placed: dict[int, int] = {}
    if options.placement == "pairs":
        config, placed = place_routes(config, route_list, sorted(os.sched_getaffinity(0)))
    machine = Machine(with_program(config, PROGRAM), registry=registry)
    sizes = choose_sizes(options, machine.layout, console)
    switch = VSwitchProcess() if "vswitch" in options.transports else None
    results: dict = {"runs": [], "host": {}}
    adapter_flows = [t for t in options.transports if t in BATCHING]
    big = [s for s in sizes if benchcore.matches_size(s, benchcore.MiB_)]
    stream_plans = [RunPlan(t, big[0], route_list[:1], batch, "single-stream")
                    for batch in options.batches for t in adapter_flows] \
        if options.single_stream and big and len(route_list) > 1 else []
    if options.single_stream and not stream_plans and adapter_flows:
        console.print("note: no single-stream runs (they need 1MiB in --sizes and more than "
                      "one route)")
    outcome = Outcome()
    peer_home: Iceoryx2Home | None = None
    try:
        with outcome.phase(console, "stopping the machine", "bench failed"):
            if peer_transports.ICEORYX2 in options.transports:
                peer_home = Iceoryx2Home.create()
            machine.start()
            if switch is not None:
                switch.start()
            results["host"] = host_info(machine)
            rings = "/".join(human_size(r) for r in sorted(
                {p.receive_size for p in config.partitions}))
            console.print(f"machine up: run {machine.prefix}, {len(machine.partitions)} "
                          f"partitions, {rings} rings; "
                          f"routes {', '.join(f'{s}->{d}' for s, d in route_list)}"
                          f"{placement_note(route_list, placed)}; "
                          f"batch {','.join(map(str, options.batches))}; memcpy "
                          f"{results['host']['memcpy_GBps']:.1f} GB/s in cache, "
                          f"{results['host']['memcpy_dram_GBps']:.1f} GB/s "
                          f"over {results['host']['memcpy_dram_working_set_bytes'] >> 20} MiB")
            b = Bench(machine, options, console, switch, peer_home=peer_home)
            plans = [RunPlan(t, size, route_list, batch)
                     for size, batch, t in run_matrix(sizes, options)]
            with _progress(console) as progress:
                b.progress = progress
                overall = progress.add_task("runs", total=len(plans) + len(stream_plans))
                for plan in plans:
                    results["runs"].append(b.run(plan))
                    progress.advance(overall)
                if stream_plans:
                    results["single_stream"] = []
                for plan in stream_plans:
                    results["single_stream"].append(b.run(plan))
                    progress.advance(overall)
                if options.latency:
                    lone = progress.add_task("lone 64 B packets", total=len(options.transports)
                                             * len(latency_shares(options.latency_packets)))
                    results["latency"] = b.lone_latencies(
                        options.transports, route_list[0], lambda: progress.advance(lone))
    finally:
        # a second Ctrl-C must not cut the clean-up short; each step runs whatever the one
        # before it raised (an ExitStack runs its callbacks last in, first out)
        with signals_deferred(), ExitStack() as cleanup:
            if peer_home is not None:  # last: its nodes are gone with the partitions
                cleanup.callback(peer_home.remove)
            cleanup.callback(machine.stop)
            if switch is not None:
                results["vswitch"] = switch.stop()
    if scaling_cfgs is not None and not outcome.interrupted and not outcome.failed:
        with outcome.phase(console, "scaling phase stopped", "scaling phase failed"):
            results["scaling"] = scaling_phase(options, scaling_cfgs, console, registry)
    runs = results["runs"]
    if runs and not outcome.interrupted:  # interrupted: the stop is not held up by more
        with outcome.phase(console, "the floor is not measured", "the floor failed"):
            results["floor"] = measured_floors(tuple(sorted({r["packet_size"] for r in runs})),
                                               options.batches)
            for r in runs:
                floor = results["floor"][str(r["packet_size"])]["S"]
                r["S_vs_floor"] = r["S"] / floor if floor and r["S"] else None
    results["interrupted"] = outcome.interrupted
    relative_to_tcp(runs)
    results["method"] = {
        "T": "packets delivered and verified (Pattern.check) at the receivers",
        "C": "user+system CPU seconds (psutil) of all partitions, the adapter (every fig11* "
             "and fig12* transport), the virtual switch (vswitch) and the bench process, "
             "since the run started",
        "S": "least-squares slope of T over C on the samples taken while every sender was "
             f"still sending, minus the first {options.warmup:.0%} and last {options.tail:.0%} "
             "of them (all samples if fewer than 3 remain)",
        "sample_interval_s": SAMPLE_S,
        "warmup_fraction": options.warmup,
        "tail_fraction": options.tail,
        "S_vs_tcp": "S over the tcp run of the same size and batch",
        "S_transport": "S fitted on C minus the fill and check CPU of every participant "
                       "(time.thread_time around Pattern fill and check, per thread: around "
                       f"every batch or block of {SMALL_BLOCK} packets or more, and every "
                       f"{TIME_EVERY}th smaller one counted {TIME_EVERY} times): the "
                       "transport's own cost per packet",
        "floor": "per size: S of fill + check alone in a process started as the partitions are "
                 "(their environment: glibc's `rep movsb` off), no transport (one "
                 "thread fills a batch of tcp-framed packets and checks it, in a loop, thread "
                 f"CPU time, {FLOOR_SECONDS:g} s per batch), at the best of the run's batches, "
                 f"each measured {FLOOR_ROUNDS} times; "
                 "its `split`: the same loop at that batch with the check in a second process "
                 "sharing the batch's memory, handed over through a pipe (not counted), both "
                 "pinned to one core and then to two, each placement measured "
                 f"{FLOOR_ROUNDS} times, the best kept (`cores`): what any two-process "
                 "transport could reach; `alone` is the one-thread loop as measured, and `S` "
                 "the better of it and the split (a split above the loop alone means the loop "
                 "was measured in a slow spell: the split is the same loop plus a hand-over)",
        "targets": "issue 14's targets, each with both operands (left: the adapter's side, "
                   "right: what it is held against), ratio = left / right, verdict MET, MISSED "
                   "or not measured (with why); " + targets.CAPTION
                   + "; latency = lone 64 B packets, batch 1, paced",
    }
    results["options"] = {"transports": list(options.transports), "sizes": list(sizes),
                          "duration": options.duration, "packets": options.packets,
                          "topology": options.pairs or options.topology,
                          "placement": {str(k): v for k, v in placed.items()},
                          "receive_windows": {str(p.network_id): p.receive_window
                                              for p in config.partitions},
                          "batches": list(options.batches), "latency": options.latency,
                          "latency_packets": options.latency_packets,
                          "latency_interval_s": options.latency_interval,
                          "single_stream": options.single_stream, "scaling": options.scaling,
                          "config": options.config, "command": options.command}
    host = results["host"]
    judged = targets.evaluate(runs, results.get("floor"), results.get("latency"))
    results["targets"] = [t.as_json() for t in judged]
    if runs:
        for table in summary_tables(runs, host.get("memcpy_dram_GBps", 0.0)):
            console.print(table)
        if results.get("floor"):
            console.print(floor_table(results["floor"]))
    if results.get("single_stream"):
        console.print(detail_table("Single stream (one route)",
                                   results["single_stream"], host.get("memcpy_dram_GBps", 0.0)))
    if results.get("latency"):
        console.print(latency_table(results["latency"]))
    if results.get("scaling"):
        console.print(scaling_table(results["scaling"]))
    console.print(targets_table(results["targets"]))
    unwritten = write_outputs(console, options, results, runs)
    checked = [*runs, *results.get("single_stream", []), *results.get("scaling", []),
               *results.get("latency", {}).values()]
    bad = [r for r in checked if r["lost"] or r["corrupt"]]
    for r in bad:
        console.print(f"[red]{run_label(r)} {human_size(r['packet_size'])}: {r['lost']} lost, "
                      f"{r['corrupt']} corrupt; send errors {r.get('send_errors', '-')}")
    if outcome.interrupted:
        return 130, results
    complete = (len(runs) == len(run_matrix(sizes, options))
                and len(results.get("single_stream", [])) == len(stream_plans)
                and (not options.latency or len(results.get("latency", {}))
                     == len(options.transports))
                and (not options.scaling or bool(results.get("scaling"))))
    clean = not bad and not outcome.failed and complete
    console.print("[red]NOT clean" if not clean else
                  "[green]all packets delivered and verified" if not unwritten else
                  f"[red]all packets delivered and verified, but {', '.join(unwritten)} not "
                  f"written")
    return (0 if clean and not unwritten else 1), results


def write_outputs(console: Console, options: BenchOptions, results: dict,
                  runs: list[dict]) -> list[str]:
    """The files asked for (--json, --markdown, --plot); each one that could not be written
    (a full disk, a read-only file system: the start-up check cannot see those) is named in
    one line, and returned, after the tables are already on the screen."""
    writers = [
        (options.json_path, "results written to",
         lambda path: _write_text(path, json.dumps(results, indent=1))),
        (options.markdown_path, "Markdown tables written to",
         lambda path: _write_text(path, markdown_summary(results))),
        (options.plot_path if runs else None, "Fig 14 drawn to",
         lambda path: plot_fig14(runs, path, floor=results.get("floor"))),
    ]
    failed = []
    for path, done, write in writers:
        if not path:
            continue
        try:
            write(path)
            console.print(f"{done} {path}")
        except OSError as exc:
            failed.append(path)
            console.print(f"[red]xpmove bench: {path} not written: {exc}")
    return failed


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
