"""`xpmove status [RUN]`: watch a running machine from another terminal.

Every `Machine` (launch, bench, soak, run, or a user's own `with Machine(...)`) serves
snapshots on its status socket (hypervisor/status.py), recorded in the run registry. This tool
finds the live runs there, picks one (by run prefix, a unique leading part is enough; the only
one if there is just one), asks its socket for a snapshot once a second and renders two tables
that fit the terminal (80 columns in a pipe) without cutting a number. `--json` prints each
snapshot as one JSON document per line; `--once` prints one and ends. Asking never disturbs
the traffic: the machine answers from counters it reads without taking a lock.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.text import Text

from hypervisor.control import ControlError, MessageReader
from hypervisor.names import RunRegistry, _owner_alive
from scripts.console import make_console
from scripts.tables import Col, Grid

CONNECT_TIMEOUT_S = 5.0  # a snapshot takes at most about a second (the adapter's counters)
INTERVAL_S = 1.0


class StatusError(Exception):
    """One line for the user; the command exits 1."""


class RunGone(StatusError):
    """The run's socket is gone or nobody listens on it any more: it ended."""


# -- runs --------------------------------------------------------------------------------------
def live_runs(registry: RunRegistry) -> list[dict]:
    """Records of runs whose owner is alive and that serve status, by prefix."""
    return [r for r in registry.records()
            if r.get("status_socket") and _owner_alive(r["owner_pid"], r["owner_create_time"])]


def describe_runs(runs: Sequence[dict]) -> str:
    return ", ".join(r["prefix"] for r in runs) or "none"


def pick_run(runs: Sequence[dict], wanted: str | None) -> dict | None:
    """The run `wanted` names (a prefix, or its unique leading part; "3f9a" for "xpm-3f9a..."
    works too); without `wanted`, the only run, or None when there are several (list them).
    StatusError when none is running or `wanted` matches none or several."""
    if not runs:
        raise StatusError("no running machine (start one with `xpmove launch`, `run`, `bench` "
                          "or `soak`)")
    if wanted is None:
        return runs[0] if len(runs) == 1 else None
    key = wanted if wanted.startswith("xpm-") else f"xpm-{wanted}"
    matches = [r for r in runs if r["prefix"].startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StatusError(f"no running machine {wanted!r} (running: {describe_runs(runs)})")
    raise StatusError(f"{wanted!r} names {len(matches)} runs ({describe_runs(matches)}); "
                      f"give more of the prefix")


def runs_grid(runs: Sequence[dict]) -> Grid:
    grid = Grid("running machines (pick one: xpmove status RUN)",
                [Col("run", "left"), Col("owner pid"), Col("partitions", "left", True),
                 Col("started", "left")], drop=("started",))
    for r in runs:
        names = r.get("partitions") or []
        started = r.get("started")
        when = time.strftime("%H:%M:%S", time.localtime(started)) if started else "?"
        grid.add_row(r["prefix"], str(r["owner_pid"]), f"{len(names)}: {', '.join(names)}",
                     when)
    return grid


def runs_json(runs: Sequence[dict]) -> dict:
    return {"runs": [{"prefix": r["prefix"], "owner_pid": r["owner_pid"],
                      "partitions": r.get("partitions", []), "started": r.get("started")}
                     for r in runs]}


# -- the socket --------------------------------------------------------------------------------
def fetch(path: str, timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """One snapshot from a status socket. RunGone if the socket is gone or refused (the run
    ended, or its owner was killed); StatusError if it answers badly or not in time."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise RunGone(f"its status socket {path} is gone") from None
        except ConnectionRefusedError:
            raise RunGone(f"status socket {path} refused the connection") from None
        reader = MessageReader()
        while (message := reader.next_message()) is None:
            data = sock.recv(65536)
            if not data:
                raise StatusError(f"status socket {path} closed before a whole snapshot")
            reader.feed(data)
    except TimeoutError:
        raise StatusError(f"status socket {path}: no snapshot within {timeout:g} s") from None
    except ControlError as exc:
        raise StatusError(f"status socket {path}: {exc}") from None
    except OSError as exc:
        raise StatusError(f"status socket {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if "error" in message:
        raise StatusError(f"the machine could not take a snapshot: {message['error']}")
    return message


# -- rendering ---------------------------------------------------------------------------------
def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _mb(value: object) -> str:
    """Bytes as MB with one decimal, or '-' when the adapter did not say."""
    return f"{value / 1e6:,.1f}" if isinstance(value, int) else "-"


def _pid(value: object) -> str:
    return str(value) if isinstance(value, int) else "-"


def _lock(lock: dict) -> str:
    """The adapter's word for the lock if it answered, else what the semaphore says."""
    if lock.get("state"):
        return str(lock["state"])
    value = lock.get("value")
    return "-" if value is None else ("free" if value > 0 else "taken")


def _ended(p: dict) -> str:
    if p.get("error"):
        return f"raised {p['error']}"
    if p.get("outcome"):
        return str(p["outcome"])
    return "-" if p.get("exit_code") is None else f"exit {p['exit_code']}"


@dataclass
class Rates:
    """Packets per second out of each partition between two snapshots."""

    out: dict[int, float]

    @classmethod
    def between(cls, before: dict | None, now: dict) -> Rates | None:
        if before is None or before.get("prefix") != now.get("prefix"):
            return None
        dt = now["time"] - before["time"]
        if dt <= 0:
            return None
        was = {p["network_id"]: p["packets_out"] for p in before["partitions"]}
        return cls({p["network_id"]: max(0.0, (p["packets_out"] - was.get(p["network_id"], 0))
                                         / dt) for p in now["partitions"]})


PARTITION_COLUMNS = ("name", "ID", "pid", "state", "rst", "pkts out", "out/s", "MB out",
                     "pkts in", "MB in", "queued", "ring", "ring KiB", "lock", "holder",
                     "waits", "errors", "ended")
TEXT_COLUMNS = ("name", "errors", "ended")  # may fold onto a second line
LEFT_COLUMNS = ("name", "state", "lock", "errors", "ended")
# which go first when the terminal is narrow (the rest always stay)
PARTITION_DROP = ("ring KiB", "waits", "MB out", "MB in", "ended", "queued", "out/s", "holder",
                  "errors", "rst", "pid", "ring", "lock", "state")


def partitions_grid(snapshot: dict, rates: Rates | None = None) -> Grid:
    grid = Grid("partitions (pkts out: committed to others; in: consumed; rst: restarts)",
                [Col(c, "left" if c in LEFT_COLUMNS else "right", c in TEXT_COLUMNS)
                 for c in PARTITION_COLUMNS], drop=PARTITION_DROP)
    for p in snapshot["partitions"]:
        nid, lock = p["network_id"], p.get("lock", {})
        size = p.get("ring_size") or 0
        used = p.get("ring_used") or 0
        fill = f"{100 * used // size}%" if size else "-"
        rate = f"{rates.out.get(nid, 0.0):,.0f}" if rates else "-"
        errors = ", ".join(f"{k} {v:,}" for k, v in sorted((p.get("errors") or {}).items()))
        grid.add_row(p["name"], str(nid), _pid(p.get("pid")), str(p.get("state")),
                     _n(p.get("restarts")), _n(p.get("packets_out")), rate,
                     _mb(p.get("bytes_out")), _n(p.get("packets_in")), _mb(p.get("bytes_in")),
                     _n(p.get("packets_queued")), fill,
                     f"{used // 1024:,}/{size // 1024:,}", _lock(lock),
                     str(lock.get("holder") or "-"), _n(lock.get("waits")), errors or "0",
                     _ended(p))
    return grid


def adapter_grid(snapshot: dict) -> Grid:
    a = snapshot["adapter"]
    grid = Grid("adapter", [Col("counter", "left", True), Col("value")],
                caption=f"counters unavailable: {a['stats_error']}" if a.get("stats_error")
                else None)
    grid.add_row("pid", _pid(a.get("pid")))
    grid.add_row("state", str(a.get("state")))
    grid.add_row("restarts", _n(a.get("restarts")))
    for k, v in sorted(a.get("counters", {}).items()):
        grid.add_row(k, _n(v))
    errors = a.get("errors", {})
    for k, v in sorted(errors.items()):
        grid.add_row(f"errors: {k}", _n(v))
    if not errors and not a.get("stats_error"):
        grid.add_row("errors", "0")
    return grid


def headline(snapshot: dict) -> str:
    up = snapshot["time"] - (snapshot.get("started") or snapshot["time"])
    when = time.strftime("%H:%M:%S", time.localtime(snapshot["time"]))
    return (f"{snapshot['prefix']}  owner pid {snapshot['owner_pid']}  up {up:,.0f} s  "
            f"restart {snapshot.get('restart')}  at {when}")


def render(snapshot: dict, previous: dict | None = None) -> RenderableType:
    parts: list[RenderableType] = [Text(headline(snapshot), style="bold"),
                                   partitions_grid(snapshot, Rates.between(previous, snapshot)),
                                   adapter_grid(snapshot)]
    for event in snapshot.get("events", [])[-5:]:
        parts.append(Text(f"event: {event}"))
    return Group(*parts)


# -- the command -------------------------------------------------------------------------------
def status(wanted: str | None, once: bool = False, as_json: bool = False,
           interval: float = INTERVAL_S, console: Console | None = None,
           registry: RunRegistry | None = None) -> int:
    """Print one snapshot (`once`) or refresh every `interval` s until Ctrl-C or the run ends.
    0: shown (or the run ended while watched); 1: no run, not found, or the socket refused."""
    console = console or make_console(soft_wrap=False)
    registry = registry or RunRegistry()
    runs = live_runs(registry)
    try:
        run = pick_run(runs, wanted)
    except StatusError as exc:
        _fail(exc)
        return 1
    if run is None:  # several and none named: list them
        if as_json:
            print(json.dumps(runs_json(runs)), flush=True)
        else:
            console.print(runs_grid(runs))
        return 0
    path = run["status_socket"]
    try:
        snapshot = fetch(path)
    except StatusError as exc:
        _fail(StatusError(f"run {run['prefix']}: {exc}"))
        return 1
    if once:
        _show(console, snapshot, None, as_json)
        return 0
    try:
        return _watch(console, registry, run, path, snapshot, as_json, interval)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how one stops watching


def _watch(console: Console, registry: RunRegistry, run: dict, path: str, snapshot: dict,
           as_json: bool, interval: float) -> int:
    previous: dict | None = None
    live = None
    if console.is_terminal and not as_json:
        from rich.live import Live

        live = Live(render(snapshot), console=console, auto_refresh=False)
        live.start()
    try:
        while True:
            if live is not None:
                live.update(render(snapshot, previous), refresh=True)
            else:
                _show(console, snapshot, previous, as_json)
            previous = snapshot
            time.sleep(interval)  # the refresh period, not synchronisation
            try:
                snapshot = fetch(path)
            except StatusError as exc:
                if isinstance(exc, RunGone) or not _still_running(registry, run):
                    if live is not None:
                        live.stop()
                        live = None
                    note = f"run {run['prefix']} ended"
                    if as_json:
                        print(f"xpmove status: {note}", file=sys.stderr)
                    else:
                        console.print(note, style="yellow")
                    return 0
                raise
    except StatusError as exc:
        if live is not None:
            live.stop()
        _fail(StatusError(f"run {run['prefix']}: {exc}"))
        return 1
    finally:
        if live is not None:
            live.stop()


def _still_running(registry: RunRegistry, run: dict) -> bool:
    return any(r["prefix"] == run["prefix"] for r in live_runs(registry))


def _show(console: Console, snapshot: dict, previous: dict | None, as_json: bool) -> None:
    if as_json:
        print(json.dumps(snapshot), flush=True)
    else:
        console.print(render(snapshot, previous))
        console.print()


def _fail(exc: Exception) -> None:
    print(f"xpmove status: {exc}", file=sys.stderr)
