"""`mpiexec -n H xpmove launch --config F`: the all-to-all traffic of `xpmove launch` with the
partitions on H hosts (the config's [[host]] tables; MPI rank r is host r).

Every host starts its own machine (its partitions, its adapter, proxies of the others'
partitions) and its fabric (cluster/fabric.py); the hosts agree that all are up before any
traffic, look at the cluster's progress together (one allgather a look), and rank 0 prints the
tables and the verdict for the whole cluster. Every host stops its machine and unlinks its
names whatever happened; the exit code is the same on every rank.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from hypervisor.config import MachineConfig, with_program
from hypervisor.machine import Machine, MachineError
from scripts.launch import (
    Look,
    TrafficOptions,
    collect,
    cost_line,
    machine_cpu,
    report,
    run_traffic,
    signals_deferred,
    totals,
)
from scripts.workload.program import PROGRAM


def check_world(config: MachineConfig, size: int) -> None:
    """One MPI process per [[host]]; SystemExit saying how to run it otherwise."""
    if size != len(config.hosts):
        names = ", ".join(h.name for h in config.hosts)
        raise SystemExit(f"xpmove launch: the config has {len(config.hosts)} hosts ({names}): "
                         f"run it as `mpiexec -n {len(config.hosts)} xpmove launch --config F` "
                         f"(this is {size} MPI process{'es' if size != 1 else ''})")


def combined(looks: list[Look]) -> Look:
    """The cluster's progress from every host's (pure)."""
    return (sum(look[0] for look in looks), sum(look[1] for look in looks),
            all(look[2] for look in looks), sum(look[3] for look in looks))


def launch_cluster(config: MachineConfig, options: TrafficOptions,
                   console: Console | None = None) -> int:
    from mpi4py import MPI  # only here: importing it starts MPI

    from cluster.fabric import Fabric

    comm: Any = MPI.COMM_WORLD
    check_world(config, comm.Get_size())
    rank = comm.Get_rank()
    host = config.hosts[rank].name
    console = console or Console()
    if rank:
        console = Console(quiet=True)  # rank 0 speaks for the cluster
    fabric = Fabric(config, comm)
    machine = Machine(with_program(config, PROGRAM), gateway=fabric)
    stats: dict[int, dict] = {}
    adapter: dict = {}
    cpu = 0.0
    try:
        error = None
        try:
            machine.start()
        except MachineError as exc:
            error = f"host {host}: {exc}"
        errors = [e for e in comm.allgather(error) if e]
        if not errors:
            fabric.start(machine)
            console.print(f"cluster up: {comm.Get_size()} hosts, {len(config.partitions)} "
                          f"partitions; host {host}: run {machine.prefix}, segment "
                          f"{machine.layout.total_size:,} bytes")
            everyone = [p.network_id for p in config.partitions]
            cpu = machine_cpu(machine)
            stats = run_traffic(machine, options, console, everyone,
                                lambda look: combined(comm.allgather(look)))
            cpu = machine_cpu(machine) - cpu
            stats.update(collect(machine, "halt"))
            adapter = {**machine.adapter_stats(), "title": f"adapter of host {host}"}
    except BaseException as exc:  # this host alone: the others wait in a collective
        with signals_deferred():
            fabric.stop()
            machine.stop()  # this host's names are unlinked; the others' by their registry
        Console(stderr=True).print(f"[red]host {host}: {type(exc).__name__}: {exc}; ending "
                                   f"the MPI job", soft_wrap=True)
        comm.Abort(130 if isinstance(exc, KeyboardInterrupt) else 1)
    with signals_deferred():
        fabric.stop()
        machine.stop()
        fabric.close()
    if errors:
        for e in errors:
            console.print(f"[red]{e}", soft_wrap=True)
        return 1
    rows = {nid: (c.name, c.state.value) for nid, c in machine.partitions.items()}
    dead = [f"{c.name} ({host})" for c in machine.children() if c.state.value == "dead"]
    problems = [f"host {host}: {p}" for p in fabric.problems]
    if fabric.stats["dropped"]:
        problems.append(f"host {host}: {fabric.stats['dropped']} landed records dropped")
    gathered = comm.gather((rows, stats, adapter, dead, problems, fabric.stats, machine.prefix,
                            cpu),
                           root=0)
    code = 1
    if rank == 0:
        code = cluster_report(console, gathered, config)
    return comm.bcast(code, root=0)


def cluster_report(console: Console, gathered: list, config: MachineConfig) -> int:
    rows: dict[int, tuple[str, str]] = {}
    stats: dict[int, dict] = {}
    adapters, dead, problems = [], [], []
    cpu = 0.0
    for (host_rows, host_stats, adapter, host_dead, host_problems, fabric, prefix, host_cpu
         ), host in zip(gathered, config.hosts, strict=True):
        cpu += host_cpu
        rows.update(host_rows)
        stats.update(host_stats)
        if adapter:
            adapters.append(adapter)
        dead += host_dead
        problems += host_problems
        console.print(f"host {host.name} (run {prefix}): fabric {fabric['ships']:,} puts of "
                      f"{fabric['shipped_bytes']:,} bytes out, {fabric['landed_packets']:,} "
                      f"packets in ({fabric['landed_records']:,} records, "
                      f"{fabric['retries']:,} retries)", highlight=False)
    console.print(cost_line(totals(stats)[1], cpu, f"every process of the {len(config.hosts)} "
                                                 f"hosts"), highlight=False)
    order = {p.network_id: i for i, p in enumerate(config.partitions)}
    rows = dict(sorted(rows.items(), key=lambda item: order[item[0]]))
    return report(console, rows, stats, adapters, dead, False, tuple(problems))
