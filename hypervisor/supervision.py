"""Supervision: the machine notices children that died or hung and brings them back.

The adapter is always restarted (a machine without one moves nothing), but not blindly: deaths
soon after a start form a streak (`RestartBackoff`); each further restart of a streak waits
twice as long as the last (0.1 s up to 2 s) and after `machine.adapter_restart_limit` of them
the machine gives up with one MachineError line naming how many restarts in how long (an
adapter that dies in its own start-up, say on a segment word it cannot get past, would
otherwise be restarted dozens of times a second for ever). Partitions come back per the
config's `restart` policy, at most `restart_limit` times each; one that will not is retired.
A partition that ends while no adapter runs waits for the next one. A partition that holds a
Fig 12 grant longer than `grant_timeout_s` (seen in the liveness ping's stats) is killed: alive
but stuck, it would block that destination for ever.

`Supervision` is the part of `Machine` that does this (a mixin: the machine's public
`poll`, `check_adapter`, `restart_adapter`, `restart_partition` live here).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from hypervisor.children import (
    CALL_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Child,
    MachineError,
    Pipes,
    await_ready,
)
from hypervisor.lifecycle import ProcessEvent, ProcessState

if TYPE_CHECKING:
    from hypervisor.config import MachineConfig, PartitionConfig
    from hypervisor.gateway import Gateway
    from hypervisor.lifecycle import Outcome

RECONNECT_TIMEOUT_S = 2.0  # one common deadline for every driver's reconnect after a restart
RETIRE_TIMEOUT_S = 3.0  # how long telling the adapter that a partition is gone may take
ADAPTER_PING_TIMEOUT_S = 3.0  # an adapter that does not answer a ping in this time is hung
ADAPTER_PING_EVERY_S = 1.0  # poll(liveness=True) pings the adapter at most this often
RESTART_DELAY_S = (0.1, 2.0)  # the second restart of a streak waits this, doubling to the cap
STABLE_S = 10.0  # an adapter that ran this long before dying starts a new streak


@dataclass
class RestartBackoff:
    """When to restart a child that keeps dying, and when to stop (pure: the caller gives the
    clock). Deaths within `stable_s` of the child's start form a streak: its first restart is
    at once, each further one waits twice as long as the one before (`first_s` up to `cap_s`);
    once `limit` restarts of a streak died again, there is none more (None)."""

    limit: int
    first_s: float = RESTART_DELAY_S[0]
    cap_s: float = RESTART_DELAY_S[1]
    stable_s: float = STABLE_S
    deaths: list[float] = field(default_factory=list)  # of the current streak

    def on_death(self, now: float, ran_for: float) -> float | None:
        """The child died at `now` after running `ran_for` seconds: the delay before its
        restart, or None: give up."""
        if ran_for >= self.stable_s:
            self.deaths.clear()
        self.deaths.append(now)
        restarts = len(self.deaths) - 1  # restarts of this streak so far
        if restarts >= self.limit:
            return None
        return 0.0 if restarts == 0 else min(self.cap_s, self.first_s * 2 ** (restarts - 1))

    def give_up_message(self, what: str, key: str, exit_code: int | None = None) -> str:
        """Why `what` is not restarted; `exit_code` (a Popen return code) says how it last
        died."""
        how = "" if exit_code is None else f" ({exit_how(exit_code)})"
        restarts = len(self.deaths) - 1
        if restarts == 0:  # a limit of 0: the first death is the last
            return (f"{what} died{how} and is not restarted ({key} = {self.limit}; if it "
                    f"said why, its stderr is above)")
        span = self.deaths[-1] - self.deaths[0]
        return (f"{what} keeps dying{how}: restarted {restarts} time{'s' * (restarts != 1)} "
                f"in {span:.1f} s, and "
                f"each time it died again within {self.stable_s:g} s of its start; not "
                f"restarted again ({key} = {self.limit}; if it said why, its stderr is above)")


def exit_how(code: int) -> str:
    """A Popen return code in words: 'killed by SIGKILL' or 'exit code 1'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervision:
    """Reaping, restarting, retiring and liveness for `Machine` (see the module docstring)."""

    if TYPE_CHECKING:  # what the machine provides
        config: MachineConfig
        adapter: Child | None
        partitions: dict[int, Child]
        events: list[str]
        restarts: dict[int | str, int]
        retired: set[int]
        _stopped: bool
        _stopping: bool
        _call: Callable[..., dict]
        _call_all: Callable[..., dict[int, dict]]
        _spawn_adapter: Callable[[dict[int, Pipes]], Child]
        _spawn_partition: Callable[[PartitionConfig, Pipes], Child]
        _connect_gateway: Callable[[dict[int, Pipes]], None]
        gateway: Gateway | None
        _drain_events: Callable[[Child], None]
        outcomes: Callable[[], dict[int, Outcome]]
        children: Callable[[], list[Child]]

    def _init_supervision(self) -> None:
        self._polling = False
        self._last_ping = 0.0  # time.monotonic() of the last adapter liveness check
        self._adapter_backoff = RestartBackoff(self.config.adapter_restart_limit)
        self._adapter_due: float | None = None  # when the dead adapter is restarted
        self._waiting: list[Child] = []  # partitions that ended while no adapter ran
        self.gave_up: str | None = None  # why the adapter is not restarted any more
        self._told: dict[int, str] = {}  # remote partitions' states the adapter was told
        self._told_adapter: Child | None = None

    def poll(self, liveness: bool = False) -> list[Child]:
        """Reap children that exited; restart them per policy. Returns those that died.

        With `liveness`, the adapter is also pinged (at most once every ADAPTER_PING_EVERY_S,
        waiting at most ADAPTER_PING_TIMEOUT_S): a hung adapter is killed and replaced.

        The adapter always comes back (with back-off, see the module docstring; a
        MachineError once the machine gave up on it): a new process, its translation table
        rebuilt from the partition table, its locks recovered from the segment, every live
        driver handed fresh pipes. Partitions come back per the config's restart policy, under
        the same network ID and memory (their receive area keeps what was not consumed yet).
        """
        if self.gave_up is not None and not self._stopping:
            raise MachineError(self.gave_up)
        if self._polling:
            return []
        self._polling = True
        try:
            if liveness and time.monotonic() - self._last_ping >= ADAPTER_PING_EVERY_S:
                self.check_adapter(ADAPTER_PING_TIMEOUT_S)
            return self._supervise()
        finally:
            self._polling = False

    def check_adapter(self, timeout: float = ADAPTER_PING_TIMEOUT_S) -> bool:
        """Ping the adapter over its control channel; True if it answered within `timeout`.
        One that does not (hung, SIGSTOPped) is killed, and replaced on this poll (or at once
        when called outside poll()). An adapter that is already gone is left to poll()."""
        self._last_ping = time.monotonic()
        adapter = self.adapter
        if (adapter is None or self._stopping or adapter.state is not ProcessState.RUNNING
                or adapter.proc.poll() is not None):
            return True
        try:
            reply = self._call(adapter, {"cmd": "stats"}, timeout)
            self._end_stuck_grants(reply.get("stats", {}).get("grants", {}))
            return True
        except MachineError as exc:
            if adapter.proc.poll() is not None:
                return True  # it died: that is poll()'s news, not a hang
            self.events.append(f"adapter (pid {adapter.proc.pid}) hung: {exc}; killed")
        adapter.proc.kill()  # SIGKILL works on a stopped process too
        try:
            adapter.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        if not self._polling:
            self.poll()
        return False

    def _end_stuck_grants(self, grants: dict) -> None:
        """A partition that has held a destination's lock (a Fig 12 grant) longer than
        `grant_timeout_s`, or kept a lease that long after the adapter recalled it, is alive
        but stuck (or hostile) and blocks every sender to that destination: kill it. The
        adapter then sees its pipe close, takes the lock back and undoes the uncommitted
        move; the partition comes back per the restart policy."""
        limit = self.config.grant_timeout_s
        for dst, grant in grants.items():
            holder, age = grant.get("holder"), grant.get("age_s", 0.0)
            child = self.partitions.get(holder) if isinstance(holder, int) else None
            if (child is None or not isinstance(age, int | float) or age < limit
                    or child.state is not ProcessState.RUNNING or child.proc.poll() is not None):
                continue
            child.proc.kill()
            held = (f"kept its lease on network ID {dst} {age:.1f} s after it was recalled"
                    if grant.get("lease") else f"held the lock of network ID {dst} for {age:.1f} s")
            self.events.append(f"{child.name} {held} (grant_timeout_s = {limit:g}): killed, its "
                               f"lock taken back")

    def _supervise(self) -> list[Child]:
        died, ended = [], []
        now = time.monotonic()
        for child in self.children():
            self._drain_events(child)
            code = child.proc.poll()
            if code is None or child.exit_code is not None:
                continue
            child.exit_code, child.exited_at = code, now
            self._drain_events(child)  # its last words may have come with its exit
            before = child.state
            child.step(ProcessEvent.EXITED)
            if before is ProcessState.FINISHED:
                ended.append(child)
            elif before in (ProcessState.STARTING, ProcessState.RUNNING):
                died.append(child)
        if self._stopped or self._stopping:
            return died  # once stop() began, nothing comes back
        outcomes = self.outcomes()
        for child in ended:
            assert child.network_id is not None
            self.events.append(f"{child.name} {outcomes[child.network_id].describe()}")
        for child in died:
            self.events.append(f"{child.name} died (exit code {child.exit_code})")
        for child in died + ended:
            if child.network_id is None:
                self._adapter_died(child, now)
            else:
                self._waiting.append(child)
        if self._adapter_due is not None and now >= self._adapter_due:
            self._adapter_due = None
            dead = self.adapter
            if not self._bring_back(self.restart_adapter, "adapter") and self.adapter is dead:
                assert dead is not None  # no process was even started (say, EMFILE): a
                self._adapter_died(dead, now, ran_for=0.0)  # death right at its start
        adapter = self.adapter
        if adapter is not None and adapter.state is ProcessState.RUNNING:
            self._tell_remote_states(adapter)
            waiting, self._waiting = self._waiting, []
            for child in waiting:  # attached to an adapter that runs
                assert child.network_id is not None
                if self._should_restart(child):
                    self._bring_back(partial(self.restart_partition, child.network_id),
                                     child.name)
                else:
                    self._retire(child.network_id)
        return died

    def _tell_remote_states(self, adapter: Child) -> None:
        """Tell the adapter each change of a remote partition's state (hypervisor/gateway.py);
        a restarted adapter is told them all again (it boots with every proxy active)."""
        if self.gateway is None:
            return
        if self._told_adapter is not adapter:
            self._told_adapter, self._told = adapter, {}
        for nid, state in self.gateway.remote_states().items():
            if self._told.get(nid, "active") == state:
                continue
            try:
                self._call(adapter, {"cmd": "state", "network_id": nid, "state": state},
                           RETIRE_TIMEOUT_S)
            except MachineError as exc:
                self.events.append(f"could not tell the adapter that remote network ID {nid} "
                                   f"is {state}: {exc}")
                return
            self._told[nid] = state
            self.events.append(f"remote network ID {nid} is {state}")

    def _bring_back(self, restart: Callable[[], None], name: str) -> bool:
        try:
            restart()
            return True
        except (MachineError, OSError) as exc:  # e.g. it died again at start: its exit is the
            self.events.append(f"restart of {name} failed: {exc}")  # next poll's news
            return False

    def _adapter_died(self, adapter: Child, now: float, ran_for: float | None = None) -> None:
        """Schedule the adapter's restart (back-off), or give up: MachineError."""
        if ran_for is None:
            ran_for = now - adapter.spawned_at
        delay = self._adapter_backoff.on_death(now, ran_for)
        if delay is None:
            self.gave_up = self._adapter_backoff.give_up_message(
                "the adapter", "machine.adapter_restart_limit", adapter.proc.returncode)
            self.events.append(self.gave_up)
            raise MachineError(self.gave_up)
        self._adapter_due = now + delay
        if delay:
            self.events.append(f"adapter died again {ran_for:.1f} s after its start: "
                               f"restarted in {delay:g} s")

    def _retire(self, network_id: int) -> None:
        """`network_id` ended and will not be restarted: tell the adapter, so moves to it fail
        with DestinationGone at once instead of being retried as DestinationDown."""
        self.retired.add(network_id)
        adapter = self.adapter
        if adapter is None or adapter.state is not ProcessState.RUNNING:
            return  # a restarted adapter learns it from its boot block
        try:
            self._call(adapter, {"cmd": "retire", "network_id": network_id}, RETIRE_TIMEOUT_S)
        except MachineError as exc:
            self.events.append(f"could not tell the adapter that {network_id} is gone: {exc}")

    def _should_restart(self, child: Child) -> bool:
        policy = self.config.restart
        failed = child.exit_code != 0
        wanted = policy == "always" or (policy == "on-failure" and failed)
        return wanted and self.restarts.get(child.network_id or 0, 0) < self.config.restart_limit

    def restart_adapter(self) -> None:
        if self._stopping:
            return
        old = self.adapter
        assert old is not None
        old.channel.close()
        live = {nid: c for nid, c in self.partitions.items() if c.state is ProcessState.RUNNING}
        proxies = self.gateway.network_ids if self.gateway is not None else frozenset()
        pipes = {nid: Pipes.open() for nid in [*live, *sorted(proxies)]}
        try:
            self.adapter = self._spawn_adapter(pipes)
            await_ready([self.adapter])
            self._connect_gateway(pipes)
            answered = self._call_all({nid: ({"cmd": "reconnect"}, pipes[nid].driver_ends())
                                       for nid in live}, RECONNECT_TIMEOUT_S)
        finally:
            for p in pipes.values():
                p.close()
        self.restarts["adapter"] = self.restarts.get("adapter", 0) + 1
        late = sorted(set(live) - set(answered))
        self.events.append(f"adapter restarted (pid {self.adapter.proc.pid}), "
                           f"{len(answered)} drivers reconnected"
                           + (f"; no answer within {RECONNECT_TIMEOUT_S} s from network IDs "
                              f"{late} (their pipes wait for them)" if late else ""))

    def restart_partition(self, network_id: int) -> None:
        """Start a new incarnation of a partition that ended. Every attempt counts against
        `restart_limit`, whether or not the new process comes up: one that cannot be started
        (the adapter did not take its pipes, no process) waits for the next poll to try again,
        and a program that dies before it is ready dies like any other; neither is retried
        forever."""
        if self._stopping:
            return
        self.retired.discard(network_id)
        old = self.partitions[network_id]
        old.channel.close()
        self.restarts[network_id] = self.restarts.get(network_id, 0) + 1
        config = next(p for p in self.config.partitions if p.network_id == network_id)
        pipes = None
        try:
            pipes = Pipes.open()
            assert self.adapter is not None
            self._call(self.adapter, {"cmd": "attach", "network_id": network_id},
                       CALL_TIMEOUT_S, fds=pipes.adapter_ends())
            child = self._spawn_partition(config, pipes)
        except BaseException:
            self._waiting.append(old)  # still dead: the next poll decides again
            raise
        finally:
            if pipes is not None:
                pipes.close()
        old.step(ProcessEvent.RESTART)
        self.partitions[network_id] = child
        try:
            await_ready([child])
        except MachineError:
            child.proc.kill()  # never ready: its exit is the next poll's news, like any death
            raise
        self.events.append(f"{child.name} restarted (pid {child.proc.pid})")

