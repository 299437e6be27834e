"""A plain TCP sender/receiver pair, the yardstick for xpmove's `tcp` transport (issue 14).

Two processes on loopback: the sender fills `batch` packets with the workload's own Pattern
(`fill_rows`, or `fill` per packet below SMALL_BLOCK) and sends them with ONE `sendall`; the
receiver `recv_into`s a preallocated buffer and checks every whole packet with the same
Pattern (`check_block` on a block of rows, `check` per packet below SMALL_BLOCK). No frame
headers (both sides know the packet size): nothing but the bytes, the fill and the check.
T = packets checked by the receiver, C = user + system CPU of both processes (psutil), sampled
every 0.1 s while the sender sends; S = benchcore.fit_s (the bench's own estimator).

    python benchmarks/plain_tcp.py --sizes 64,1KiB,64KiB --batch 1,32 --seconds 2

Compare with `xpmove bench --transports tcp --sizes 64,1KiB,64KiB --batch 1,32`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partitions.blocks import SMALL_BLOCK  # noqa: E402
from scripts.loadgen.benchcore import Sample, fit_s, human_size, parse_size, si  # noqa: E402
from scripts.workload.pattern import Pattern  # noqa: E402

SRC, DST = 1, 2
SAMPLE_S = 0.1
RECV_BYTES = 256 << 10


def receiver(listener: socket.socket, size: int, count, bad, done) -> None:
    conn, _ = listener.accept()
    pattern = Pattern(size)
    buf = bytearray(max(RECV_BYTES, 4 * size))
    view = memoryview(buf)
    flat = np.frombuffer(buf, np.uint8)
    have = 0
    while True:
        n = conn.recv_into(view[have:])
        if n == 0:
            break
        have += n
        whole = have // size
        if whole >= SMALL_BLOCK:
            rows = flat[:whole * size].reshape(whole, size)
            if pattern.check_block(rows, SRC, DST) is None:
                bad.value += whole
        else:
            for i in range(whole):
                if not pattern.check(view[i * size:(i + 1) * size], SRC, DST)[0]:
                    bad.value += 1
        count.value += whole
        left = have - whole * size
        if left:
            view[:left] = view[whole * size:have]
        have = left
    done.set()


def sender(port: int, size: int, batch: int, seconds: float) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pattern = Pattern(size)
    buf = bytearray(size * batch)
    view = memoryview(buf)
    rows = np.frombuffer(buf, np.uint8).reshape(batch, size)
    counter = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic_ns()
        if batch < SMALL_BLOCK:
            for i in range(batch):
                pattern.fill(view[i * size:(i + 1) * size], SRC, DST, counter + 1 + i, now)
        else:
            pattern.fill_rows(rows, SRC, DST, counter + 1, now)
        counter += batch
        sock.sendall(view)
    sock.close()


def run(size: int, batch: int, seconds: float) -> dict:
    ctx = mp.get_context("fork")
    listener = socket.create_server(("127.0.0.1", 0))
    count, bad, done = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False), ctx.Event()
    rx = ctx.Process(target=receiver, args=(listener, size, count, bad, done))
    rx.start()
    tx = ctx.Process(target=sender, args=(listener.getsockname()[1], size, batch, seconds))
    procs = [psutil.Process(p.pid) for p in (rx,)]
    cpu = [sum(p.cpu_times()[:2]) for p in procs]
    tx.start()
    procs.append(psutil.Process(tx.pid))
    cpu0 = sum(cpu) + 0.0
    samples = [Sample(0.0, 0.0, 0, 0, True)]
    t0 = time.monotonic()
    while True:
        time.sleep(SAMPLE_S)
        sending = tx.is_alive()
        c = 0.0
        for p in procs:
            try:
                c += sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        samples.append(Sample(time.monotonic() - t0, c - cpu0, count.value, 0, sending))
        if not sending:
            break
    tx.join()
    done.wait(10)
    rx.join(10)
    listener.close()
    fit = fit_s(samples)
    return {"size": size, "batch": batch, "S": fit.s, "packets": count.value, "bad": bad.value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,1KiB,64KiB")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    for size in (parse_size(s) for s in args.sizes.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            r = run(size, batch, args.seconds)
            print(f"plain tcp {human_size(size):>7} b{batch:<3} S {si(r['S']):>8} pkt/CPU-s "
                  f"({r['packets']:,} packets, {r['bad']} bad)", flush=True)


if __name__ == "__main__":
    main()
