"""What one run costs the lease path besides its fill and check (benchmarks/README.md, "What a
run costs besides its fill and check").

A partition program for two partitions on one CPU (`run_cost.toml`): network ID 1 takes a lease
on 2 and sends RUNS runs of PACKETS packets of SIZE bytes, each loaned in 2's ring
(`lease.loan_run`, uninit) and committed; 2 receives them (`port.receive_blocks`). Each side
prints its CPU per run (getrusage: every thread, user and system), the part of it spent in the
"work", and the rest: what the lease path costs per run. The work is chosen with
XPMOVE_RUN_COST:

* ``fill`` (the default): the bench's fill of every packet (`Pattern.fill_rows`) and check of
  every packet (`Pattern.check_block` / `check`), as fig12-lease runs them;
* ``none``: nothing, the packets are neither written nor read;
* ``stream:BYTES``: each side writes (sender) or reads (receiver) BYTES of its own private
  memory once a run instead, touching no packet: what a run's streams do to the path's caches.
  The memory is a bytearray written once first (4 KiB pages, as the segment's; no page left
  to the kernel's shared zero page); the receiver reads it as two halves compared.

Run from the repository root:

    XPMOVE_RUN_COST=fill .venv/bin/xpmove run --config benchmarks/run_cost.toml

XPMOVE_RUN_COST_RUNS, _PACKETS and _SIZE change the run count (3000), packets a run (127) and
packet size (65536).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

import numpy as np

from partitions import Port
from scripts.workload.pattern import Pattern

SENDER, RECEIVER = 1, 2
TIMEOUT_S = 10.0
MODE = os.environ.get("XPMOVE_RUN_COST", "fill")
RUNS = int(os.environ.get("XPMOVE_RUN_COST_RUNS", "3000"))
PACKETS = int(os.environ.get("XPMOVE_RUN_COST_PACKETS", "127"))
SIZE = int(os.environ.get("XPMOVE_RUN_COST_SIZE", "65536"))


def cpu_s() -> float:
    """CPU seconds of this whole process (every thread), user and system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def streams() -> tuple[Callable[[int], None], Callable[[], None]]:
    """(write, read) of `stream:BYTES`: one pass over BYTES of private memory each (the read
    a memcmp of two halves: `bytes.startswith` on a buffer, no copy)."""
    n = int(MODE.split(":", 1)[1])
    written = np.frombuffer(bytearray(b"\x5a") * n, np.uint8)  # every page written now
    reference, other = b"\x5a" * (n // 2), memoryview(bytearray(b"\x5a") * (n // 2))
    return (lambda i: written.fill(i & 0xFF)), (lambda: reference.startswith(other))


def send(port: Port, pattern: Pattern) -> float:
    """The sender's runs; returns the thread CPU seconds of its work."""
    write = streams()[0] if MODE.startswith("stream:") else None
    work, first = 0.0, 1
    with port.lease(RECEIVER, timeout=TIMEOUT_S) as lease:
        for i in range(RUNS):
            with lease.loan_run(PACKETS, SIZE, timeout=TIMEOUT_S, uninit=True) as run:
                started = time.thread_time()
                if MODE == "fill":
                    rows = np.ndarray((PACKETS, SIZE), np.uint8, buffer=run.view,
                                      strides=(run.stride, 1))
                    pattern.fill_rows(rows, SENDER, RECEIVER, first, 0)
                    del rows  # nothing made from a loan may outlive it
                elif write is not None:
                    write(i)
                work += time.thread_time() - started
            first += PACKETS
    return work


def receive(port: Port, pattern: Pattern) -> float:
    """The receiver's runs; returns the thread CPU seconds of its work."""
    read = streams()[1] if MODE.startswith("stream:") else None
    work = 0.0

    def handler(source: int, seq: int, rows) -> None:
        nonlocal work
        started = time.thread_time()
        if MODE == "fill":
            ok = (all(pattern.check(row, source, RECEIVER)[0] for row in rows)
                  if isinstance(rows, list) else
                  pattern.check_block(rows, source, RECEIVER) is not None)
            if not ok:
                raise ValueError(f"a bad packet in the block from sequence number {seq}")
        elif read is not None:
            read()
        work += time.thread_time() - started

    got = 0
    while got < RUNS * PACKETS:
        n = port.receive_blocks(handler, timeout=TIMEOUT_S)
        if not n:
            raise TimeoutError(f"no run within {TIMEOUT_S} s ({got} packets received)")
        got += n
    return work


def main(port: Port) -> None:
    if MODE not in ("fill", "none") and not MODE.startswith("stream:"):
        raise ValueError(f"XPMOVE_RUN_COST={MODE!r}: fill, none or stream:BYTES")
    pattern = Pattern(SIZE)
    started = cpu_s()
    work = (send if port.network_id == SENDER else receive)(port, pattern)
    spent = cpu_s() - started
    side = "sender" if port.network_id == SENDER else "receiver"
    print(f"{side} ({MODE}, {RUNS} runs of {PACKETS} x {SIZE} B): "
          f"{spent / RUNS * 1e6:.1f} us CPU a run, work {work / RUNS * 1e6:.1f}, "
          f"the lease path {(spent - work) / RUNS * 1e6:.1f}", flush=True)
