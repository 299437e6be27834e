"""The workload's check of every arriving packet: one block handler per receive channel.

Whatever carried them, the packets reach the check as blocks (`partitions/blocks.py`). An
intact, in-order block, the common case, is checked and counted at once; anything else packet
by packet, so every corrupt or duplicate packet and every gap is counted exactly. The latency
of every `latency_stride`-th arrival is kept, and the check's own CPU time (what S_transport
subtracts) is read around sampled blocks (TIME_EVERY).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from partitions.blocks import SMALL_BLOCK, BlockHandler
from scripts.workload.pattern import Pattern

LATENCY_SAMPLES = 100_000  # kept per channel; beyond it every other sample is dropped
# The fill and check CPU (what S_transport subtracts) is read with time.thread_time, a system
# call (~0.25 us here): around every batch or block of SMALL_BLOCK packets or more, but around
# only every TIME_EVERY-th smaller one, counted TIME_EVERY times. Two calls per lone 64 B
# packet on each side would cost a tenth of the plain TCP pair's whole per-packet budget.
TIME_EVERY = 8


def timing_scale(count: int) -> int:
    """How many fills or checks of `count` packets one timed one stands for."""
    return TIME_EVERY if count < SMALL_BLOCK else 1


@dataclass
class ReceiveStats:
    received: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    corrupt: int = 0
    gaps: int = 0
    duplicates: int = 0
    latencies_ns: list = field(default_factory=list)
    latency_stride: int = 1
    arrivals: int = 0
    check_s: float = 0.0  # thread CPU seconds spent in the check (time.thread_time, sampled)
    blocks: int = 0  # blocks handed to the check (picks the sampled ones)


def make_handler(channel: str, rx: ReceiveStats, pattern: Pattern, own: int,
                 last_seq: dict[tuple[str, int], int]) -> BlockHandler:
    """The handler of `channel`'s receiver: checks each arrival against `pattern` (sent to
    `own`), counts it in `rx` and keeps the last sequence number per (channel, source) in
    `last_seq`, which outlives the counters."""
    check, check_block = pattern.check, pattern.check_block
    thread_time = time.thread_time
    clock = time.monotonic_ns

    def keep(latencies) -> None:
        rx.latencies_ns.extend(latencies)
        while len(rx.latencies_ns) >= LATENCY_SAMPLES:
            del rx.latencies_ns[::2]
            rx.latency_stride *= 2

    def sample_latency(first_arrival: int, sent_ns: np.ndarray) -> None:
        """Keep the latency of every `latency_stride`-th arrival, counting from 1. A block's
        send times come as an array: sampled in one vectorised step, never a Python loop
        per packet (that cost grew with the share of a receiver's packets sampled)."""
        first = -first_arrival % rx.latency_stride
        if first < len(sent_ns):
            picked = sent_ns[first::rx.latency_stride].astype(np.int64)
            keep((clock() - picked).tolist())

    def on_packet(source_id: int, seq: int, payload) -> None:
        ok, _counter, sent_ns = check(memoryview(payload), source_id, own)
        if not ok:
            rx.corrupt += 1
            return
        key = (channel, source_id)
        last = last_seq.get(key, 0)
        if seq <= last:
            rx.duplicates += 1
            return
        if seq != last + 1:
            rx.gaps += seq - last - 1
        last_seq[key] = seq
        rx.received[source_id] += 1
        rx.bytes_in += len(payload)
        rx.arrivals += 1
        if not rx.arrivals % rx.latency_stride:
            keep((clock() - sent_ns,))

    def accept(key: tuple, first_seq: int, last: int, count: int, nbytes: int) -> int:
        """Count an intact, in-order block of `count` packets (`nbytes` payload bytes) from
        `key`'s source; return the arrival number of its first packet."""
        rx.gaps += first_seq - last - 1
        last_seq[key] = first_seq + count - 1
        rx.received[key[1]] += count
        rx.bytes_in += nbytes
        rx.arrivals += count
        return rx.arrivals - count + 1

    def lone(key: tuple, seq: int, last: int, payload) -> None:
        """A block of one: checked (thread time every TIME_EVERY-th block) and, when
        intact and next in order, counted here; anything else goes to on_packet, which
        counts it exactly."""
        rx.blocks += 1
        source_id = key[1]
        if rx.blocks % TIME_EVERY:
            ok, _, sent_ns = check(payload, source_id, own)
        else:
            t0 = thread_time()
            ok, _, sent_ns = check(payload, source_id, own)
            rx.check_s += TIME_EVERY * (thread_time() - t0)
        if not ok or seq != last + 1:
            on_packet(source_id, seq, payload)
            return
        last_seq[key] = seq
        rx.received[source_id] += 1
        rx.bytes_in += len(payload)
        rx.arrivals += 1
        if not rx.arrivals % rx.latency_stride:
            rx.latencies_ns.append(clock() - sent_ns)
            if len(rx.latencies_ns) >= LATENCY_SAMPLES:
                keep(())

    def on_block(source_id: int, first_seq: int, rows) -> None:
        """The whole block at once when it is intact and in order (the common case);
        otherwise packet by packet, so every bad one is counted exactly. A short block
        (a list of views) is checked one `check` per packet, counted once per block."""
        key = (channel, source_id)
        last = last_seq.get(key, 0)
        count = len(rows)
        if count == 1:  # one packet per send: the lone packet's own short path
            lone(key, first_seq, last, rows[0])
            return
        if count < SMALL_BLOCK:
            rx.blocks += 1
            timed = not rx.blocks % TIME_EVERY
        else:
            timed = True
        t0 = thread_time() if timed else 0.0
        if first_seq > last:
            if count < SMALL_BLOCK:
                sent = []
                for row in rows:
                    ok, _, sent_ns = check(row, source_id, own)
                    if not ok:
                        break
                    sent.append(sent_ns)
                else:
                    if timed:
                        rx.check_s += TIME_EVERY * (thread_time() - t0)
                    first = accept(key, first_seq, last, count, count * len(rows[0]))
                    skip = -first % rx.latency_stride
                    if skip < count:
                        now = clock()
                        rx.latencies_ns += [now - ns for ns in sent[skip::rx.latency_stride]]
                        if len(rx.latencies_ns) >= LATENCY_SAMPLES:
                            keep(())
                    return
            else:
                block_sent = check_block(rows, source_id, own)
                if block_sent is not None:
                    rx.check_s += thread_time() - t0
                    sample_latency(accept(key, first_seq, last, count, rows.size),
                                   block_sent)
                    return
        for i in range(count):
            on_packet(source_id, first_seq + i, rows[i])
        if timed:
            rx.check_s += timing_scale(count) * (thread_time() - t0)

    return on_block
