"""`mpiexec -n 2 xpmove bench --config configs/two-hosts.toml`: S across hosts, against the same
pairs on one host and against tcp between the hosts (issue 15).

Routes, over the first two partitions of each of the first two hosts (a0, a1 on host 0; b0, b1
on host 1), two streams at once so both fabrics work in both directions:

    cross   a0 -> b0 and b1 -> a1   every packet crosses hosts
    local   a0 -> a1 and b0 -> b1   the same partitions, each pair on one host

Each (transport, route, size, batch) is one run: the senders send for WARMUP_S + duration +
a margin; between two snapshots taken on every host at once (after a barrier) S = packets
verified per CPU-second of every process of every host (hypervisors with their fabric,
adapters, all partitions), the workload's fill and check included, as the bench's S. tcp
connects to the receiving partition's host address (its fabric's doorbell address), not
loopback. The targets of issue 15 are printed MET/MISSED with both operands.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import NamedTuple

from rich.console import Console

from hypervisor.config import MachineConfig
from scripts.cluster_host import ABORT_GRACE_S, ClusterHost
from scripts.launch import largest_packet, machine_cpu
from scripts.tables import Col, Grid

TRANSPORTS = ("fig11", "fig12", "fig12-loan", "tcp")  # the default run
KNOWN = (*TRANSPORTS, "fig12-lease")  # also on request: a lease into a proxy ring
SIZES = (64, 1024, 64 * 1024, 1024 * 1024)
BATCHES = (1, 32)
WARMUP_S = 0.3
MARGIN_S = 0.3  # senders go on this long after the second snapshot
DRAIN_S = 15.0  # after the senders stop, how long the receivers may take to catch up
POLL_S = 0.05


@dataclass(frozen=True)
class ClusterBenchOptions:
    transports: tuple[str, ...] = TRANSPORTS
    sizes: tuple[int, ...] | None = None  # None: SIZES, capped to what the config takes
    batches: tuple[int, ...] = BATCHES
    duration: float = 2.0
    json_path: str | None = None


class Result(NamedTuple):
    transport: str
    route: str
    size: int
    batch: int
    packets: int  # verified between the snapshots
    cpu: float  # CPU-seconds of every process of every host between them
    problems: tuple[str, ...]

    @property
    def s(self) -> float:
        return self.packets / self.cpu if self.cpu > 0 else 0.0


def routes(config: MachineConfig) -> dict[str, list[tuple[int, int]]]:
    """The cross and local pairs (source, destination network IDs); SystemExit if the first
    two hosts do not have two partitions each."""
    by_name = {p.name: p.network_id for p in config.partitions}
    hosts = config.hosts[:2]
    if len(hosts) < 2 or any(len(h.partitions) < 2 for h in hosts):
        raise SystemExit("xpmove bench: across hosts it needs two hosts of at least two "
                         "partitions each (e.g. configs/two-hosts.toml)")
    (a0, a1), (b0, b1) = ([by_name[n] for n in h.partitions[:2]] for h in hosts)
    return {"cross": [(a0, b0), (b1, a1)], "local": [(a0, a1), (b0, b1)]}


def best(results: list[Result], transport: str, route: str, size: int) -> Result | None:
    """The run of highest S among those that lost nothing (pure)."""
    runs = [r for r in results if (r.transport, r.route, r.size) == (transport, route, size)
            and not r.problems and r.packets > 0]
    return max(runs, key=lambda r: r.s, default=None)


def targets(results: list[Result]) -> list[tuple[str, str, str]]:
    """Issue 15's targets: (target, both operands, MET / MISSED / not measured)."""
    out = []
    for size in (1024, 64 * 1024):
        fig11, tcp = best(results, "fig11", "cross", size), best(results, "tcp", "cross", size)
        what = f"cross-host fig11 >= 2x cross-host tcp, {size} B"
        if fig11 is None or tcp is None:
            out.append((what, "a run is missing or lost packets", "not measured"))
        else:
            ratio = fig11.s / tcp.s
            out.append((what, f"fig11 b{fig11.batch} {fig11.s:,.0f} vs tcp b{tcp.batch} "
                              f"{tcp.s:,.0f} pkt/CPU-s: {ratio:.2f}x",
                        "MET" if ratio >= 2 else "MISSED"))
    size = 64 * 1024
    cross, local = best(results, "fig11", "cross", size), best(results, "fig11", "local", size)
    what = "cross-host fig11 CPU per packet within 2x of same-host, 64 KiB"
    if cross is None or local is None:
        out.append((what, "a run is missing or lost packets", "not measured"))
    else:
        ratio = local.s / cross.s
        out.append((what, f"{1e6 / cross.s:,.1f} vs {1e6 / local.s:,.1f} us/packet: "
                          f"{ratio:.2f}x", "MET" if ratio <= 2 else "MISSED"))
    return out


class ClusterBench:
    """One host's part of the cluster bench (every host runs the same sequence)."""

    def __init__(self, host: ClusterHost, options: ClusterBenchOptions):
        self.host = host
        self.options = options
        self.address = host.fabric.wakeups.address[0]  # this host's, as the others reach it
        self.routes = routes(host.config)

    def call(self, nid: int, msg: dict) -> dict:
        return self.host.machine.call(nid, msg)

    def run(self, transport: str, route: str, size: int, batch: int) -> Result:
        host = self.host
        pairs = self.routes[route]
        problems: list[str] = []
        endpoints: dict[int, object] = {}
        participants = sorted({n for pair in pairs for n in pair if host.local(n)})
        for nid in participants:  # zeroes every participant's counters, opens its endpoint
            reply = self.call(nid, {"cmd": "bench_open", "transport": transport,
                                    "bind": self.address})
            if not reply.get("ok"):
                problems.append(f"{nid} bench_open: {reply.get('message')}")
            elif "port" in reply:
                endpoints[nid] = [self.address, reply["port"]]
        for part in host.allgather(endpoints):  # (waits outside MPI: a signal gets in)
            endpoints.update(part)
        for src, dst in pairs:
            if host.local(src):
                reply = self.call(src, {
                    "cmd": "bench_send", "transport": transport, "peers": [dst], "size": size,
                    "batch": batch, "packets": None,
                    "duration": WARMUP_S + self.options.duration + MARGIN_S,
                    "ports": {str(dst): endpoints[dst]} if dst in endpoints else {}})
                if not reply.get("ok"):
                    problems.append(f"{src} bench_send: {reply.get('message')}")
        time.sleep(WARMUP_S)  # pacing the run, not synchronisation
        host.allgather(None)
        cpu0, got0 = machine_cpu(host.machine), self._received(pairs)
        time.sleep(self.options.duration)
        host.allgather(None)
        cpu, got = machine_cpu(host.machine) - cpu0, self._received(pairs) - got0
        problems += self._drain(pairs)
        for nid in participants:
            stats = self.call(nid, {"cmd": "bench_close"}).get("stats", {})
            bad = {k: stats.get(k, 0) for k in ("corrupt", "gaps", "duplicates")}
            errors = stats.get("errors", {})
            if any(bad.values()) or errors:
                problems.append(f"network ID {nid}: {bad}, errors {errors}")
        problems += host.problems()
        parts = host.allgather((got, cpu, problems))
        return Result(transport, route, size, batch, sum(p[0] for p in parts),
                      sum(p[1] for p in parts), tuple(x for p in parts for x in p[2]))

    def _received(self, pairs: list[tuple[int, int]]) -> int:
        return sum(self.call(dst, {"cmd": "bench_count"})["received"]
                   for _, dst in pairs if self.host.local(dst))

    def _drain(self, pairs: list[tuple[int, int]]) -> list[str]:
        """Wait (together) until every sender is done and every sent packet is verified."""
        deadline = time.monotonic() + self.options.duration + MARGIN_S + DRAIN_S
        while True:
            sent = done = 0
            for src, _ in pairs:
                if self.host.local(src):
                    count = self.call(src, {"cmd": "bench_count"})
                    sent += count["sent"]
                    done += bool(count["sender_done"])
            looks = self.host.allgather((sent, done, self._received(pairs)))
            sent, done, got = (sum(look[i] for look in looks) for i in range(3))
            late = time.monotonic() > deadline
            if (done == len(pairs) and got >= sent) or any(self.host.allgather(late)):
                return [] if got >= sent else [f"{sent - got} packets not verified after "
                                               f"{DRAIN_S} s"]
            time.sleep(POLL_S)  # pacing the look, not synchronisation


def cluster_bench(config: MachineConfig, options: ClusterBenchOptions,
                  console: Console | None = None) -> int:
    host = ClusterHost(config, console, command="bench")
    host.grace = ABORT_GRACE_S + max(options.duration, WARMUP_S)  # a run sleeps between looks
    limit = largest_packet(config)
    sizes = tuple(s for s in (options.sizes or SIZES) if s <= limit)
    bench = ClusterBench(host, options)
    plan = [(t, r, s, b) for s in sizes for t in options.transports for r in bench.routes
            for b in options.batches]

    def work() -> list[Result]:
        out = []
        for i, (transport, route, size, batch) in enumerate(plan, 1):
            result = bench.run(transport, route, size, batch)
            host.console.print(f"[{i}/{len(plan)}] {transport} {route} {size} B b{batch}: "
                               f"S = {result.s:,.0f} pkt/CPU-s ({result.packets:,} packets, "
                               f"{result.cpu:.2f} CPU-s)"
                               + (f" [red]{'; '.join(result.problems)}" if result.problems
                                  else ""), highlight=False, soft_wrap=True)
            out.append(result)
        return out

    results = host.run(work)
    if results is None:
        return 1
    with host.after_run():
        prefixes = host.comm.gather(host.machine.prefix, root=0)
        written = True
        if host.rank == 0:
            written = report(host.console, results, options)
            for h, prefix in zip(host.config.hosts, prefixes, strict=True):
                host.console.print(f"host {h.name} (run {prefix}): every IPC name unlinked",
                                   highlight=False)
    return 0 if written and all(not r.problems for r in results) else 1


def report(console: Console, results: list[Result], options: ClusterBenchOptions) -> bool:
    """The table and the targets on the console, the JSON if asked; False if the JSON could
    not be written (named in one line: a full disk, a read-only file system)."""
    table = Grid("S across hosts (packets per CPU-second of every process of both hosts)",
                 [Col("transport", "left", True), Col("route", "left", True), Col("size"),
                  Col("batch"), Col("S"), Col("us/packet"), Col("packets")])
    for r in results:
        table.add_row(r.transport, r.route, f"{r.size:,}", str(r.batch), f"{r.s:,.0f}",
                      f"{1e6 / r.s:,.1f}" if r.s else "-", f"{r.packets:,}")
    console.print(table)
    found = targets(results)
    for what, operands, verdict in found:
        console.print(f"{verdict}: {what}: {operands}", highlight=False, soft_wrap=True)
    if not options.json_path:
        return True
    text = json.dumps({"runs": [{**r._asdict(), "S": r.s} for r in results],
                       "targets": [{"target": t, "operands": o, "verdict": v}
                                   for t, o, v in found]}, indent=1)
    try:
        with open(options.json_path, "w") as f:
            f.write(text)
    except OSError as exc:
        console.print(f"[red]xpmove bench: {options.json_path} not written: {exc}")
        return False
    console.print(f"results written to {options.json_path}")
    return True
