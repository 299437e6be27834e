"""The built-in user workload: send verified packets to peers, verify every arrival.

Runs inside a partition process on two threads: a sender that fills packets in the partition's
own memory and hands them to the driver, and a receiver that sleeps on the doorbell and checks
each record (source, per-pair sequence number, contents). Counters are plain ints updated by one
thread each, read by the command loop for snapshots.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from adapter.errors import XpmoveError
from partitions.driver import FLOWS, Driver
from partitions.memory import PartitionView
from partitions.pattern import MIN_PACKET, Pattern
from partitions.receiver import Receiver

WAKE_TIMEOUT_S = 0.05  # receiver re-checks its stop flag at least this often
LATENCY_SAMPLES = 100_000


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

    @classmethod
    def from_message(cls, msg: dict, view_size: int) -> TrafficPlan:
        peers = tuple(int(p) for p in msg.get("peers", ()))
        flows = tuple(msg.get("flows", ("fig11",)))
        size = int(msg.get("size", 256))
        packets = msg.get("packets")
        duration = msg.get("duration")
        for f in flows:
            if f not in FLOWS:
                raise PlanError(f"flows: unknown flow {f!r} (known: {sorted(FLOWS)})")
        if not MIN_PACKET <= size <= view_size:
            raise PlanError(f"size: {size} must be in [{MIN_PACKET}, {view_size}]")
        if packets is None and duration is None:
            raise PlanError("packets/duration: give at least one bound")
        return cls(peers, flows, size, None if packets is None else int(packets),
                   None if duration is None else float(duration),
                   float(msg.get("send_timeout", 5.0)))


@dataclass
class ReceiveStats:
    received: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    corrupt: int = 0
    gaps: int = 0
    duplicates: int = 0
    last_seq: dict = field(default_factory=dict)
    latencies_ns: list = field(default_factory=list)


class Traffic:
    def __init__(self, network_id: int, driver: Driver, receiver: Receiver, view: PartitionView):
        self.network_id = network_id
        self.driver = driver
        self.receiver = receiver
        self.view = view
        self.pattern = Pattern(view.layout.receive_offset)
        self.sent: Counter = Counter()
        self.bytes_out = 0
        self.errors: Counter = Counter()
        self.rx = ReceiveStats()
        self.sender_done = threading.Event()
        self.sender_done.set()
        self._stop = threading.Event()
        self._receiver_thread: threading.Thread | None = None

    # -- receive side --------------------------------------------------------------------
    def start_receiving(self) -> None:
        if self._receiver_thread is None:
            self._receiver_thread = threading.Thread(target=self._receive_loop, daemon=True,
                                                     name="receiver")
            self._receiver_thread.start()

    def _on_packet(self, source_id: int, seq: int, payload: memoryview) -> None:
        rx = self.rx
        ok, _counter, sent_ns = self.pattern.check(payload, source_id, self.network_id)
        if not ok:
            rx.corrupt += 1
            return
        last = rx.last_seq.get(source_id, 0)
        if seq <= last:
            rx.duplicates += 1
            return
        if seq != last + 1:
            rx.gaps += seq - last - 1
        rx.last_seq[source_id] = seq
        rx.received[source_id] += 1
        rx.bytes_in += len(payload)
        if len(rx.latencies_ns) < LATENCY_SAMPLES:
            rx.latencies_ns.append(time.monotonic_ns() - sent_ns)

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            if not self.receiver.drain(self._on_packet):
                self.receiver.wait(WAKE_TIMEOUT_S)

    # -- send side -----------------------------------------------------------------------
    def start_sending(self, plan: TrafficPlan) -> None:
        if not self.sender_done.is_set():
            raise PlanError("traffic: already sending")
        self.sender_done.clear()
        threading.Thread(target=self._send_loop, args=(plan,), daemon=True, name="sender").start()

    def _send_loop(self, plan: TrafficPlan) -> None:
        counters: dict[int, int] = defaultdict(int)
        buf = self.view.buffer(0, plan.size)
        end = None if plan.duration is None else time.monotonic() + plan.duration
        rounds = 0
        try:
            while not self._stop.is_set():
                if plan.packets is not None and rounds >= plan.packets:
                    break
                if end is not None and time.monotonic() >= end:
                    break
                for peer in plan.peers:
                    for flow in plan.flows:
                        counters[peer] += 1
                        self.pattern.fill(buf, self.network_id, peer, counters[peer],
                                          time.monotonic_ns())
                        try:
                            self.driver.send(peer, 0, plan.size, flow, timeout=plan.send_timeout)
                        except XpmoveError as exc:
                            self.errors[type(exc).__name__] += 1
                            counters[peer] -= 1
                            continue
                        self.sent[peer] += 1
                        self.bytes_out += plan.size
                rounds += 1
        finally:
            buf.release()
            self.sender_done.set()

    def stop(self) -> None:
        self._stop.set()
        self.sender_done.wait(10)
        if self._receiver_thread is not None:
            self._receiver_thread.join(10)

    def snapshot(self) -> dict:
        lat = sorted(self.rx.latencies_ns)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else 0.0

        return {
            "sent": {str(k): v for k, v in self.sent.items()},
            "bytes_out": self.bytes_out,
            "received": {str(k): v for k, v in self.rx.received.items()},
            "bytes_in": self.rx.bytes_in,
            "corrupt": self.rx.corrupt,
            "gaps": self.rx.gaps,
            "duplicates": self.rx.duplicates,
            "errors": dict(self.errors),
            "sender_done": self.sender_done.is_set(),
            "latency_p50_us": pct(0.5),
            "latency_p99_us": pct(0.99),
        }
