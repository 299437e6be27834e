"""One run of the bench (scripts/loadgen/bench.py): its plan (who sends what to whom), and
`Bench`, which carries runs out on a started machine (and virtual switch: vswitch_process.py)
and turns the samples of T and C into a result: S = dT/dC (benchcore.fit_s), the transport's
own share, latency, what was lost or corrupt."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import Progress

from hypervisor.machine import Machine, MachineError
from scripts.loadgen import benchcore
from scripts.loadgen.benchcore import BenchError, Sample, SlopeError, human_size, interval_line
from scripts.loadgen.measure import CpuMeter
from scripts.loadgen.options import (
    ADAPTER_TRANSPORTS,
    DRAIN_TIMEOUT_S,
    LATENCY_SAMPLES,
    LATENCY_SIZE,
    PACKETS_TIMEOUT_S,
    REPORT_S,
    SAMPLE_S,
    BenchOptions,
    latency_shares,
)
from scripts.loadgen.vswitch_process import VSwitchProcess
from scripts.workload.iceoryx2_peer import HOME, Iceoryx2Home
from scripts.workload.peers import ICEORYX2


@dataclass
class RunPlan:
    transport: str
    size: int
    routes: list[tuple[int, int]]
    batch: int = 1
    phase: str = "main"  # main | single-stream | scaling

    @property
    def senders(self) -> list[int]:
        return sorted({s for s, _ in self.routes})

    @property
    def receivers(self) -> list[int]:
        return sorted({d for _, d in self.routes})

    @property
    def participants(self) -> list[int]:
        return sorted(set(self.senders) | set(self.receivers))

    def peers(self, sender: int) -> list[int]:
        return [d for s, d in self.routes if s == sender]

    @property
    def label(self) -> str:
        return f"{self.transport:>7} b{self.batch:<3} {human_size(self.size):>7}"


@dataclass
class Bench:
    machine: Machine
    options: BenchOptions
    console: Console
    switch: VSwitchProcess | None = None
    progress: Progress | None = None
    runs: list[dict] = field(default_factory=list)
    last_cpu: dict[str, float] = field(default_factory=dict)
    work_s: list[float] = field(default_factory=list)
    peer_home: Iceoryx2Home | None = None  # where the partitions' iceoryx2 nodes keep files

    def call(self, nid: int, msg: dict) -> dict:
        reply = self.machine.call(nid, msg)
        if not reply.get("ok"):
            raise BenchError(f"partition {nid} refused {msg.get('cmd')!r}: "
                             f"{reply.get('error')}: {reply.get('message')}")
        return reply

    def path_pids(self, transport: str) -> dict[str, int]:
        pids = {"bench": os.getpid()}
        for nid, child in self.machine.partitions.items():
            pids[f"partition {nid} ({child.name})"] = self.machine.pid(nid)
        if transport in ADAPTER_TRANSPORTS:
            pids["adapter"] = self.machine.pid()
        if transport == "vswitch":
            assert self.switch is not None
            pids["vswitch"] = self.switch.pid
        return pids

    def _open(self, transport: str, participants: list[int]) -> dict[int, int]:
        """bench_open on every participant; the tcp listeners' ports, the peers' addresses."""
        ports: dict[int, int | str] = {}
        for nid in participants:
            msg = {"cmd": "bench_open", "transport": transport}
            if transport == "vswitch":
                assert self.switch is not None
                msg["vswitch_port"] = self.switch.port
            if transport == ICEORYX2 and self.peer_home is not None:
                msg[HOME] = self.peer_home.message()
            reply = self.call(nid, msg)
            if "port" in reply or "address" in reply:
                ports[nid] = reply.get("port", reply.get("address"))
        return ports

    def _close(self, participants: list[int]) -> dict[int, dict]:
        """bench_close on every participant (each tried, whatever the others said)."""
        stats: dict[int, dict] = {}
        for nid in participants:
            try:
                stats[nid] = self.call(nid, {"cmd": "bench_close",
                                             "latency_samples": LATENCY_SAMPLES})["stats"]
            except (BenchError, MachineError) as exc:
                self.console.print(f"[red]closing the run on partition {nid}: {exc}")
        return stats

    def run(self, plan: RunPlan) -> dict:
        o = self.options
        ports = self._open(plan.transport, plan.participants)
        requests0 = self._adapter_requests() if plan.transport in ADAPTER_TRANSPORTS else None
        try:
            meter = CpuMeter(self.path_pids(plan.transport))
            cpu0 = meter.by_process()
            t0 = time.monotonic()
            batch_used = plan.batch
            for s in plan.senders:
                peers = plan.peers(s)
                reply = self.call(s, {
                    "cmd": "bench_send", "transport": plan.transport, "peers": peers,
                    "size": plan.size, "batch": plan.batch, "packets": o.packets,
                    "duration": None if o.packets is not None else o.duration,
                    "ports": {str(d): ports[d] for d in peers if d in ports}})
                batch_used = min(batch_used, reply.get("batch_used", plan.batch))
            samples, sent, failed = self._sample(plan, meter, t0, sum(cpu0.values()))
            cpu1 = self.last_cpu  # read with the last sample, so it adds up to its C
        finally:
            stats = self._close(plan.participants)
        result = self._result(plan, samples, sent, failed, stats, batch_used,
                              {k: cpu1[k] - cpu0[k] for k in cpu0})
        if plan.transport in ADAPTER_TRANSPORTS and requests0 is not None:
            requests = self._adapter_requests()
            if requests is not None and result["packets"]:
                result["adapter_requests_per_packet"] = (requests - requests0) / \
                    result["packets"]  # after the drain: every request of the run counted
        return result

    def _adapter_requests(self) -> int | None:
        """The adapter's request counter (None if it cannot be asked): requests per packet
        show how well per-packet calls coalesce."""
        try:
            return int(self.machine.adapter_stats()["counters"].get("requests", 0))
        except (MachineError, KeyError, TypeError, ValueError):
            return None

    def lone_latencies(self, transports: Sequence[str], route: tuple[int, int],
                       advance: Callable[[], None] = lambda: None) -> dict[str, dict]:
        """One-way latency of lone 64 B packets for each transport: batch 1, one route, one
        packet per `latency_interval` (far longer than a packet takes), so each travels on an
        idle path. The latency is the receiver's clock at verification minus the send time in
        the packet (CLOCK_MONOTONIC, shared by every process). The transports take turns, in
        LATENCY_ROUNDS rounds of a share of `latency_packets` each, their samples pooled."""
        shares = latency_shares(self.options.latency_packets)
        pooled = {t: {"lat": [], "received": 0, "corrupt": 0, "lost": 0} for t in transports}
        for k in shares:
            for t in transports:
                got = self._lone_round(t, route, k)
                for key, value in got.items():
                    pooled[t][key] += value
                advance()
        return {t: {"transport": t, "packet_size": LATENCY_SIZE, "batch": 1,
                    "route": list(route), "interval_s": self.options.latency_interval,
                    "packets": p["received"], "rounds": len(shares),
                    "p50_us": benchcore.percentile(p["lat"], 0.50),
                    "p99_us": benchcore.percentile(p["lat"], 0.99),
                    "max_us": max(p["lat"], default=0.0), "samples": len(p["lat"]),
                    "lost": p["lost"], "corrupt": p["corrupt"]}
                for t, p in pooled.items()}

    def _lone_round(self, transport: str, route: tuple[int, int], n: int) -> dict:
        """`n` lone packets of `transport` on `route`: their latency samples (µs) and the
        counts (received, corrupt, lost)."""
        o = self.options
        src, dst = route
        participants = sorted({src, dst})
        ports = self._open(transport, participants)
        try:
            self.call(src, {"cmd": "bench_send", "transport": transport, "peers": [dst],
                            "size": LATENCY_SIZE, "batch": 1, "packets": n, "duration": None,
                            "interval": o.latency_interval,
                            "ports": {str(dst): ports[dst]} if dst in ports else {}})
            deadline = time.monotonic() + n * o.latency_interval + DRAIN_TIMEOUT_S
            while True:
                time.sleep(SAMPLE_S / 2)  # polling interval against a deadline
                rx, tx = (self.call(nid, {"cmd": "bench_count"}) for nid in (dst, src))
                if rx["received"] + rx["corrupt"] + rx["duplicates"] >= n or (
                        tx["sender_done"] and rx["received"] + rx["corrupt"] >= tx["sent"]):
                    break
                if self.machine.poll():
                    raise BenchError(f"a partition died during the {transport} latency phase")
                if time.monotonic() > deadline:
                    self._print(f"[red]{transport} latency: cut off with {rx['received']} of "
                                f"{n} packets in")
                    break
        finally:
            stats = self._close(participants)
        rx_stats, tx_stats = stats.get(dst, {}), stats.get(src, {})
        received = sum(rx_stats.get("received", {}).values())
        corrupt = rx_stats.get("corrupt", 0) + rx_stats.get("duplicates", 0)
        attempted = sum(tx_stats.get("sent", {}).values()) + sum(
            tx_stats.get("errors", {}).values())
        return {"lat": list(rx_stats.get("latency_samples_us", [])), "received": received,
                "corrupt": corrupt, "lost": max(0, attempted - received - corrupt)}

    def _counts(self, plan: RunPlan) -> dict[int, dict]:
        return {nid: self.call(nid, {"cmd": "bench_count"}) for nid in plan.participants}

    def _sample(self, plan: RunPlan, meter: CpuMeter, t0: float, cpu0: float
                ) -> tuple[list[Sample], int, int]:
        """Sample T and C until every sender is done and every packet is in (or timed out).

        `t0` and `cpu0` were read before the first sender started, and the receivers' counters
        were zeroed before that, so T and C share one origin.
        """
        o = self.options
        samples = [Sample(0.0, 0.0, 0, 0, True)]
        self.work_s = [0.0]  # fill + check CPU seconds of every participant, per sample
        expected = None if o.packets is None else o.packets * len(plan.routes)
        limit = PACKETS_TIMEOUT_S if o.packets is not None else (o.duration or 0) + \
            DRAIN_TIMEOUT_S
        task = None
        if self.progress is not None:
            task = self.progress.add_task(plan.label, total=expected or o.duration or 1)
        last_report = samples[0]
        drain_deadline = None
        next_at = t0 + SAMPLE_S
        try:
            while True:
                time.sleep(max(0.0, next_at - time.monotonic()))  # pacing the samples
                next_at = max(next_at + SAMPLE_S, time.monotonic() + SAMPLE_S / 2)
                counts = self._counts(plan)
                self.last_cpu = meter.by_process()
                cpu = sum(self.last_cpu.values()) - cpu0
                now = time.monotonic() - t0
                received = sum(counts[r]["received"] for r in plan.receivers)
                nbytes = sum(counts[r]["bytes_in"] for r in plan.receivers)
                bad = sum(counts[r]["corrupt"] + counts[r]["duplicates"] for r in plan.receivers)
                sent = sum(counts[s]["sent"] for s in plan.senders)
                failed = sum(counts[s]["failed"] for s in plan.senders)
                done = [counts[s]["sender_done"] for s in plan.senders]
                broken = {n: c["receiver_errors"] for n, c in counts.items()
                          if c.get("receiver_errors")}
                if broken:
                    raise BenchError(f"receiver failed during {plan.label.strip()}: {broken}")
                samples.append(Sample(now, cpu, received, nbytes, not any(done)))
                self.work_s.append(sum(c.get("fill_check_s", 0.0) for c in counts.values()))
                if now - last_report.wall_s >= REPORT_S - 1e-6:
                    last = samples[-1]
                    self._print(interval_line(plan.label, last_report.wall_s, last.wall_s,
                                              last.packets - last_report.packets,
                                              last.bytes - last_report.bytes,
                                              last.cpu_s - last_report.cpu_s), markup=False)
                    last_report = last
                if self.progress is not None and task is not None:
                    self.progress.update(task, completed=received if expected else min(
                        now, o.duration or 1))
                dead = self.machine.poll()
                if dead:
                    raise BenchError(f"{', '.join(c.name for c in dead)} died during "
                                     f"{plan.transport} b{plan.batch} {plan.size} B")
                if self.switch is not None and self.switch.proc is not None \
                        and self.switch.proc.poll() is not None:
                    raise BenchError("the virtual switch died")
                if all(done):
                    if received + bad >= sent:
                        break
                    drain_deadline = drain_deadline or time.monotonic() + DRAIN_TIMEOUT_S
                    if time.monotonic() > drain_deadline:
                        self._print(f"[red]{plan.label}: receivers still miss "
                                    f"{sent - received - bad} packets after {DRAIN_TIMEOUT_S} s")
                        break
                if now > limit:
                    self._print(f"[red]{plan.label}: cut off after {limit:.0f} s")
                    break
        finally:
            if self.progress is not None and task is not None:
                self.progress.remove_task(task)
        return samples, sent, failed

    def _print(self, text: str, markup: bool = True) -> None:
        (self.progress.console if self.progress is not None else self.console).print(
            text, highlight=False, markup=markup)

    def _result(self, plan: RunPlan, samples: list[Sample], sent: int, failed: int,
                stats: dict[int, dict], batch_used: int, cpu_by: dict[str, float]) -> dict:
        o = self.options
        rx = [stats.get(r, {}) for r in plan.receivers]
        packets = sum(sum(s.get("received", {}).values()) for s in rx)
        nbytes = sum(s.get("bytes_in", 0) for s in rx)
        corrupt = sum(s.get("corrupt", 0) + s.get("duplicates", 0) for s in rx)
        errors: dict[str, int] = {}
        for s in stats.values():
            for k, v in s.get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        sent = max(sent, sum(sum(stats.get(s, {}).get("sent", {}).values())
                             for s in plan.senders))
        attempted = sent + sum(errors.values())
        lost = max(0, attempted - packets - corrupt)
        latencies = [x for s in rx for x in s.get("latency_samples_us", [])]
        last = samples[-1]
        try:
            fit = benchcore.fit_s(samples, o.warmup, o.tail)
            s_value, fit_info = fit.s, {"first": fit.first, "last": fit.last,
                                        "samples": fit.used, "steady": fit.steady}
        except SlopeError as exc:
            s_value, fit_info = 0.0, {"error": str(exc)}
        s_transport = None
        if "error" not in fit_info and len(self.work_s) == len(samples):
            try:
                s_transport = benchcore.fit_s(benchcore.without_work(samples, self.work_s),
                                              o.warmup, o.tail).s
            except SlopeError:
                pass
        wall = max(last.wall_s, 1e-9)
        return {
            "transport": plan.transport,
            "packet_size": plan.size,
            "packets": packets,
            "bytes": nbytes,
            "cpu_s": last.cpu_s,
            "wall_s": last.wall_s,
            "S": s_value,
            # S on C minus the workload's fill and check CPU (per thread, every participant)
            "S_transport": s_transport,
            "fill_check_s": round(sum(s.get("fill_check_s", 0.0) for s in stats.values()), 6),
            "pps": packets / wall,
            "bytes_per_s": nbytes / wall,
            "latency_p50_us": benchcore.percentile(latencies, 0.50),
            "latency_p99_us": benchcore.percentile(latencies, 0.99),
            "lost": lost,
            "corrupt": corrupt,
            "series": [[round(s.cpu_s, 5), s.packets] for s in samples],
            # more than the required shape:
            "wall_series": [round(s.wall_s, 4) for s in samples],
            "fit": fit_info,
            "sent": sent,
            "send_errors": errors,
            "gaps": sum(s.get("gaps", 0) for s in rx),
            "routes": [list(r) for r in plan.routes],
            "batch": plan.batch,
            "label": f"{plan.transport} b{plan.batch}",
            "phase": plan.phase,
            "batch_used": batch_used,
            "cpu_by_process": {k: round(v, 4) for k, v in cpu_by.items()},
            "latency_samples": len(latencies),
        }


