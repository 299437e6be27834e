"""`mpiexec -n H xpmove run --config F`: the user's partition programs on H hosts.

Each host runs its own partitions' programs; the cluster ends when every program on every host
has ended (returned, raised, or died and was not restarted), or at `--timeout`, so a program
still sending to another host finds it there. Rank 0 prints one line per partition, as
`xpmove run` does, for every host; the exit status (0 only if every program returned) is the
same on every rank.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape

from hypervisor.config import MachineConfig
from hypervisor.lifecycle import ProcessState
from scripts.cluster_host import ClusterHost
from scripts.run import report

LOOK_S = 0.05  # how often the hosts look at their programs together
ENDED = (ProcessState.FINISHED, ProcessState.DEAD, ProcessState.STOPPED)


def run_cluster(config: MachineConfig, timeout: float | None,
                console: Console | None = None) -> int:
    host = ClusterHost(config, console, command="run", workload=False)
    machine = host.machine
    programs = {p.network_id for p in config.partitions if p.program is not None}

    def work() -> bool:
        """Wait, together, for every program of every host; True if the timeout ended it."""
        host.console.file.flush()  # before the programs' own output, in a pipe too
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            machine.poll(liveness=True)
            done = all(c.state in ENDED and c.exit_code is not None
                       for nid, c in machine.partitions.items() if nid in programs)
            late = deadline is not None and time.monotonic() > deadline
            looks = host.allgather((done, late))
            if all(d for d, _ in looks) or any(t for _, t in looks):
                return any(t for _, t in looks)
            time.sleep(LOOK_S)  # pacing the look, not synchronisation

    timed_out = host.run(work)
    outcomes = {nid: o for nid, o in machine.outcomes().items() if nid in programs}
    with host.after_run():
        gathered = host.comm.gather((host.name, machine.events, outcomes), root=0)
        code = 1
        if host.rank == 0:
            code = cluster_report(host.console, gathered, timed_out is None, bool(timed_out))
        code = host.comm.bcast(code, root=0)
    return code


def cluster_report(console: Console, gathered: list, failed: bool, timed_out: bool) -> int:
    """Every host's events and programs; 0 if every program returned."""
    outcomes = {}
    for name, events, host_outcomes in gathered:
        for event in events:
            console.print(f"[dim]host {escape(name)}: {escape(event)}")
        outcomes.update(host_outcomes)
    console.print("programs:")
    for line in report(outcomes, timed_out):
        console.print(line)
    ok = bool(outcomes) and all(o.ok for o in outcomes.values()) and not failed
    if not outcomes:
        console.print("[red]no partition names a program: nothing ran")
        return 1
    console.print("[green]every program returned" if ok else "[red]not every program returned")
    return 0 if ok else 1
