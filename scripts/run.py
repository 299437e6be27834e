"""`xpmove run`: start the machine, run every partition's program, report how each ended.

The command a user runs their own partition programs with (config key `program`). It waits
until every program has returned (or died and was not restarted), or until `--timeout`; then
stops the machine cleanly (every process reaped, every IPC name unlinked) and prints one line
per partition: returned, raised (type and message), killed (how), or stopped at the timeout.
Exit status 0 only if every program returned.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from hypervisor.config import MachineConfig
from hypervisor.lifecycle import Outcome
from hypervisor.machine import Machine, MachineError
from scripts.console import make_console
from scripts.launch import signals_deferred

STYLE = {"returned": "green", "raised": "red", "killed": "red", "stopped": "yellow"}


def report(outcomes: dict[int, Outcome], timed_out: bool) -> list[str]:
    """One line per partition, in network-ID order (rich markup)."""
    lines = []
    for nid in sorted(outcomes):
        o = outcomes[nid]
        what = escape(o.describe())
        if o.state == "stopped" and timed_out:
            what = f"still running at the timeout: {what}"
        lines.append(f"  [{STYLE.get(o.state, 'yellow')}]{escape(o.name)}[/] (ID {nid}): {what}")
        if o.state == "raised" and o.traceback:
            lines.extend(f"      [dim]{escape(line)}[/]" for line in o.traceback.rstrip()
                         .splitlines()[1:])  # the partition kept the frames that matter
    return lines


def run(config: MachineConfig, timeout: float | None, console: Console | None = None) -> int:
    """Run the machine's programs to their end; 0 if every one returned."""
    console = console or make_console()
    idle = [p.name for p in config.partitions if p.program is None]
    if idle:
        one = len(idle) == 1
        console.print(f"[yellow]note:[/] {', '.join(idle)} {'names' if one else 'name'} no "
                      f"program: {'it runs' if one else 'they run'} nothing and "
                      f"{'is' if one else 'are'} stopped when the others end")
    machine = Machine(config)
    timed_out = interrupted = False
    try:
        try:
            machine.start()
            console.print(f"machine up: run {machine.prefix}, {len(machine.partitions)} "
                          f"partitions")
            console.file.flush()  # before the programs' own output, in a pipe too
            outcomes = machine.wait(timeout)
            timed_out = any(o.state == "running" for o in outcomes.values())
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]interrupted: stopping the machine")
        except MachineError as exc:
            console.print(f"[red]machine failed: {escape(str(exc))}")
    finally:
        with signals_deferred():
            final = machine.stop()
    for event in machine.events:
        console.print(f"[dim]{escape(event)}")
    programs = {p.network_id for p in config.partitions if p.program is not None}
    outcomes = {nid: o for nid, o in final.items() if nid in programs}
    console.print("programs:")
    for line in report(outcomes, timed_out):
        console.print(line)
    ok = bool(outcomes) and all(o.ok for o in outcomes.values())
    if interrupted:
        return 130
    if not outcomes:
        console.print("[red]no partition names a program: nothing ran")
        return 1
    console.print("[green]every program returned" if ok else "[red]not every program returned")
    return 0 if ok else 1


if __name__ == "__main__":
    from scripts.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
