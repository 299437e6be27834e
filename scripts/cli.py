"""The `xpmove` command line: thin argument parsing over the hypervisor's functions.

Argument values are checked by the parser's type functions (cli_types.py), so a bad value is
refused before anything starts. Problems found later, with the config or the run directory,
are one line `xpmove: ...` and exit 1; an interrupt (Ctrl-C, SIGTERM) exits 130.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from importlib import metadata

from hypervisor.config import ConfigError, MachineConfig, bench_config, load_config
from hypervisor.machine import MachineError
from hypervisor.names import RunDirError, RunRegistry
from scripts.cli_types import (
    BadOption,
    batches,
    check_packet_size,
    count,
    flows,
    output_path,
    plot_path,
    seconds,
    size,
    sizes,
    transports,
)
from scripts.cluster_start import attend_after_failing, one_host

DESCRIPTION = """\
xpmove runs a logically partitioned machine on one host: every partition is an
OS process, all share one POSIX shared-memory segment, and an adapter process
moves packets between the partitions' memory in two flows (fig11: the adapter
copies; fig12: it grants the lock and the sender's driver copies). Run your own
partition programs on it (run), verified all-to-all traffic (launch), traffic
while its processes are killed (soak), or a benchmark against TCP and other IPC
(bench)."""

EXAMPLES = {
    "run": "xpmove run --config examples/pingpong.toml --timeout 30",
    "launch": "xpmove launch --duration 5 --size 1KiB",
    "soak": "xpmove soak --duration 30 --kill-every 2 --seed 42",
    "bench": "xpmove bench --sizes 64,1KiB --transports fig11,tcp --json results.json",
    "cleanup": "xpmove cleanup",
    "status": "xpmove status --once",
}

EPILOG = "examples:\n" + "\n".join(f"  {example}" for example in EXAMPLES.values()) + """

Run names are recorded in $XPMOVE_RUN_DIR (default /tmp/xpmove-runs-<uid>).
`xpmove COMMAND --help` describes each command's options."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Epilogs as written; every option's default appended, except None and False, whose
    meaning each help text spells out."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)




def _available_cpus() -> frozenset[int] | None:
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return None


def _config(path: str | None) -> MachineConfig:
    try:
        config = load_config(path, _available_cpus())
    except ConfigError as exc:
        raise SystemExit(f"xpmove: bad config: {exc}") from None
    if not config.hosts:
        one_host()  # a failure from here on concerns no other MPI rank
    return config


def bench_machine(path: str | None) -> MachineConfig:
    """The bench's machine: `path`'s if given, else the built-in bench machine (32 MiB rings,
    as configs/bench.toml), not launch's default: see BENCH_BUILT_IN."""
    if path is not None:
        return _config(path)
    one_host()
    return bench_config(_available_cpus())


def _one_host_config(path: str | None, command: str) -> MachineConfig:
    """A config for a command that runs on one host: [[host]] tables are refused, naming
    the commands that run across hosts."""
    config = _config(path)
    if config.hosts:
        raise SystemExit(f"xpmove {command}: {path} places the partitions on "
                         f"{len(config.hosts)} hosts ([[host]] tables); across hosts run "
                         f"`mpiexec -n {len(config.hosts)} xpmove launch|run|bench --config "
                         f"{path}`")
    return config


def _traffic_config(path: str | None, command: str) -> MachineConfig:
    """A config for all-to-all traffic: it needs a peer for every partition."""
    config = _config(path)
    if len(config.partitions) < 2:
        raise SystemExit(f"xpmove {command}: all-to-all traffic needs at least two partitions; "
                         f"{path or 'the config'} has {len(config.partitions)}")
    return config


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnFirstSignal:
    """The command's handler for Ctrl-C and SIGTERM: the first is a KeyboardInterrupt (the
    command halts and reports), every later one is ignored. Handlers restored between the
    halt's steps left gaps where a second Ctrl-C replaced the report with a bare exit, or
    a traceback at exit. A Python-level no-op, not SIG_IGN: children started meanwhile keep
    the default."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt


def cmd_launch(args: argparse.Namespace) -> int:
    from scripts.launch import TrafficOptions, largest_packet, launch

    packets = args.packets
    if packets is None and args.duration is None:
        packets = DEFAULT_PACKETS
    config = _traffic_config(args.config, "launch")
    check_packet_size(args.size, largest_packet(config))  # one host or several
    options = TrafficOptions(packets=packets, duration=args.duration, size=args.size,
                             flows=args.flows)
    if config.hosts:
        from scripts.cluster_launch import launch_cluster

        return launch_cluster(config, options)
    return launch(config, options)


def cmd_bench(args: argparse.Namespace) -> int:

    config = bench_machine(args.config)
    if config.hosts:
        return _cluster_bench(config, args)
    from scripts.loadgen.bench import bench
    from scripts.loadgen.options import DEFAULT_TRANSPORTS, BenchOptions

    options = BenchOptions(
        transports=args.transports or DEFAULT_TRANSPORTS, sizes=args.sizes,
        duration=args.duration if args.duration is not None else 2.0, packets=args.packets,
        topology=args.topology, pairs=args.pairs, placement=args.placement,
        batches=args.batch, json_path=args.json,
        plot_path=args.plot, markdown_path=args.markdown, latency=args.latency,
        latency_packets=args.latency_packets, single_stream=args.single_stream,
        scaling=args.scaling, scaling_config=args.scaling_config,
        config=args.config or BENCH_MACHINE, command=" ".join(["xpmove", *sys.argv[1:]]))
    from scripts.console import make_console

    code, _ = bench(config, options, make_console())
    return code


def _cluster_bench(config: MachineConfig, args: argparse.Namespace) -> int:
    """`mpiexec -n H xpmove bench --config F`: fig11, fig12 and tcp across hosts and on one
    host (scripts/cluster_bench.py); the options that make sense there."""

    from scripts.cluster_bench import KNOWN, TRANSPORTS, ClusterBenchOptions, cluster_bench

    transports = tuple(args.transports or TRANSPORTS)
    unknown = [t for t in transports if t not in KNOWN]
    if unknown:
        raise SystemExit(f"xpmove bench: across hosts the transports are {', '.join(KNOWN)}"
                         f"; not {', '.join(unknown)}")
    options = ClusterBenchOptions(
        transports=transports, sizes=args.sizes, batches=args.batch,
        duration=args.duration if args.duration is not None else 2.0, json_path=args.json)
    from scripts.console import make_console

    return cluster_bench(config, options, make_console())


def cmd_soak(args: argparse.Namespace) -> int:

    from scripts.launch import largest_packet, signals_deferred
    from scripts.soak import SoakInterrupted, soak
    from scripts.soak_report import broken_promises, poison_lines, report_table

    _one_host_config(args.config, "soak")
    config = _traffic_config(args.config, "soak")
    limit = largest_packet(config)
    check_packet_size(args.size, limit)
    if args.kill_every >= args.duration:
        raise BadOption(f"--kill-every {args.kill_every:g} must be shorter than --duration "
                        f"{args.duration:g}: the soak would kill nothing")
    from scripts.console import make_console

    console = make_console()
    try:
        report = soak(config, args.duration, args.kill_every, args.size, args.seed, console,
                      batch=args.batch, rogue=args.rogue, flows=args.flows)
    except SoakInterrupted as stop:
        report = stop.report
        with signals_deferred():  # another Ctrl-C must not cut the report short
            console.print(report_table(report))
            for line in poison_lines(report):
                console.print(line, highlight=False, soft_wrap=True)
            console.print(f"[yellow]interrupted[/] after {stop.elapsed:.1f} s of "
                          f"{args.duration:g}: the summary covers the traffic until the stop; "
                          f"{report.accepted - report.delivered:,} accepted packets were in "
                          f"flight (not drained, so neither delivered nor counted as lost); "
                          f"lost and 'locks free' were not determined")
        return 130
    except KeyboardInterrupt:
        return 130
    console.print(report_table(report))
    for line in poison_lines(report):
        console.print(line, highlight=False, soft_wrap=True)
    broken = broken_promises(report)
    verdict = "[green]passed" if not broken else "[red]FAILED"
    poisoned = (f" (destinations not poisoned; poisoned: "
                f"{[p.network_id for p in report.poisoned]})" if report.rogue else "")
    console.print(f"{verdict}{poisoned}: lost {report.lost}, duplicated {report.duplicated}, "
                  f"corrupt {report.corrupt}, every lock free: {report.locks_free}")
    for promise in broken:
        console.print(f"  broken: {promise}", highlight=False, soft_wrap=True)
    return 0 if not broken else 1


def cmd_run(args: argparse.Namespace) -> int:
    from scripts.run import run

    config = _config(args.config)
    if config.hosts:
        from scripts.cluster_run import run_cluster

        return run_cluster(config, args.timeout)
    return run(config, args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    from scripts.status import status

    return status(args.run, once=args.once, as_json=args.json, interval=args.interval)


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = RunRegistry().sweep()
    for name in removed:
        print(f"unlinked {name}")
    print(f"{len(removed)} name(s) of dead runs unlinked")
    return 0


DEFAULT_PACKETS = 500
BUILT_IN = "(default: the built-in four partitions, as configs/default.toml)"
BENCH_MACHINE = "built-in bench machine (as configs/bench.toml: 32 MiB rings)"
BENCH_BUILT_IN = ("(default: the built-in bench machine, as configs/bench.toml: the default's "
                  "four partitions with 32 MiB receive rings and a 16 MiB sender area. With "
                  "the default's 4 MiB rings one request carries at most 31 packets of 64 KiB "
                  "or one of 1 MiB; here 255 and 15. The sender area is the same for every "
                  "transport; the peers keep their own buffers)")


def version() -> str:
    try:
        return metadata.version("xpmove")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xpmove", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=textwrap.fill(summary, 78),
                              epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=HelpFormatter)

    p = command("run", "start the machine, run every partition's program until all return, "
                "report how each ended")
    p.add_argument("--config", metavar="F", help="TOML machine config whose partitions name a "
                   "`program` (default: the built-in config, whose partitions run no program)")
    p.add_argument("--timeout", type=seconds, default=None, metavar="S",
                   help="seconds to wait for the programs (default: no limit)")
    p.set_defaults(func=cmd_run)

    p = command("launch", "start the machine, run all-to-all verified traffic, report, stop")
    p.add_argument("--config", metavar="F", help=f"TOML machine config {BUILT_IN}")
    p.add_argument("--packets", type=count, default=None, metavar="N",
                   help=f"packets per sender, peer and flow (default: {DEFAULT_PACKETS}, or no "
                        f"limit with --duration)")
    p.add_argument("--duration", type=seconds, default=None, metavar="S",
                   help="seconds of traffic (default: none, the packet count ends it; with "
                        "--packets too, whichever comes first)")
    p.add_argument("--size", type=size, default="1KiB", metavar="B",
                   help="packet size: bytes or with a KiB/MiB suffix")
    p.add_argument("--flows", type=flows, default="fig11,fig12",
                   help="comma list of fig11, fig12 and fig12-lease (a lease on each destination: "
                        "one lease.send a packet, a run loaned under it a batch)")
    p.set_defaults(func=cmd_launch)

    p = command("bench", "Fig 14 load generator: S = dT/dC of the adapter's flows against the "
                "prior art (tcp, virtual switch)")
    p.add_argument("--config", metavar="F", help=f"TOML machine config {BENCH_BUILT_IN}")
    p.add_argument("--transports", type=transports, default=None,
                   help="comma list of fig11, fig12 (batch 1: per-packet calls, queued), "
                        "fig12-loan (Fig 12 with no move: each batch filled in the "
                        "destination's ring, a loan, then committed), "
                        "fig12-lease (a standing grant: each packet committed by the "
                        "sender's driver, no request), "
                        "fig11-sync, fig12-sync (batch 1 only: one synchronous request per "
                        "packet, the patent's literal flow), vswitch, tcp and the peers zmq, "
                        "pipe, iceoryx2 (default: all of them whose package is installed: "
                        "pip install -e '.[peers]')"),
    p.add_argument("--sizes", type=sizes, default=None,
                   help="comma list of packet sizes, e.g. 64,1KiB,64KiB (default: 64, 1 KiB, "
                        "64 KiB, 1 MiB, each capped to the largest packet the rings accept)")
    p.add_argument("--duration", type=seconds, default=None, metavar="S",
                   help="seconds of sending per run (default: 2)")
    p.add_argument("--packets", type=count, default=None, metavar="N",
                   help="packets per sender and destination per run, instead of --duration "
                        "(default: none, --duration ends each run)")
    p.add_argument("--topology", choices=("pairs", "all-to-all"), default="pairs",
                   help="pairs: 1->2, 3->4, ...; all-to-all: every ordered pair")
    p.add_argument("--pairs", default=None, help="explicit routes SRC:DST,..., e.g. 1:2,3:4 "
                   "(default: the routes of --topology)")
    p.add_argument("--placement", choices=("pairs", "os"), default="pairs",
                   help="pairs: each route's sender and receiver pinned to one CPU, the routes "
                        "spread over the usable CPUs (only where routes share no partition and "
                        "the config pins none of theirs; the split floor's best placement), "
                        "each receiver's ring with a 2 MiB receive window; os: no pinning, "
                        "the config's windows (default: pairs)")
    p.add_argument("--batch", type=batches, default="1,128,16384",
                   help="comma list of packets per request (fig11/fig12: moves per adapter "
                        "request; tcp/vswitch: frames per sendall); every run is done per value; "
                        "1 = the patent's literal flow")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="lone 64 B packets, batch 1, paced, one route: one-way p50/p99 per "
                        "transport")
    p.add_argument("--latency-packets", type=count, default=200, metavar="N",
                   help="lone packets per transport in the latency phase")
    p.add_argument("--single-stream", action=argparse.BooleanOptionalAction, default=True,
                   help="fig11/fig12 at 1 MiB on one route (bytes/s against memcpy); only "
                        "when --sizes has 1MiB and there is more than one route")
    p.add_argument("--scaling", action="store_true",
                   help="also fig11/fig12 at 1 KiB all-to-all with 2 and 16 partitions "
                        "(per-packet CPU as the machine grows) (default: off)")
    p.add_argument("--scaling-config", default=None, metavar="F",
                   help="config for --scaling (default: configs/sixteen.toml; its first two "
                        "partitions make the small machine)")
    p.add_argument("--json", type=output_path, metavar="PATH",
                   help="write the results as JSON (default: not written)")
    p.add_argument("--plot", type=plot_path, metavar="PATH.png", help="draw Fig 14 (needs "
                   "matplotlib: pip install -e '.[plot]') (default: not drawn)")
    p.add_argument("--markdown", type=output_path, metavar="PATH",
                   help="write the summary as Markdown tables (default: not written)")
    p.set_defaults(func=cmd_bench)

    p = command("soak", "all-to-all traffic while partitions and the adapter are killed; "
                "fails unless nothing is lost or duplicated. Every killed process is "
                "restarted, whatever the config's restart policy says (restart = always, no "
                "limit); a death the soak did not cause fails it")
    p.add_argument("--config", metavar="F", help=f"TOML machine config {BUILT_IN}")
    p.add_argument("--duration", type=seconds, default=60.0, metavar="S",
                   help="seconds of traffic")
    p.add_argument("--kill-every", type=seconds, default=5.0, metavar="S",
                   help="seconds between kills")
    p.add_argument("--size", type=size, default="1KiB", metavar="B",
                   help="packet size: bytes or with a KiB/MiB suffix")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="random seed for the victims and the rogue (default: a different one "
                        "each run)")
    p.add_argument("--batch", type=count, default=1, metavar="N",
                   help="packets per request: > 1 sends multiple-write runs in every flow "
                        "(1: the literal flows)")
    p.add_argument("--flows", type=flows, default="fig11,fig12,fig12-lease",
                   help="comma list of fig11, fig12 and fig12-lease (leases: recalled "
                        "constantly here, since every partition sends to every other)")
    p.add_argument("--rogue", action="store_true",
                   help="a hostile process of the same user attacks during the kills: posts "
                        "every lock and doorbell at random (stray posts, absorbed) and writes "
                        "garbage words into the ring control block and pair words of a quarter "
                        "of the destinations (at least one), which are then POISONED: named, "
                        "with what was written where and what senders and receivers saw; the "
                        "promises are checked for the others (default: no rogue)")
    p.set_defaults(func=cmd_soak)

    p = command("status", "watch a running machine from another terminal: every partition "
                "and the adapter's counters, refreshed until Ctrl-C; lists the runs when "
                "several are running")
    p.add_argument("run", nargs="?", default=None, metavar="RUN",
                   help="run prefix such as xpm-3f9a1c2b, or its unique leading part "
                        "(default: the only running machine)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true",
                   help="one JSON document per snapshot, one per line (for scripts)")
    p.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                   help="seconds between refreshes")
    p.set_defaults(func=cmd_status)

    p = command("cleanup", "unlink IPC names left by runs whose launcher died: every run "
                "records its names in the run registry, $XPMOVE_RUN_DIR (default "
                "/tmp/xpmove-runs-<uid>), before it creates them; a run whose launcher is gone "
                "is swept (every start sweeps them too); runs still alive are left alone")
    p.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command's exit code; a host of a cluster run that fails before meeting the others
    still meets them, so that they end too (cluster_start.py)."""
    failed = True
    try:
        code = _main(argv)
        failed = code != 0
        return code
    except SystemExit as exc:
        failed = exc.code not in (None, 0)
        if isinstance(exc.code, str):  # its line first: the other hosts point at it
            print(exc.code, file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        raise
    finally:
        if failed:
            attend_after_failing(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    handler = StopOnFirstSignal()
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        RunRegistry()  # a run directory that cannot be used is reported before anything starts
        return args.func(args)
    except (RunDirError, MachineError) as exc:  # e.g. a machine that cannot start: one line
        print(f"xpmove: {exc}", file=sys.stderr)
        return 1
    except BadOption as exc:
        print(f"xpmove {args.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        if not handler.stopping:  # a stopping command ignores them until it exits
            for sig, was in previous.items():
                signal.signal(sig, was)


if __name__ == "__main__":
    sys.exit(main())
