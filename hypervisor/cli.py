"""The `xpmove` command line: thin argument parsing over the hypervisor's functions."""

from __future__ import annotations

import argparse
import os
import signal
import sys

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
    from hypervisor.launch import TrafficOptions, launch

    flows = tuple(args.flows.split(","))
    for f in flows:
        if f not in ("fig11", "fig12"):
            raise SystemExit(f"xpmove: --flows: unknown flow {f!r} (use fig11, fig12)")
    if args.size < 24:
        raise SystemExit(f"xpmove: --size {args.size} is below the minimum packet of 24 bytes")
    packets = None if args.duration is not None and args.packets is None else (args.packets or 500)
    return launch(_config(args.config),
                  TrafficOptions(packets=packets, duration=args.duration, size=args.size,
                                 flows=flows))


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = RunRegistry().sweep()
    for name in removed:
        print(f"unlinked {name}")
    print(f"{len(removed)} name(s) of dead runs unlinked")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xpmove", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("launch", help="start the machine and run all-to-all verified traffic")
    p.add_argument("--config", help="TOML machine config (default: built-in four partitions)")
    p.add_argument("--packets", type=int, default=None,
                   help="packets per sender, peer and flow (default 500)")
    p.add_argument("--duration", type=float, default=None, help="seconds of traffic")
    p.add_argument("--size", type=int, default=1024, help="packet size in bytes (default 1024)")
    p.add_argument("--flows", default="fig11,fig12", help="comma list of fig11, fig12")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("cleanup", help="unlink IPC names left by runs whose launcher died")
    p.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
