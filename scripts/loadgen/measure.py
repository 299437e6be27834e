"""What the bench measures beside the runs (scripts/loadgen/bench.py): the CPU of the processes
on a run's path and the host's memcpy bandwidth (the floor is in floor.py)."""

from __future__ import annotations

import os
import platform
import time

import psutil

from hypervisor.machine import Machine
from scripts.loadgen.benchcore import BenchError

MEMCPY_BLOCK = 1 << 20
MEMCPY_SECONDS = 0.3


class CpuMeter:
    """Sum of user + system CPU seconds of a fixed set of processes (psutil)."""

    def __init__(self, pids: dict[str, int]):
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def by_process(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                t = proc.cpu_times()
            except psutil.Error as exc:
                raise BenchError(f"{name} (pid {proc.pid}) is gone: {exc}") from None
            out[name] = t.user + t.system
        return out


def memcpy_bandwidth(memory: memoryview, src: int, dst: int, block: int = MEMCPY_BLOCK,
                     seconds: float = MEMCPY_SECONDS) -> float:
    """Bytes per second of repeated `block`-byte memoryview copies between two segment places."""
    with memory[src:src + block] as a, memory[dst:dst + block] as b:
        b[:] = a  # fault the pages in
        copies = 0
        start = time.perf_counter()
        while True:
            for _ in range(8):
                b[:] = a
            copies += 8
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return copies * block / elapsed


def memcpy_dram_bandwidth(memory: memoryview, blocks: list[int], block: int = MEMCPY_BLOCK,
                          seconds: float = MEMCPY_SECONDS) -> float:
    """Like memcpy_bandwidth, cycling through `blocks` (first half -> second half) so the
    working set outgrows the caches: closer to what a stream of fresh packets gets."""
    half = len(blocks) // 2
    pairs = list(zip(blocks[:half], blocks[half:2 * half], strict=True))
    copies = 0
    start = time.perf_counter()
    while True:
        for src, dst in pairs:
            memory[dst:dst + block] = memory[src:src + block]
        copies += len(pairs)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return copies * block / elapsed


def host_info(machine: Machine) -> dict:
    """The host, and the segment's memcpy bandwidth measured before any traffic, in the
    partitions' sender areas (below their receive areas; nothing is in flight yet)."""
    by_index = sorted(machine.layout.partitions, key=lambda p: p.index)
    src, dst = by_index[0].base, by_index[1 % len(by_index)].base
    if src == dst:
        dst = src + MEMCPY_BLOCK
    assert machine.memory is not None
    bw = memcpy_bandwidth(machine.memory.view, src, dst)
    blocks = [p.base + k * MEMCPY_BLOCK for p in by_index
              for k in range(p.receive_offset // MEMCPY_BLOCK)]
    dram = memcpy_dram_bandwidth(machine.memory.view, blocks) if len(blocks) >= 2 else bw
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "memory_bytes": psutil.virtual_memory().total,
        "memcpy_GBps": bw / 1e9,
        "memcpy_block_bytes": MEMCPY_BLOCK,
        "memcpy_note": "repeated 1 MiB memoryview slice copies between the same two places "
                       "of the shared segment (cache-resident), in the bench process",
        "memcpy_dram_GBps": dram / 1e9,
        "memcpy_dram_working_set_bytes": (len(blocks) // 2) * 2 * MEMCPY_BLOCK,
        "memcpy_dram_note": "1 MiB copies cycling through every partition's sender area, "
                            "working set above the caches when the segment is large enough",
    }
