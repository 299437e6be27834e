"""The built-in user workload: send verified packets to peers, verify every arrival.

Runs inside a partition process: one sender thread fills packets in the partition's own memory
and hands them, a batch at a time, to a send transport (scripts/workload/transports.py: the
adapter's flows, the prior art's tcp and virtual switch, the peers); one receiver thread per
receive endpoint checks each arrival (source, per-pair sequence number, contents) with the same
memcmp-speed check whatever carried it (receive_check.py). Counters are plain ints updated by
one thread each, read by the command loop for snapshots.

Sequence numbers are checked per *channel* (the adapter's rings, tcp, vswitch): each has its own
per-pair numbering, which lives as long as the partition, so `reset()` between benchmark runs
zeroes the counters but not the expected next sequence numbers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial

from adapter.protocol import Flow
from partitions.blocks import SMALL_BLOCK
from partitions.memory import PartitionView
from scripts.workload.pattern import MIN_PACKET, Pattern
from scripts.workload.receive_check import TIME_EVERY, ReceiveStats, make_handler
from scripts.workload.transports import (
    Batch,
    ReceiveEndpoint,
    SendTransport,
    batch_capacity,
    make_batch,
)

WAKE_TIMEOUT_S = 0.05  # receivers re-check their stop flag at least this often
JOIN_TIMEOUT_S = 10.0


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
            endpoint, make_handler(channel, rx, self.pattern, self.network_id,
                                   self._last_seq), f"receiver-{channel}")

    def stop_receiving(self, channel: str) -> None:
        receiver = self._receivers.pop(channel, None)
        if receiver is not None:
            receiver.join()
            if receiver.error:
                self.errors[f"receiver-{channel}"] += 1

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
