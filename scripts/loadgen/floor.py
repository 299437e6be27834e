"""The floor: S of the workload's fill and check alone, with no transport (the zero-copy limit
every transport is reported against), and the same loop split over two processes.

`floor_s` fills a batch and checks it in one thread, so a packet never leaves one core's
caches between its fill and its check. Every transport has a second process check what the
first filled, and on some machines that alone costs more than a transport may add: the
`split` floor measures it in the same run. The floor's process fills each batch, exactly as
the floor does, in a memory file shared with a checker process (`python -m
scripts.loadgen.floor FD`, started once per bench) that checks it, with both pinned to one core
and then to two; the batch is handed over through a pipe, whose cost is not counted: S =
packets over the fill's plus the check's thread CPU. That is the most S any two-process
transport could reach with this workload on this machine: the best of both placements, each
measured FLOOR_ROUNDS times, as the floor itself is at each batch.

Both are measured in a process started as every partition is (`measured_floors` runs
`python -m scripts.loadgen.floor --floors` with the child environment of
hypervisor/children.py), never in the bench process itself: the partitions' copies run with
glibc's `rep movsb` off, and so must the floor's, or it is not the limit of the same copies
(at 64 KiB the floor measured 276 k pkt/CPU-s with it off, 250 k with it on).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

from hypervisor.children import child_environment
from partitions.blocks import SMALL_BLOCK
from scripts.loadgen.benchcore import BenchError
from scripts.workload.frames import FRAME
from scripts.workload.pattern import PACKET_HEADER, Pattern
from scripts.workload.transports import Batch, BatchLayout, make_batch

FLOOR_SECONDS = 0.3  # thread CPU seconds of fill + check per (size, batch) for the floor
FLOOR_BYTES = 8 << 20  # the floor's batch is capped to this many bytes
SPLIT_WALL_S = 1.0  # a split measurement stops after this long even if short of its CPU:
# at the default batches one ends by its CPU in 0.3-0.6 s; at batch 1 every packet is a
# pipe round trip, and 3 s made a 30-packet bench of two sizes take 28 s of its 31
FLOOR_ROUNDS = 3  # the floor (each batch) and its split (each placement) are measured this
# many times, the best kept: this machine's host moves one measurement by up to a third
_LAYOUT = BatchLayout(FRAME.size)  # laid out as tcp frames, as every sender's batch is
_SRC, _DST = 1, 2
_ASK = struct.Struct("<QQQ")  # packet size, packets, first counter (end of input: stop)
_ANSWER = struct.Struct("<QQ")  # intact (1 or 0), thread CPU ns of the check


def _packets(size: int, batch: int) -> int:
    """Packets of a floor batch: `batch`, capped to FLOOR_BYTES (one at least)."""
    return max(1, min(batch, FLOOR_BYTES // _LAYOUT.stride(size)))


def _span(size: int, batch: int) -> int:
    """Bytes a floor batch takes."""
    return _LAYOUT.stride(size) * _packets(size, batch)


class _Floor:
    """A batch of `batch` packets of `size` bytes (capped to FLOOR_BYTES) laid out in
    `region`, filled and checked the way every sender and receiver of the bench does it:
    as rows from SMALL_BLOCK packets up, packet by packet below."""

    def __init__(self, size: int, batch: int, region: memoryview | None = None):
        self.n = n = _packets(size, batch)
        if region is None:
            region = memoryview(bytearray(_span(size, batch)))
        self.pattern = Pattern(size)
        self.batch: Batch = make_batch(region, size, _LAYOUT, n)
        self.views = [memoryview(slot.payload) for slot in self.batch.slots]

    def fill(self, first: int) -> None:
        now = time.monotonic_ns()
        if self.n < SMALL_BLOCK:
            for i, v in enumerate(self.views):
                self.pattern.fill(v, _SRC, _DST, first + i, now)
        else:
            self.pattern.fill_rows(self.batch.payloads, _SRC, _DST, first, now)

    def check(self) -> bool:
        if self.n < SMALL_BLOCK:
            return all(self.pattern.check(v, _SRC, _DST)[0] for v in self.views)
        return self.pattern.check_block(self.batch.payloads, _SRC, _DST) is not None


def floor_s(size: int, batch: int, seconds: float = FLOOR_SECONDS) -> float:
    """S of the workload's fill and check alone, no transport: one thread fills a batch of
    `size`-byte packets in its own memory and checks it, in a loop (thread CPU time)."""
    floor = _Floor(size, batch)
    counter, packets = 1, 0
    start = time.thread_time()
    while True:
        floor.fill(counter)
        if not floor.check():
            raise BenchError(f"floor: the pattern check failed at {size} B (a bug)")
        counter += floor.n
        packets += floor.n
        elapsed = time.thread_time() - start
        if elapsed >= seconds:
            return packets / elapsed


class _Checker:
    """The checker process and the memory file it shares with the floor's process."""

    def __init__(self, proc: subprocess.Popen, memory: mmap.mmap):
        self.proc, self.memory = proc, memory

    def check(self, size: int, n: int, first: int) -> tuple[bool, int]:
        """Have the checker check the batch just filled; (intact, its check's thread ns)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(_ASK.pack(size, n, first))
            self.proc.stdin.flush()
            answer = self.proc.stdout.read(_ANSWER.size)
        except BrokenPipeError:
            answer = b""
        if len(answer) != _ANSWER.size:
            raise BenchError(f"floor: the checker process ended (exit {self.proc.wait()})")
        ok, ns = _ANSWER.unpack(answer)
        return bool(ok), ns


@contextlib.contextmanager
def _checker(size: int) -> Iterator[_Checker]:
    """A checker process sharing a memory file of `size` bytes (a memfd: no name to clean
    up), stopped and reaped on the way out, whatever happens."""
    fd = os.memfd_create("xpmove-floor")
    try:
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, 0)
        proc = subprocess.Popen([sys.executable, "-m", "scripts.loadgen.floor", str(fd)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(fd,))
    finally:
        os.close(fd)
    try:
        yield _Checker(proc, memory)
    finally:
        try:
            assert proc.stdin is not None
            proc.stdin.close()  # end of input: the checker leaves
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        with contextlib.suppress(BufferError):  # views held by an exception's frames: the
            memory.close()  # mapping goes with them


@contextlib.contextmanager
def _pinned(pids: tuple[int, int], cpus: tuple[int, int]) -> Iterator[None]:
    """Pin the two processes to `cpus`; the calling process gets its own affinity back."""
    mine = os.sched_getaffinity(0)
    try:
        for pid, cpu in zip(pids, cpus, strict=True):
            os.sched_setaffinity(pid, {cpu})
        yield
    finally:
        os.sched_setaffinity(0, mine)


def _split_s(checker: _Checker, size: int, batch: int, seconds: float) -> float:
    floor = _Floor(size, batch, memoryview(checker.memory))
    counter, packets, spent_ns = 1, 0, 0
    deadline = time.monotonic() + SPLIT_WALL_S
    while True:
        t0 = time.thread_time_ns()
        floor.fill(counter)
        spent_ns += time.thread_time_ns() - t0
        ok, check_ns = checker.check(size, floor.n, counter)
        if not ok:
            raise BenchError(f"floor: the checker process found a bad packet at {size} B "
                             "(a bug)")
        spent_ns += check_ns
        counter += floor.n
        packets += floor.n
        if spent_ns >= seconds * 1e9 or time.monotonic() >= deadline:
            return packets / (spent_ns / 1e9)


def split_floors(at: dict[int, int], seconds: float = FLOOR_SECONDS,
                 rounds: int = FLOOR_ROUNDS) -> dict[int, dict]:
    """Per size in `at` (size -> batch), the split floor: {"S", "cores", "batch"}, the best
    of `rounds` rounds of the fill and the check on one core and on two (one only where just
    one CPU is usable). The best, not the mean: it bounds what a transport could reach (one
    measurement each gave 66 % and 94 % of the floor in two runs back to back)."""
    cpus = sorted(os.sched_getaffinity(0))
    placements = [(cpus[0], cpus[0])] + ([(cpus[0], cpus[1])] if len(cpus) > 1 else [])
    out: dict[int, dict] = {}
    with _checker(max(_span(size, batch) for size, batch in at.items())) as checker:
        for size, batch in at.items():
            for placement in placements * rounds:
                with _pinned((0, checker.proc.pid), placement):
                    s = _split_s(checker, size, batch, seconds)
                if s > out.get(size, {}).get("S", 0.0):
                    out[size] = {"S": s, "cores": len(set(placement)), "batch": batch}
    return out


def floors(sizes: tuple[int, ...], batches: tuple[int, ...], seconds: float = FLOOR_SECONDS,
           rounds: int = FLOOR_ROUNDS) -> dict[str, dict]:
    """The floor per size at the best of `batches` (each measured `rounds` times), and beside
    it the split floor at that batch: {"<size>": {"S", "batch", "alone", "split": {"S",
    "cores", "batch"}}}. `alone` is the one-thread loop as measured; `S` is the better of it
    and the split: the split is the same loop with a hand-over added, so a split above the
    loop alone says the loop was measured in a slow spell (seen at 1 KiB: split 104 %), and
    a floor that low would read every transport's "% floor" high."""
    best = {size: max(((floor_s(size, b, seconds), b) for b in batches for _ in range(rounds)),
                      key=lambda x: x[0])
            for size in sizes}
    split = split_floors({size: b for size, (_, b) in best.items()}, seconds, rounds)
    return {str(size): {"S": max(s, split[size]["S"]), "batch": b, "alone": s,
                        "split": split[size]}
            for size, (s, b) in best.items()}


def measured_floors(sizes: tuple[int, ...], batches: tuple[int, ...],
                    seconds: float = FLOOR_SECONDS, rounds: int = FLOOR_ROUNDS
                    ) -> dict[str, dict]:
    """`floors`, measured in a child process started with the partitions' environment (see
    the module doc); a BenchError naming its exit and error output if it fails."""
    argv = [sys.executable, "-m", "scripts.loadgen.floor", "--floors",
            ",".join(map(str, sizes)), ",".join(map(str, batches)), str(seconds), str(rounds)]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=child_environment(os.environ), check=False)
    if done.returncode != 0:
        raise BenchError(f"floor: the floor process exited with {done.returncode}: "
                         f"{done.stderr.strip()[-2000:] or '(no error output)'}")
    return json.loads(done.stdout)


def _serve(fd: int) -> None:
    """The checker process: check each batch the floor's process says it filled in the shared
    memory file, answer (intact, thread CPU ns of the check); leave at the end of input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench's: it closes our input
    memory = mmap.mmap(fd, 0)
    floors_by_size: dict[tuple[int, int], _Floor] = {}
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while len(ask := stdin.read(_ASK.size)) == _ASK.size:
        size, n, first = _ASK.unpack(ask)
        floor = floors_by_size.get((size, n))
        if floor is None:
            floors_by_size.clear()  # one layout at a time: the bench measures size by size
            floor = floors_by_size[(size, n)] = _Floor(size, n, memoryview(memory))
        t0 = time.thread_time_ns()
        ok = floor.check()
        spent = time.thread_time_ns() - t0
        ok = ok and PACKET_HEADER.unpack_from(floor.views[0])[2] == first  # not an old batch
        stdout.write(_ANSWER.pack(ok, spent))
        stdout.flush()


def _main(argv: list[str]) -> None:
    """`--floors SIZES BATCHES SECONDS ROUNDS` (sizes and batches comma-separated): print
    `floors` as JSON; `FD`: serve as the split floor's checker on that memory file."""
    if argv[0] == "--floors":
        sizes, batches = (tuple(int(x) for x in arg.split(",")) for arg in argv[1:3])
        json.dump(floors(sizes, batches, float(argv[3]), int(argv[4])), sys.stdout)
    else:
        _serve(int(argv[0]))


if __name__ == "__main__":
    _main(sys.argv[1:])
