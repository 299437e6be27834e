"""The built-in user workload: send verified packets to peers, verify every arrival.

Runs inside a partition process: one sender thread fills packets in the partition's own memory
and hands them, a batch at a time, to a send transport (partitions/transports.py: the adapter's
two flows, or the prior art's tcp and virtual switch); one receiver thread per receive endpoint
checks each arrival (source, per-pair sequence number, contents) with the same memcmp-speed
check whatever carried it. Counters are plain ints updated by one thread each, read by the
command loop for snapshots.

Sequence numbers are checked per *channel* (the adapter's rings, tcp, vswitch): each has its own
per-pair numbering, which lives as long as the partition, so `reset()` between benchmark runs
zeroes the counters but not the expected next sequence numbers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from adapter.protocol import Flow
from partitions.blocks import SMALL_BLOCK, BlockHandler
from partitions.memory import PartitionView
from scripts.workload.pattern import MIN_PACKET, Pattern
from scripts.workload.transports import (
    Batch,
    ReceiveEndpoint,
    SendTransport,
    batch_capacity,
    make_batch,
)

WAKE_TIMEOUT_S = 0.05  # receivers re-check their stop flag at least this often
LATENCY_SAMPLES = 100_000  # kept per channel; beyond it every other sample is dropped
JOIN_TIMEOUT_S = 10.0
# The fill and check CPU (what S_transport subtracts) is read with time.thread_time, a system
# call (~0.25 us here): around every batch or block of SMALL_BLOCK packets or more, but around
# only every TIME_EVERY-th smaller one, counted TIME_EVERY times. Two calls per lone 64 B
# packet on each side would cost a tenth of the plain TCP pair's whole per-packet budget.
TIME_EVERY = 8


def timing_scale(count: int) -> int:
    """How many fills or checks of `count` packets one timed one stands for."""
    return TIME_EVERY if count < SMALL_BLOCK else 1


class PlanError(ValueError):
    """A traffic command the partition cannot carry out; names the field."""


@dataclass(frozen=True)
class TrafficPlan:
    peers: tuple[int, ...]
    flows: tuple[str, ...]
    size: int
    packets: int | None  # per peer and flow; None = until `duration` or stop
    duration: float | None
    send_timeout: float = 5.0
    batch: int = 1  # packets per request (adapter) or per sendall (sockets), to one peer
    interval: float | None = None  # paced (the bench's lone-packet latency): one round per
    # `interval` seconds, so each packet travels alone on an idle path
    # per peer, packets over all flows, instead of `packets` per peer and flow: what is left
    # of a restarted partition's share (xpmove launch: packets - what its predecessor sent)
    quota: dict[int, int] | None = None

    def packets_for(self, peer: int, flow: int) -> int | None:
        """How many packets go to `peer` on the `flow`-th flow (None: no count bounds it);
        a quota is shared out over the flows, the first ones taking the remainder."""
        if self.quota is None:
            return self.packets
        share, rest = divmod(self.quota.get(peer, 0), len(self.flows))
        return share + (flow < rest)

    @classmethod
    def from_message(cls, msg: dict, view_size: int,
                     known_flows: tuple[str, ...] = tuple(f.value for f in Flow)) -> TrafficPlan:
        peers = tuple(int(p) for p in msg.get("peers", ()))
        flows = tuple(msg.get("flows", (Flow.FIG11.value,)))
        size = int(msg.get("size", 256))
        packets = msg.get("packets")
        duration = msg.get("duration")
        batch = int(msg.get("batch", 1))
        interval = msg.get("interval")
        for f in flows:
            if f not in known_flows:
                raise PlanError(f"flows: unknown flow {f!r} (known: {sorted(known_flows)})")
        if not MIN_PACKET <= size <= view_size:
            raise PlanError(f"size: {size} must be in [{MIN_PACKET}, {view_size}]")
        if packets is None and duration is None and msg.get("quota") is None:
            raise PlanError("packets/duration: give at least one bound")
        if batch < 1:
            raise PlanError(f"batch: {batch} must be >= 1")
        if interval is not None and not 0 < float(interval) <= 1.0:
            raise PlanError(f"interval: {interval} must be in (0, 1] seconds")
        quota = msg.get("quota")
        if quota is not None:
            quota = {int(peer): int(n) for peer, n in quota.items()}
            if strays := sorted(set(quota) - set(peers)):
                raise PlanError(f"quota: network IDs {strays} are not among the peers")
            if bad := {p: n for p, n in quota.items() if n < 0}:
                raise PlanError(f"quota: negative packet counts {bad}")
        return cls(peers, flows, size, None if packets is None else int(packets),
                   None if duration is None else float(duration),
                   float(msg.get("send_timeout", 5.0)), batch,
                   None if interval is None else float(interval), quota)


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


class _ReceiveThread:
    def __init__(self, endpoint: ReceiveEndpoint, handler, name: str):
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._loop, args=(handler,), daemon=True,
                                       name=name)
        self.thread.start()

    def _loop(self, handler) -> None:
        try:
            while not self.stop.is_set():
                self.endpoint.poll(handler, WAKE_TIMEOUT_S)
        except Exception as exc:  # reported by counts(); closed under us at stop is normal
            if not self.stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"

    def join(self) -> None:
        self.stop.set()
        self.thread.join(JOIN_TIMEOUT_S)


class Traffic:
    def __init__(self, network_id: int, view: PartitionView, sender_space: int):
        self.network_id = network_id
        self.view = view
        self.sender_space = sender_space  # [0, sender_space) of own memory holds packets
        self.pattern = Pattern(view.layout.receive_offset)
        self._last_seq: dict[tuple[str, int], int] = {}
        self._receivers: dict[str, _ReceiveThread] = {}
        self._rx: dict[str, ReceiveStats] = {}
        self.sender_done = threading.Event()
        self.sender_done.set()
        self._send_stop = threading.Event()
        self._transports: dict[str, SendTransport] = {}
        self.batch_used = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters (between benchmark runs); sequence expectations are kept."""
        if not self.sender_done.is_set():
            raise PlanError("reset: the sender is still running")
        self.sent: Counter = Counter()
        self.bytes_out = 0
        self.errors: Counter = Counter()
        self.fill_s = 0.0  # sender thread CPU seconds spent filling packets
        for rx in self._rx.values():
            fresh = ReceiveStats()
            rx.__dict__.update(fresh.__dict__)

    # -- receive side --------------------------------------------------------------------
    def expect_after(self, channel: str, source_id: int, seq: int) -> None:
        """Sequence numbers from `source_id` on `channel` continue after `seq` (a restarted
        partition picks up where its previous incarnation stopped)."""
        self._last_seq[(channel, source_id)] = seq

    def start_receiving(self, endpoint: ReceiveEndpoint) -> None:
        channel = endpoint.channel
        if channel in self._receivers:
            return
        rx = self._rx.setdefault(channel, ReceiveStats())
        self._receivers[channel] = _ReceiveThread(
            endpoint, self._make_handler(channel, rx), f"receiver-{channel}")

    def stop_receiving(self, channel: str) -> None:
        receiver = self._receivers.pop(channel, None)
        if receiver is not None:
            receiver.join()
            if receiver.error:
                self.errors[f"receiver-{channel}"] += 1

    def _make_handler(self, channel: str, rx: ReceiveStats) -> BlockHandler:
        check, check_block = self.pattern.check, self.pattern.check_block
        thread_time = time.thread_time
        own = self.network_id
        last_seq = self._last_seq
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

    # -- send side -----------------------------------------------------------------------
    def start_sending(self, plan: TrafficPlan, transports: dict[str, SendTransport]) -> None:
        if not self.sender_done.is_set():
            raise PlanError("traffic: already sending")
        missing = [f for f in plan.flows if f not in transports]
        if missing:
            raise PlanError(f"flows: no transport for {missing}")
        batches = {}
        n = plan.batch
        for flow in plan.flows:
            transport = transports[flow]
            try:
                n = min(n, batch_capacity(self.sender_space, plan.size, transport.layout,
                                          plan.batch, transport.batch_limit(plan.size)))
            except ValueError as exc:
                raise PlanError(str(exc)) from None
        region = self.view.buffer(0, self.sender_space)
        for flow in plan.flows:
            batches[flow] = make_batch(region, plan.size, transports[flow].layout, n)
        self.batch_used = n
        self._transports = transports
        self._send_stop = threading.Event()
        self.sender_done.clear()
        threading.Thread(target=self._send_loop, args=(plan, batches, self._send_stop),
                         daemon=True, name="sender").start()

    def _send_loop(self, plan: TrafficPlan, batches: dict[str, Batch],
                   stop: threading.Event) -> None:
        """Fill and send a batch to every peer on every flow per round. Everything a round
        can know beforehand is looked up once: at one packet per send, this loop's own
        Python is a share of the per-packet cost that S compares."""
        counters = dict.fromkeys(plan.peers, 0)  # per peer, across flows
        fill, fill_rows = self.pattern.fill, self.pattern.fill_rows
        me = self.network_id
        clock, thread_time = time.monotonic_ns, time.thread_time
        end = None if plan.duration is None else time.monotonic() + plan.duration
        # (peer, transport, its batch, whether it lends the memory to fill: asks `loan`)
        legs = [(peer, self._transports[flow], batches[flow],
                 type(self._transports[flow]).loan is not SendTransport.loan)
                for peer in plan.peers for flow in plan.flows]
        # packets still to send per leg, when a count bounds the traffic
        counted = plan.packets is not None or plan.quota is not None
        left = [plan.packets_for(peer, i) or 0 for peer in plan.peers
                for i in range(len(plan.flows))]
        errors, sent_to, size, timeout = self.errors, self.sent, plan.size, plan.send_timeout
        untimed = 0  # small batches filled since the last timed one
        n = self.batch_used
        next_round = time.monotonic()

        def fill_batch(batch: Batch, peer: int, first: int, now: int) -> None:
            """Fill the packets in place, wherever the transport laid them out; its thread
            time is taken for every large batch, and every TIME_EVERY-th small one."""
            nonlocal untimed
            if len(batch.frames) >= SMALL_BLOCK:  # as rows: the batch's slots are never built
                t0 = thread_time()
                fill_rows(batch.payloads, me, peer, first, now)
                self.fill_s += thread_time() - t0
                return
            untimed += 1
            timed = untimed == TIME_EVERY
            if timed:
                t0 = thread_time()
            if len(batch.frames) == 1:
                fill(batch.slots[0].payload, me, peer, first, now)
            else:
                for i, slot in enumerate(batch.slots):
                    fill(slot.payload, me, peer, first + i, now)
            if timed:
                self.fill_s += TIME_EVERY * (thread_time() - t0)
                untimed = 0

        try:
            while legs and not stop.is_set():  # no peers: nothing to send
                if plan.interval is not None:  # paced: wait for the round's start time
                    if stop.wait(max(0.0, next_round - time.monotonic())):
                        break
                    next_round = max(next_round + plan.interval, time.monotonic())
                if counted and not any(left):
                    break
                if end is not None and time.monotonic() >= end:
                    break
                k = n
                for leg, (peer, transport, full, lends) in enumerate(legs):
                    if counted:
                        k = min(n, left[leg])
                        if not k:
                            continue
                        left[leg] -= k
                    first = counters[peer] + 1
                    counters[peer] += k
                    now = clock()
                    template = full if k == n else full.prefix(k)
                    if transport.fills_itself:  # a loan: what it lent must be gone at send
                        sent = transport.fill_and_send(
                            peer, template, partial(fill_batch, peer=peer, first=first, now=now),
                            errors, timeout, stop)
                    else:
                        batch = transport.loan(peer, template) if lends else template
                        fill_batch(batch, peer, first, now)
                        sent = transport.send(peer, batch, errors, timeout, stop)
                    sent_to[peer] += sent
                    self.bytes_out += sent * size
        except Exception as exc:  # a broken transport ends this run, reported as an error
            self.errors[f"sender: {type(exc).__name__}: {exc}"] += 1
        finally:
            for transport in {id(t): t for t in self._transports.values()}.values():
                retracted = transport.finish(self.errors, plan.send_timeout)  # queued ones
                self.sent.subtract(retracted)
                self.bytes_out -= sum(retracted.values()) * plan.size
            self.sender_done.set()

    def stop_sending(self) -> bool:
        """Stop the sender; if it is stuck in a transport, close that transport. True if done."""
        self._send_stop.set()
        if self.sender_done.wait(1.0):
            return True
        for transport in self._transports.values():
            transport.close()
        return self.sender_done.wait(JOIN_TIMEOUT_S)

    def stop(self) -> None:
        self.stop_sending()
        for channel in list(self._receivers):
            self.stop_receiving(channel)

    # -- reports -------------------------------------------------------------------------
    def counts(self) -> dict:
        """The cheap counters the load generator polls while a run goes on."""
        rxs = list(self._rx.values())
        return {
            "sent": sum(self.sent.values()),
            "bytes_out": self.bytes_out,
            "failed": sum(self.errors.values()),
            "received": sum(sum(rx.received.values()) for rx in rxs),
            "bytes_in": sum(rx.bytes_in for rx in rxs),
            "corrupt": sum(rx.corrupt for rx in rxs),
            "gaps": sum(rx.gaps for rx in rxs),
            "duplicates": sum(rx.duplicates for rx in rxs),
            "sender_done": self.sender_done.is_set(),
            # CPU seconds of the workload's own fill and check (per thread, thread_time)
            "fill_check_s": self.fill_s + sum(rx.check_s for rx in rxs),
            "receiver_errors": {c: r.error for c, r in self._receivers.items() if r.error},
        }

    def latencies_us(self, limit: int) -> list[float]:
        """Up to `limit` latency samples (microseconds), evenly spread over the run."""
        lat = [x for rx in self._rx.values() for x in rx.latencies_ns]
        step = max(1, -(-len(lat) // limit)) if limit > 0 else len(lat) + 1
        return [x / 1000 for x in lat[::step]]

    def snapshot(self, latency_samples: int = 0) -> dict:
        lat = sorted(x for rx in self._rx.values() for x in rx.latencies_ns)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else 0.0

        received: Counter = Counter()
        for rx in self._rx.values():
            received.update(rx.received)
        counts = self.counts()
        snap = {
            "sent": {str(k): v for k, v in self.sent.items()},
            "bytes_out": self.bytes_out,
            "received": {str(k): v for k, v in received.items()},
            "bytes_in": counts["bytes_in"],
            "corrupt": counts["corrupt"],
            "gaps": counts["gaps"],
            "duplicates": counts["duplicates"],
            "errors": dict(self.errors),
            "sender_done": self.sender_done.is_set(),
            "latency_p50_us": pct(0.5),
            "latency_p99_us": pct(0.99),
            "batch_used": self.batch_used,
            "fill_check_s": counts["fill_check_s"],
        }
        if latency_samples:
            snap["latency_samples_us"] = self.latencies_us(latency_samples)
        return snap
