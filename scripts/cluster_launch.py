"""`mpiexec -n H xpmove launch --config F`: the all-to-all traffic of `xpmove launch` with the
partitions on H hosts (the config's [[host]] tables; MPI rank r is host r).

Every host starts its own machine (its partitions, its adapter, proxies of the others'
partitions) and its fabric (cluster/fabric.py); the hosts agree that all are up before any
traffic, look at the cluster's progress together (one allgather a look), and rank 0 prints the
tables and the verdict for the whole cluster. Every host stops its machine and unlinks its
names whatever happened; the exit code is the same on every rank.
"""

from __future__ import annotations

from rich.console import Console

from hypervisor.config import MachineConfig
from scripts.cluster_host import ClusterHost
from scripts.launch import (
    Look,
    TrafficOptions,
    cost_line,
    machine_cpu,
    report,
    restarted_partitions,
    run_traffic,
    verified,
)
from scripts.shares import Shares


def combined(looks: list[Look]) -> Look:
    """The cluster's progress from every host's (pure)."""
    return (sum(look[0] for look in looks), sum(look[1] for look in looks),
            all(look[2] for look in looks), sum(look[3] for look in looks),
            any(look[4] for look in looks), any(look[5] for look in looks))


def launch_cluster(config: MachineConfig, options: TrafficOptions,
                   console: Console | None = None) -> int:
    host = ClusterHost(config, console)
    machine, comm = host.machine, host.comm

    def work() -> tuple[dict[int, dict], dict, float]:
        shares = Shares(machine, options.size, options.packets, options.duration,
                        options.flows, [p.network_id for p in config.partitions])
        cpu = machine_cpu(machine)
        run_traffic(machine, shares, host.console, lambda look: combined(host.allgather(look)),
                    undeliverable=lambda: bool(host.fabric.problems))
        cpu = machine_cpu(machine) - cpu
        stats = shares.look("halt")
        return stats, {**machine.adapter_stats(), "title": f"adapter of host {host.name}"}, cpu

    outcome = host.run(work)
    if outcome is None:
        return 1
    stats, adapter, cpu = outcome
    rows = {nid: (c.name, c.state.value) for nid, c in machine.partitions.items()}
    dead = [f"{c.name} ({host.name})" for c in machine.children() if c.state.value == "dead"]
    with host.after_run():
        gathered = comm.gather((rows, stats, adapter, dead, host.problems(),
                                host.fabric.stats, machine.prefix, cpu,
                                restarted_partitions(machine, f" ({host.name})")), root=0)
        code = 1
        if host.rank == 0:
            code = cluster_report(host.console, gathered, config)
        code = comm.bcast(code, root=0)
    return code


def cluster_report(console: Console, gathered: list, config: MachineConfig) -> int:
    rows: dict[int, tuple[str, str]] = {}
    stats: dict[int, dict] = {}
    adapters, dead, problems, restarted = [], [], [], []
    cpu = 0.0
    for (host_rows, host_stats, adapter, host_dead, host_problems, fabric, prefix, host_cpu,
         host_restarted), host in zip(gathered, config.hosts, strict=True):
        cpu += host_cpu
        restarted += host_restarted
        rows.update(host_rows)
        stats.update(host_stats)
        if adapter:
            adapters.append(adapter)
        dead += host_dead
        problems += host_problems
        console.print(f"host {host.name} (run {prefix}): fabric pulled "
                      f"{fabric['landed_packets']:,} packets in ({fabric['landed_records']:,} "
                      f"records, {fabric['pulled_bytes']:,} bytes, {fabric['gets']:,} gets, "
                      f"{fabric['retries']:,} retries)", highlight=False)
    console.print(cost_line(verified(stats), cpu, f"every process of the {len(config.hosts)} "
                                                 f"hosts"), highlight=False)
    order = {p.network_id: i for i, p in enumerate(config.partitions)}
    rows = dict(sorted(rows.items(), key=lambda item: order[item[0]]))
    return report(console, rows, stats, adapters, dead, False, tuple(problems), restarted)
