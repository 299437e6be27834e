"""The floor alone and the floor beside itself: what a second route costs a loop that has no
transport at all (benchmarks/README.md, "One route or two, and the floor with every CPU
busy").

The bench measures its floor (scripts/loadgen/floor.py: fill + check in one thread, no
transport) with the rest of the machine idle, and its runs with one route per CPU, all at
once. This measures the floor's loop the bench's way (`floor_s` at each of the bench's
batches, best of the floor's rounds, in a process started in the partitions' environment)
in one process pinned to the first CPU, then in one process per usable CPU at the same time,
and again, alternating, and prints each size's S alone, S of each loop at once, and their
ratio. (The split floor, which the bench measures beside it, is left out.)

Usage, from the repository root:

    .venv/bin/python benchmarks/loaded_floor.py [--sizes 65536,1048576] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypervisor.children import child_environment  # noqa: E402
from scripts.loadgen.floor import FLOOR_ROUNDS, FLOOR_SECONDS, floor_s  # noqa: E402
from scripts.loadgen.options import DEFAULT_BATCHES  # noqa: E402


def best_floors(sizes: list[int], seconds: float, rounds: int) -> dict[str, float]:
    """{size: the floor's S}: the best of `rounds` measurements at each of the bench's
    batches, as the bench's floor (floor.py `floors`) without its split."""
    return {str(size): max(floor_s(size, batch, seconds) for batch in DEFAULT_BATCHES
                           for _ in range(rounds))
            for size in sizes}


def floors_at_once(cpus: list[int], sizes: list[int], seconds: float, rounds: int
                   ) -> list[dict[str, float]]:
    """One floor process per CPU of `cpus`, pinned there, all started together: each one's
    `best_floors`. If one fails, the others are stopped and the failure is the exit."""
    argv = [sys.executable, __file__, "--child", "--sizes", ",".join(map(str, sizes)),
            "--seconds", str(seconds), "--rounds", str(rounds)]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              env=child_environment(os.environ), text=True,
                              preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}))
             for cpu in cpus]
    try:
        out = []
        for proc in procs:
            stdout, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"a floor process exited with {proc.returncode}")
            out.append(json.loads(stdout))
        return out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="65536,1048576", help="packet sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="alone, then at once, this often")
    parser.add_argument("--seconds", type=float, default=FLOOR_SECONDS,
                        help="thread CPU seconds of each measurement (the bench's)")
    parser.add_argument("--rounds", type=int, default=FLOOR_ROUNDS,
                        help="measurements per batch, the best kept (the bench's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:  # one floor process: its floors as JSON
        json.dump(best_floors(sizes, args.seconds, args.rounds), sys.stdout)
        return
    cpus = sorted(os.sched_getaffinity(0))
    ratios: dict[str, list[float]] = {str(s): [] for s in sizes}
    for _ in range(args.repeats):
        [alone] = floors_at_once(cpus[:1], sizes, args.seconds, args.rounds)
        beside = floors_at_once(cpus, sizes, args.seconds, args.rounds)
        for size in map(str, sizes):
            each = [b[size] for b in beside]
            ratio = statistics.mean(each) / alone[size]
            ratios[size].append(ratio)
            print(f"{size} B: alone {alone[size]:,.0f}; {len(cpus)} at once "
                  f"{' / '.join(f'{s:,.0f}' for s in each)}: {ratio:.1%} of alone", flush=True)
    for size, rs in ratios.items():
        print(f"{size} B: at once / alone, median of {len(rs)}: {statistics.median(rs):.1%} "
              f"(range {min(rs):.1%} - {max(rs):.1%})")


if __name__ == "__main__":
    main()
