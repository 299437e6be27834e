"""`xpmove bench`: the load generator of Fig 14, the invention side by side with the prior art.

One machine, one run per (packet size, transport), sizes in the outer loop so the transports
of one size are measured back to back under the same conditions:

* ``fig11`` / ``fig12``: partitions move packets through the cross-partition adapter (at batch
  1, one per-packet `port.send_from` call each, queued: the port coalesces them into runs).
* ``fig12-loan``: Fig 12 with no move, the packets are filled in the destination's ring (a
  loan, `port.loan_run`), then committed.
* ``fig12-lease``: under a standing grant (`port.lease`), no request at all: one `lease.send`
  per packet at batch 1, each bigger batch a run loaned under the lease and filled in place.
* ``fig11-sync`` / ``fig12-sync``: the patent's literal flow, one synchronous request per packet
  (`sync=True`); run at batch 1 only (batched, they are fig11 / fig12).
* ``vswitch``: the prior art of Fig 7B, TCP on loopback through a virtual switch process that
  the bench starts next to the machine (scripts/loadgen/vswitch.py).
* ``tcp``: the prior art without the switch, partition to partition over TCP on loopback.
* ``zmq``, ``pipe``, ``iceoryx2``: what a Python user would pick instead (the ``peers`` extra;
  scripts/workload/peers.py): pyzmq PUSH/PULL over ipc://, multiprocessing Connections over
  AF_UNIX, iceoryx2 publish-subscribe with zero-copy loans. A peer whose package is missing is
  skipped with a note.

The same partition processes, running the built-in workload program (scripts/workload/), send
the same packets (pattern.py) and verify every one with the same check; transports.py holds
all per-transport code.

While a run goes on the bench samples, every SAMPLE_S, T (packets delivered and verified, asked
of the receivers) and C (user + system CPU seconds, psutil, of every process on the path: all
partitions, the adapter for fig11/fig12/fig12-loan, the switch for vswitch, and this process, whose
polling is thus charged to every transport alike). S = dT/dC is fitted by
scripts.loadgen.benchcore.fit_s on the steady-state samples. Exit status 1 if any packet was
lost or corrupt (or a run failed), 130 when interrupted. Beside the runs: measure.py (the CPU
meter, memcpy, the floor), report.py (the tables, the Markdown summary), targets.py.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from adapter.protocol import Flow
from adapter.ring import max_payload
from hypervisor.config import ConfigError, MachineConfig, load_config, with_program
from hypervisor.layout import SegmentLayout
from hypervisor.machine import Machine, MachineError
from hypervisor.names import RunRegistry
from partitions.blocks import SMALL_BLOCK
from scripts.launch import signals_deferred
from scripts.loadgen import benchcore, targets
from scripts.loadgen.benchcore import (
    BenchError,
    Sample,
    SlopeError,
    human_size,
    interval_line,
    run_label,
)
from scripts.loadgen.measure import FLOOR_SECONDS, CpuMeter, floors, host_info
from scripts.loadgen.plot import plot_fig14, require_matplotlib
from scripts.loadgen.report import (
    detail_table,
    floor_table,
    latency_table,
    markdown_summary,
    relative_to_tcp,
    scaling_table,
    summary_tables,
    targets_table,
)
from scripts.workload import peers as peer_transports
from scripts.workload.pattern import MIN_PACKET
from scripts.workload.program import PROGRAM
from scripts.workload.traffic import TIME_EVERY
from scripts.workload.transports import (
    FRAME,
    LEASE,
    LOAN,
    SYNC_SUFFIX,
)

ADAPTER_FLOWS = tuple(f.value for f in Flow)
SYNC_FLOWS = tuple(f + SYNC_SUFFIX for f in ADAPTER_FLOWS)  # batch 1 only: one request a packet
BATCHING = (*ADAPTER_FLOWS, LOAN)  # the adapter's transports the single-stream and scaling use
ADAPTER_TRANSPORTS = (*BATCHING, LEASE, *SYNC_FLOWS)  # every transport through the adapter
TRANSPORTS = (*ADAPTER_TRANSPORTS, "vswitch", "tcp", *peer_transports.PEERS)  # every one known
DEFAULT_TRANSPORTS = (*ADAPTER_TRANSPORTS, "vswitch", "tcp", *peer_transports.available())
DEFAULT_SIZES = (64, 1024, 64 * 1024, 1024 * 1024)
SAMPLE_S = 0.1
REPORT_S = 0.5
DRAIN_TIMEOUT_S = 15.0  # after the senders stop, how long receivers may take to catch up
PACKETS_TIMEOUT_S = 120.0  # a --packets run that takes longer than this is cut off
LATENCY_SAMPLES = 20_000  # per receiver, for the pooled percentiles
SWITCH_TIMEOUT_S = 10.0
DEFAULT_BATCHES = (1, 32)  # the patent's literal flow, and batched
LATENCY_SIZE = 64
LATENCY_PACKETS = 200
# The lone-packet phase goes round the transports this many times, each round a share of the
# packets: a slow spell of the shared host (a phase is 0.4 s of 2 ms gaps) then falls on every
# transport alike instead of on the one measured at that moment.
LATENCY_ROUNDS = 4


def latency_shares(packets: int) -> list[int]:
    """How many lone packets each round of the latency phase sends: `packets` split over
    LATENCY_ROUNDS rounds (fewer if there are fewer packets), as evenly as it goes."""
    return [k for k in (packets // LATENCY_ROUNDS + (i < packets % LATENCY_ROUNDS)
                        for i in range(LATENCY_ROUNDS)) if k]
LATENCY_INTERVAL_S = 0.002  # pace of the lone packets: one per 2 ms, each alone on the path
SIXTEEN = Path(__file__).resolve().parents[2] / "configs" / "sixteen.toml"


@dataclass(frozen=True)
class BenchOptions:
    transports: tuple[str, ...] = DEFAULT_TRANSPORTS
    sizes: tuple[int, ...] | None = None  # None: DEFAULT_SIZES, capped to what the rings take
    duration: float | None = 2.0  # seconds of sending per run (ignored with packets)
    packets: int | None = None  # per sender and destination
    topology: str = "pairs"
    pairs: str | None = None  # explicit "1:2,3:4", overrides topology
    batches: tuple[int, ...] = DEFAULT_BATCHES  # every (transport, size) runs once per value
    latency: bool = True  # the lone-packet latency phase
    latency_packets: int = LATENCY_PACKETS
    latency_interval: float = LATENCY_INTERVAL_S
    single_stream: bool = True  # the single-stream 1 MiB phase (bytes/s against memcpy)
    scaling: bool = False  # the 2- against 16-partition phase
    scaling_config: str | None = None  # None: configs/sixteen.toml
    json_path: str | None = None
    plot_path: str | None = None
    markdown_path: str | None = None
    warmup: float = benchcore.WARMUP
    tail: float = benchcore.TAIL
    config: str = ""  # what machine ran: the --config path or the built-in bench machine
    command: str = ""


# -- processes on the path --------------------------------------------------------------------


class VSwitchProcess:
    """The virtual switch child: started and stopped (always reaped) by the bench."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.final: dict = {}

    def start(self) -> VSwitchProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "scripts.loadgen.vswitch"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = _read_line(self.proc, SWITCH_TIMEOUT_S)
        parts = line.split()
        if len(parts) != 4 or parts[:2] != ["vswitch", "listening"]:
            self.stop()
            raise BenchError(f"vswitch did not start (said {line!r}, exit {self.proc.poll()})")
        self.port = int(parts[3])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> dict:
        """EOF on its stdin stops it; it answers with its counters. Always reaped."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.final
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            line = _read_line(proc, SWITCH_TIMEOUT_S)
            try:
                self.final = json.loads(line) if line else {}
            except ValueError:
                self.final = {"unparsed": line}
            proc.wait(SWITCH_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        return self.final


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout, waiting at most `timeout` (never blocks past it)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in out:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace").strip()


# -- one run ----------------------------------------------------------------------------------


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


@dataclass
class Outcome:
    """How the bench's phases ended: interrupted (Ctrl-C) or failed (a run could not be
    carried out); either stops the phases after it."""

    interrupted: bool = False
    failed: bool = False

    @contextmanager
    def phase(self, console: Console, on_interrupt: str, on_failure: str) -> Iterator[None]:
        """Run a phase; Ctrl-C or a BenchError/MachineError ends it with a line saying so."""
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
            console.print(f"[yellow]interrupted: {on_interrupt}")
        except (BenchError, MachineError) as exc:
            self.failed = True
            console.print(f"[red]{on_failure}: {exc}")


# -- the command ------------------------------------------------------------------------------


def size_limit(layout: SegmentLayout, transports: tuple[str, ...]) -> tuple[int, str]:
    """The largest packet every partition can send (sender area) and receive (its ring)."""
    limit, why = None, ""
    for p in layout.partitions:
        for cap, what in ((p.receive_offset - FRAME.size, f"sender area of {p.name}"),
                          (max_payload(p.receive_size) if any(
                              t in ADAPTER_TRANSPORTS for t in transports) else None,
                           f"{human_size(p.receive_size)} receive ring of {p.name}")):
            if cap is not None and (limit is None or cap < limit):
                limit, why = cap, what
    assert limit is not None
    return limit, why


def choose_sizes(options: BenchOptions, layout: SegmentLayout, console: Console
                 ) -> tuple[int, ...]:
    """The run's packet sizes: given ones are checked, default ones capped to the limit."""
    limit, why = size_limit(layout, options.transports)
    if options.sizes is None:
        sizes = tuple(dict.fromkeys(min(s, limit) for s in DEFAULT_SIZES))
        for s in DEFAULT_SIZES:
            if s > limit:
                console.print(f"note: default size {human_size(s)} capped to {limit:,} B, the "
                              f"largest packet the {why} accepts")
        return sizes
    for size in options.sizes:
        if size < MIN_PACKET:
            raise SystemExit(f"xpmove bench: --sizes: {size} is below the minimum packet of "
                             f"{MIN_PACKET} bytes")
        if size > limit:
            raise SystemExit(f"xpmove bench: --sizes: {size:,} B is larger than the {why} "
                             f"accepts ({limit:,} B)")
    return options.sizes


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                    TextColumn("{task.completed:,.1f}/{task.total:,.1f}"), TimeElapsedColumn(),
                    console=console, transient=True, refresh_per_second=4)


def scaling_configs(options: BenchOptions) -> tuple[MachineConfig, MachineConfig]:
    """The scaling phase's machines: the first two partitions of the sixteen-partition config,
    and all of them (checked before anything starts)."""
    path = options.scaling_config or str(SIXTEEN)
    try:
        big = load_config(path)
    except ConfigError as exc:
        raise SystemExit(f"xpmove bench: --scaling: {exc}") from None
    if len(big.partitions) < 3:
        raise SystemExit(f"xpmove bench: --scaling: {path} has {len(big.partitions)} "
                         f"partitions; it needs more than 2")
    return replace(big, partitions=big.partitions[:2]), big


def scaling_phase(options: BenchOptions, configs: tuple[MachineConfig, ...], console: Console,
                  registry: RunRegistry | None) -> list[dict]:
    """fig11/fig12/fig12-loan at 1 KiB all-to-all on each machine in turn (never two at once),
    per batch."""
    flows = [t for t in options.transports if t in BATCHING] or list(BATCHING)
    out: list[dict] = []
    for cfg in configs:
        machine = Machine(with_program(cfg, PROGRAM), registry=registry)
        try:
            machine.start()
            ids = [p.network_id for p in cfg.partitions]
            route_list = benchcore.routes(ids, "all-to-all")
            console.print(f"scaling: {len(ids)} partitions up, {len(route_list)} routes")
            with _progress(console) as progress:
                b = Bench(machine, options, console, None, progress)
                for batch in options.batches:
                    for t in flows:
                        r = b.run(RunPlan(t, benchcore.SCALING_SIZE, route_list, batch,
                                          "scaling"))
                        r["partitions"] = len(ids)
                        out.append(r)
        finally:
            with signals_deferred():
                machine.stop()
    return out


def run_matrix(sizes: list[int] | tuple[int, ...], options: BenchOptions
               ) -> list[tuple[int, int, str]]:
    """(size, batch, transport) of every run, in order; fig11-sync / fig12-sync at batch 1
    only (batched, they would be fig11 / fig12)."""
    return [(size, batch, t) for size in sizes for batch in options.batches
            for t in options.transports if batch == 1 or t not in SYNC_FLOWS]


def bench(config: MachineConfig, options: BenchOptions, console: Console | None = None,
          registry: RunRegistry | None = None) -> tuple[int, dict]:
    """Run every (size, batch, transport), then the single-stream, lone-packet latency and
    (with options.scaling) scaling phases; judge issue 14's targets (targets.py).
    Return (exit status, results in the --json shape). Missed targets do not change the
    exit status: they are reported."""
    console = console or Console()
    for t in options.transports:
        if t not in TRANSPORTS:
            raise SystemExit(f"xpmove bench: --transports: unknown {t!r} (use {TRANSPORTS})")
    usable, notes = benchcore.installed_transports(
        options.transports, peer_transports.PEER_MODULES, peer_transports.installed)
    for note in notes:
        console.print(note, highlight=False, markup=False)
    if not usable:
        raise SystemExit("xpmove bench: --transports: none of them is installed")
    options = replace(options, transports=usable)
    if not options.batches or any(b < 1 for b in options.batches):
        raise SystemExit(f"xpmove bench: --batch {options.batches}: give values >= 1")
    if options.plot_path:
        require_matplotlib()
    scaling_cfgs = scaling_configs(options) if options.scaling else None
    machine = Machine(with_program(config, PROGRAM), registry=registry)
    sizes = choose_sizes(options, machine.layout, console)
    ids = [p.network_id for p in config.partitions]
    try:
        route_list = (benchcore.parse_routes(options.pairs, ids) if options.pairs
                      else benchcore.routes(ids, options.topology))
    except ValueError as exc:
        raise SystemExit(f"xpmove bench: {exc}") from None
    switch = VSwitchProcess() if "vswitch" in options.transports else None
    results: dict = {"runs": [], "host": {}}
    adapter_flows = [t for t in options.transports if t in BATCHING]
    big = [s for s in sizes if benchcore.matches_size(s, benchcore.MiB_)]
    stream_plans = [RunPlan(t, big[0], route_list[:1], batch, "single-stream")
                    for batch in options.batches for t in adapter_flows] \
        if options.single_stream and big and len(route_list) > 1 else []
    outcome = Outcome()
    try:
        with outcome.phase(console, "stopping the machine", "bench failed"):
            machine.start()
            if switch is not None:
                switch.start()
            results["host"] = host_info(machine)
            rings = "/".join(human_size(r) for r in sorted(
                {p.receive_size for p in config.partitions}))
            console.print(f"machine up: run {machine.prefix}, {len(machine.partitions)} "
                          f"partitions, {rings} rings; "
                          f"routes {', '.join(f'{s}->{d}' for s, d in route_list)}; "
                          f"batch {','.join(map(str, options.batches))}; memcpy "
                          f"{results['host']['memcpy_GBps']:.1f} GB/s in cache, "
                          f"{results['host']['memcpy_dram_GBps']:.1f} GB/s "
                          f"over {results['host']['memcpy_dram_working_set_bytes'] >> 20} MiB")
            b = Bench(machine, options, console, switch)
            plans = [RunPlan(t, size, route_list, batch)
                     for size, batch, t in run_matrix(sizes, options)]
            with _progress(console) as progress:
                b.progress = progress
                overall = progress.add_task("runs", total=len(plans) + len(stream_plans))
                for plan in plans:
                    results["runs"].append(b.run(plan))
                    progress.advance(overall)
                if stream_plans:
                    results["single_stream"] = []
                for plan in stream_plans:
                    results["single_stream"].append(b.run(plan))
                    progress.advance(overall)
                if options.latency:
                    lone = progress.add_task("lone 64 B packets", total=len(options.transports)
                                             * len(latency_shares(options.latency_packets)))
                    results["latency"] = b.lone_latencies(
                        options.transports, route_list[0], lambda: progress.advance(lone))
    finally:
        with signals_deferred():  # a second Ctrl-C must not cut the clean-up short
            if switch is not None:
                results["vswitch"] = switch.stop()
            machine.stop()
    if scaling_cfgs is not None and not outcome.interrupted and not outcome.failed:
        with outcome.phase(console, "scaling phase stopped", "scaling phase failed"):
            results["scaling"] = scaling_phase(options, scaling_cfgs, console, registry)
    runs = results["runs"]
    if runs:
        results["floor"] = floors(tuple(sorted({r["packet_size"] for r in runs})),
                                  options.batches)
        for r in runs:
            floor = results["floor"][str(r["packet_size"])]["S"]
            r["S_vs_floor"] = r["S"] / floor if floor and r["S"] else None
    relative_to_tcp(runs)
    results["method"] = {
        "T": "packets delivered and verified (Pattern.check) at the receivers",
        "C": "user+system CPU seconds (psutil) of all partitions, the adapter (fig11, fig12, "
             "fig12-loan), "
             "the virtual switch (vswitch) and the bench process, since the run started",
        "S": "least-squares slope of T over C on the samples taken while every sender was "
             f"still sending, minus the first {options.warmup:.0%} and last {options.tail:.0%} "
             "of them (all samples if fewer than 3 remain)",
        "sample_interval_s": SAMPLE_S,
        "warmup_fraction": options.warmup,
        "tail_fraction": options.tail,
        "S_vs_tcp": "S over the tcp run of the same size and batch",
        "S_transport": "S fitted on C minus the fill and check CPU of every participant "
                       "(time.thread_time around Pattern fill and check, per thread: around "
                       f"every batch or block of {SMALL_BLOCK} packets or more, and every "
                       f"{TIME_EVERY}th smaller one counted {TIME_EVERY} times): the "
                       "transport's own cost per packet",
        "floor": "per size: S of fill + check alone in the bench process, no transport (one "
                 "thread fills a batch of tcp-framed packets and checks it, in a loop, thread "
                 f"CPU time, {FLOOR_SECONDS:g} s per batch), at the best of the run's batches",
        "targets": "issue 14's targets, each with both operands (left: the adapter's side, "
                   "right: what it is held against), ratio = left / right, verdict MET, MISSED "
                   "or not measured (with why); " + targets.CAPTION
                   + "; latency = lone 64 B packets, batch 1, paced",
    }
    results["options"] = {"transports": list(options.transports), "sizes": list(sizes),
                          "duration": options.duration, "packets": options.packets,
                          "topology": options.pairs or options.topology,
                          "batches": list(options.batches), "latency": options.latency,
                          "latency_packets": options.latency_packets,
                          "latency_interval_s": options.latency_interval,
                          "single_stream": options.single_stream, "scaling": options.scaling,
                          "config": options.config, "command": options.command}
    host = results["host"]
    judged = targets.evaluate(runs, results.get("floor"), results.get("latency"))
    results["targets"] = [t.as_json() for t in judged]
    if runs:
        for table in summary_tables(runs, host.get("memcpy_dram_GBps", 0.0)):
            console.print(table)
        console.print(floor_table(results["floor"]))
    if results.get("single_stream"):
        console.print(detail_table("Single stream (one route)",
                                   results["single_stream"], host.get("memcpy_dram_GBps", 0.0)))
    if results.get("latency"):
        console.print(latency_table(results["latency"]))
    if results.get("scaling"):
        console.print(scaling_table(results["scaling"]))
    console.print(targets_table(results["targets"]))
    if options.json_path:
        with open(options.json_path, "w") as f:
            json.dump(results, f, indent=1)
        console.print(f"results written to {options.json_path}")
    if options.markdown_path:
        with open(options.markdown_path, "w") as f:
            f.write(markdown_summary(results))
        console.print(f"Markdown tables written to {options.markdown_path}")
    if options.plot_path and runs:
        plot_fig14(runs, options.plot_path, floor=results.get("floor"))
        console.print(f"Fig 14 drawn to {options.plot_path}")
    checked = [*runs, *results.get("single_stream", []), *results.get("scaling", []),
               *results.get("latency", {}).values()]
    bad = [r for r in checked if r["lost"] or r["corrupt"]]
    for r in bad:
        console.print(f"[red]{run_label(r)} {human_size(r['packet_size'])}: {r['lost']} lost, "
                      f"{r['corrupt']} corrupt; send errors {r.get('send_errors', '-')}")
    if outcome.interrupted:
        return 130, results
    complete = (len(runs) == len(run_matrix(sizes, options))
                and len(results.get("single_stream", [])) == len(stream_plans)
                and (not options.latency or len(results.get("latency", {}))
                     == len(options.transports))
                and (not options.scaling or bool(results.get("scaling"))))
    ok = not bad and not outcome.failed and complete
    console.print("[green]all packets delivered and verified" if ok else "[red]NOT clean")
    return (0 if ok else 1), results
