"""The `xpmove` command line: thin argument parsing over the hypervisor's functions."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from adapter.protocol import Flow
from hypervisor.config import ConfigError, load_config
from hypervisor.names import RunRegistry


def _available_cpus() -> frozenset[int] | None:
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return None


def _config(path: str | None):
    try:
        return load_config(path, _available_cpus())
    except ConfigError as exc:
        raise SystemExit(f"xpmove: bad config: {exc}") from None


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_launch(args: argparse.Namespace) -> int:
    from scripts.launch import TrafficOptions, launch

    flows = tuple(args.flows.split(","))
    for f in flows:
        try:
            Flow.parse(f)
        except ValueError as exc:
            raise SystemExit(f"xpmove: --flows: {exc}") from None
    packets = None if args.duration is not None and args.packets is None else (args.packets or 500)
    return launch(_config(args.config),
                  TrafficOptions(packets=packets, duration=args.duration, size=args.size,
                                 flows=flows))


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from scripts.loadgen.bench import BenchOptions, bench
    from scripts.loadgen.benchcore import parse_size

    try:
        sizes = None if args.sizes is None else tuple(parse_size(s) for s in
                                                      args.sizes.split(","))
    except ValueError as exc:
        raise SystemExit(f"xpmove: --sizes: {exc}") from None
    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    try:
        batches = tuple(dict.fromkeys(int(b) for b in args.batch.split(",") if b.strip()))
    except ValueError:
        raise SystemExit(f"xpmove: --batch {args.batch!r}: give a comma list of integers, "
                         f"e.g. 1,32") from None
    if not batches or min(batches) < 1:
        raise SystemExit(f"xpmove: --batch {args.batch!r}: every value must be >= 1")
    if args.latency_packets < 1:
        raise SystemExit(f"xpmove: --latency-packets {args.latency_packets} must be >= 1")
    if args.packets is not None and args.packets < 1:
        raise SystemExit(f"xpmove: --packets {args.packets} must be >= 1")
    if args.duration is not None and not args.duration > 0:
        raise SystemExit(f"xpmove: --duration {args.duration} must be > 0")
    options = BenchOptions(
        transports=transports, sizes=sizes,
        duration=args.duration if args.duration is not None else 2.0, packets=args.packets,
        topology=args.topology, pairs=args.pairs, batches=batches, json_path=args.json,
        plot_path=args.plot, markdown_path=args.markdown, latency=args.latency,
        latency_packets=args.latency_packets, single_stream=args.single_stream,
        scaling=args.scaling, scaling_config=args.scaling_config,
        command=" ".join(["xpmove", *sys.argv[1:]]))
    width = None if sys.stdout.isatty() else 140  # keep lines and tables whole in logs
    code, _ = bench(_config(args.config), options, Console(width=width))
    return code


def cmd_soak(args: argparse.Namespace) -> int:
    from rich.console import Console

    from scripts.soak import report_table, soak

    if args.duration <= 0 or args.kill_every <= 0:
        raise SystemExit("xpmove: --duration and --kill-every must be > 0")
    if args.batch < 1:
        raise SystemExit(f"xpmove: --batch {args.batch} must be >= 1")
    console = Console()
    try:
        report = soak(_config(args.config), args.duration, args.kill_every, args.size,
                      args.seed, console, batch=args.batch)
    except KeyboardInterrupt:
        return 130
    console.print(report_table(report))
    verdict = "[green]passed" if report.ok else "[red]FAILED"
    console.print(f"{verdict}: lost {report.lost}, duplicated {report.duplicated}, corrupt "
                  f"{report.corrupt}, every lock free: {report.locks_free}")
    return 0 if report.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    from scripts.run import run

    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        raise SystemExit(f"xpmove: --timeout {args.timeout}: give a number of seconds > 0")
    return run(_config(args.config), args.timeout)


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = RunRegistry().sweep()
    for name in removed:
        print(f"unlinked {name}")
    print(f"{len(removed)} name(s) of dead runs unlinked")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xpmove", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start the machine, run every partition's program until all "
                       "return, report how each ended")
    p.add_argument("--config", help="TOML machine config whose partitions name a `program`")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the programs (default: no limit)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("launch", help="start the machine and run all-to-all verified traffic")
    p.add_argument("--config", help="TOML machine config (default: built-in four partitions)")
    p.add_argument("--packets", type=int, default=None,
                   help="packets per sender, peer and flow (default 500)")
    p.add_argument("--duration", type=float, default=None, help="seconds of traffic")
    p.add_argument("--size", type=int, default=1024, help="packet size in bytes (default 1024)")
    p.add_argument("--flows", default="fig11,fig12", help="comma list of fig11, fig12")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("bench", help="Fig 14 load generator: S = dT/dC of the adapter's flows "
                       "against the prior art (tcp, virtual switch)")
    p.add_argument("--config", help="TOML machine config (default: built-in four partitions)")
    p.add_argument("--transports", default="fig11,fig12,vswitch,tcp",
                   help="comma list of fig11, fig12, vswitch, tcp (default: all four)")
    p.add_argument("--sizes", default=None,
                   help="comma list of packet sizes, e.g. 64,1KiB,64KiB (default 64, 1 KiB, "
                        "64 KiB, 1 MiB, each capped to the largest packet the rings accept)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of sending per run (default 2)")
    p.add_argument("--packets", type=int, default=None,
                   help="packets per sender and destination per run (instead of --duration)")
    p.add_argument("--topology", choices=("pairs", "all-to-all"), default="pairs",
                   help="pairs: 1->2, 3->4, ... (default); all-to-all: every ordered pair")
    p.add_argument("--pairs", default=None, help="explicit routes SRC:DST,... (overrides "
                   "--topology), e.g. 1:2,3:4")
    p.add_argument("--batch", default="1,128,16384",
                   help="comma list of packets per request (fig11/fig12: moves per adapter "
                        "request; tcp/vswitch: frames per sendall); every run is done per value; "
                        "1 = the patent's literal flow (default 1,128,16384)")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="lone 64 B packets, batch 1, paced, one route: one-way p50/p99 per "
                        "transport (default on)")
    p.add_argument("--latency-packets", type=int, default=200,
                   help="lone packets per transport in the latency phase (default 200)")
    p.add_argument("--single-stream", action=argparse.BooleanOptionalAction, default=True,
                   help="fig11/fig12 at 1 MiB on one route, for the memcpy target (default on)")
    p.add_argument("--scaling", action="store_true",
                   help="also fig11/fig12 at 1 KiB all-to-all with 2 and 16 partitions "
                        "(per-packet CPU target; off by default)")
    p.add_argument("--scaling-config", default=None, metavar="F",
                   help="config for --scaling (default configs/sixteen.toml; its first two "
                        "partitions make the small machine)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="draw Fig 14 (needs matplotlib: "
                   "pip install -e '.[plot]')")
    p.add_argument("--markdown", metavar="PATH", help="write the summary as Markdown tables")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("soak", help="all-to-all traffic while partitions and the adapter "
                       "are killed; fails unless nothing is lost or duplicated")
    p.add_argument("--config", help="TOML machine config (default: built-in four partitions)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    p.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    p.add_argument("--size", type=int, default=1024, help="packet size in bytes")
    p.add_argument("--seed", type=int, default=None, help="random seed for the victims")
    p.add_argument("--batch", type=int, default=1,
                   help="packets per request: > 1 sends multiple-write runs in both flows "
                        "(default 1, the literal flows)")
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("cleanup", help="unlink IPC names left by runs whose launcher died")
    p.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
