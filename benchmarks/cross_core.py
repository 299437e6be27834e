"""What the floor targets are up against: the workload's fill in one process and its check in
another, with no transport at all (benchmarks/README.md, "Loans under a lease").

One process fills 64 KiB packets (`Pattern.fill`, as every sender of the bench) into slots of a
shared anonymous mapping, cycling through a window of W bytes; another checks them
(`Pattern.check`). Two hand-overs:

* ``spin``: the filler runs ahead up to the window, a shared counter says how far (two cores
  working at once, as the bench's pairs do);
* ``lockstep``: a batch of B packets filled, then checked, handed over with semaphores, with
  both processes on one core or on two.

It prints the thread CPU of fill and check per packet, and for ``lockstep`` the CPU of both
whole processes. Compare with one process filling and checking one buffer (the bench's
floor). Usage: python benchmarks/cross_core.py [packet size] [packets]
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from multiprocessing import Process, Semaphore
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.workload.pattern import Pattern  # noqa: E402

SIZE = int(sys.argv[1]) if len(sys.argv) > 1 else 64 << 10
PACKETS = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
FILLED, CHECKED, FILL_NS, CHECK_NS, BAD, FILL_CPU, CHECK_CPU = range(7)  # control words


def one_process() -> float:
    """µs per packet: fill and check one buffer, over and over (the floor's way)."""
    pattern, buf = Pattern(SIZE), memoryview(bytearray(SIZE))
    start = time.thread_time_ns()
    for i in range(PACKETS // 4):
        pattern.fill(buf, 1, 2, i, 0)
        pattern.check(buf, 1, 2)
    return (time.thread_time_ns() - start) / (PACKETS // 4) / 1e3


def _two(window: int, batch: int, cores: tuple[int, int] | None) -> list[int]:
    """Fill in one process, check in another; the control words when both are done. With
    `cores`, lock-step batches handed over by semaphores; without, the spin hand-over."""
    slots = max(batch, window // SIZE)
    shm = mmap.mmap(-1, 4096 + slots * SIZE)
    ctl, data = memoryview(shm)[:4096].cast("Q"), memoryview(shm)[4096:]
    full, empty = Semaphore(0), Semaphore(1)

    def slot(i: int) -> memoryview:
        return data[(i % slots) * SIZE:(i % slots + 1) * SIZE]

    def side(fill: bool) -> None:
        if cores is not None:
            os.sched_setaffinity(0, {cores[0] if fill else cores[1]})
        pattern, spent, bad, cpu0 = Pattern(SIZE), 0, 0, time.process_time_ns()
        for first in range(0, PACKETS, batch):
            if cores is not None:
                (empty if fill else full).acquire()
            for i in range(first, first + batch):
                if cores is None:  # spin: never more than the window ahead, never past it
                    while (i - ctl[CHECKED] >= slots) if fill else ctl[FILLED] <= i:
                        pass
                t0 = time.thread_time_ns()
                if fill:
                    pattern.fill(slot(i), 1, 2, i, 0)
                else:
                    bad += not pattern.check(slot(i), 1, 2)[0]
                spent += time.thread_time_ns() - t0
                ctl[FILLED if fill else CHECKED] = i + 1
            if cores is not None:
                (full if fill else empty).release()
        ctl[FILL_NS if fill else CHECK_NS] = spent
        ctl[FILL_CPU if fill else CHECK_CPU] = time.process_time_ns() - cpu0
        if not fill:
            ctl[BAD] = bad

    procs = [Process(target=side, args=(fill,)) for fill in (True, False)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return list(ctl[:7])


def main() -> None:
    print(f"{SIZE} B packets, {PACKETS} of them")
    print(f"one process, one buffer: fill + check {one_process():.2f} us a packet")
    for window in (1 << 20, 32 << 20):
        c = _two(window, 1, None)
        print(f"spin, two cores, window {window >> 20} MiB: fill {c[FILL_NS] / PACKETS / 1e3:.2f}"
              f" + check {c[CHECK_NS] / PACKETS / 1e3:.2f} us, bad {c[BAD]}")
    batch = max(1, (1 << 20) // SIZE)
    for window in (batch * SIZE, 32 << 20):
        for cores in ((0, 0), (0, 1)):
            c = _two(window, batch, cores)
            print(f"lockstep b{batch}, cores {cores}, window {window >> 10} KiB: fill "
                  f"{c[FILL_NS] / PACKETS / 1e3:.2f} + check {c[CHECK_NS] / PACKETS / 1e3:.2f}"
                  f" us; both processes {(c[FILL_CPU] + c[CHECK_CPU]) / PACKETS / 1e3:.2f} us,"
                  f" bad {c[BAD]}")


if __name__ == "__main__":
    main()
