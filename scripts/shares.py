"""Each partition's share of the built-in traffic, kept across its restarts.

A partition restarted by the machine (`restart = "on-failure"` or `"always"`) is a new process
that knows nothing of its predecessor's traffic. `Incarnations` notices each new one and keeps
what its predecessor counted (refused sends, corrupt, missing or doubled packets); `Shares`
(for `xpmove launch`) gives the new incarnation what is left of its share (the packets its
predecessor did not get accepted, or the rest of the duration) and counts packets from the
segment's books (scripts/books.py), which no kill can reach, instead of from the processes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping

from adapter.protocol import Flow
from hypervisor.machine import Child, Machine, MachineError
from scripts.books import accepted_from, pair_books, partition_counts

KEPT = ("duplicates", "corrupt", "gaps")  # what a killed incarnation counted, carried over
SHARE_CALL_TIMEOUT_S = 5.0  # one try of giving a process its share
SHARE_TIMEOUT_S = 30.0  # a running process that has not taken its share by then is hung


def collect(machine: Machine, cmd: str = "stats",
            incarnations: Mapping[int, Child] | None = None) -> dict[int, dict]:
    """The workload's report from every partition that answers (`halt`: stop its traffic
    first); one that dies meanwhile is left to poll(). With `incarnations` (network ID -> the
    process given its share), only from those processes: a restarted partition's new process,
    not yet given its share, would otherwise be taken for the one before it."""
    stats = {}
    for nid in list(machine.partitions):
        child = machine.partitions[nid]
        if child.proc.poll() is not None:
            continue
        if incarnations is not None and incarnations.get(nid) is not child:
            continue
        try:
            reply = machine.call(nid, {"cmd": cmd})
        except MachineError:
            continue
        if "stats" in reply and machine.partitions[nid] is child:
            stats[nid] = reply["stats"]
    return stats


class Incarnations:
    """The partitions' incarnations: which are new since the last look, and what the killed
    ones counted (their last reported numbers: anything after the last look died with them)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.seen = {k: n for k, n in machine.restarts.items() if k != "adapter"}
        self.last: dict[int, dict] = {}  # the newest report of each partition's incarnation
        self.carried: dict[int, dict] = {}

    def new(self) -> list[int]:
        """Partitions restarted since the last call; their predecessors' counts are kept.

        Restarts happen wherever the machine notices a death (its poll, or a failed call), so
        compare against what was seen rather than around one poll."""
        fresh = []
        for key, n in list(self.machine.restarts.items()):
            if key != "adapter" and n > self.seen.get(key, 0):
                self.seen[key] = n
                self._carry(key)
                fresh.append(key)
        return fresh

    def _carry(self, nid: int) -> None:
        old = self.last.pop(nid, None)
        if old is None:
            return
        kept = self.carried.setdefault(nid, {"errors": Counter(), **dict.fromkeys(KEPT, 0)})
        kept["errors"].update(old.get("errors", {}))
        for key in KEPT:
            kept[key] += old.get(key, 0)

    def counted(self) -> dict[int, dict]:
        """Per partition, over all its incarnations: errors by kind, and KEPT's counts."""
        total: dict[int, dict] = {}
        for nid in self.machine.partitions:
            parts = (self.carried.get(nid, {}), self.last.get(nid, {}))
            errors: Counter[str] = Counter()
            for part in parts:
                errors.update(part.get("errors", {}))
            total[nid] = {"errors": dict(errors),
                          **{k: sum(p.get(k, 0) for p in parts) for k in KEPT}}
        return total


def traffic_command(peers: list[int], flows: Collection[str], size: int, packets: int | None,
                    duration: float | None, quota: dict[int, int] | None = None) -> dict:
    """The workload's `traffic` command; with a `quota` (per peer, over all flows) instead of
    `packets` per peer and flow."""
    command = {"cmd": "traffic", "peers": peers, "flows": list(flows), "size": size,
               "packets": packets, "duration": duration}
    if quota is not None:
        command["quota"] = {str(peer): n for peer, n in quota.items()}
    return command


class Shares:
    """The all-to-all traffic of `xpmove launch`: every local partition sends `packets` per
    peer and flow to every other of `everyone` (or for `duration` seconds), and counts are
    the segment's books, so a restarted partition continues its predecessor's share.

    Each partition process is given its share once (`given`) and reports only while it is the
    one given it; a new process waits in `pending` until it answers, or is killed if it does
    not within SHARE_TIMEOUT_S (the machine then restarts it or gives up, per its policy)."""

    def __init__(self, machine: Machine, size: int, packets: int | None,
                 duration: float | None, flows: Collection[str] = tuple(f.value for f in Flow),
                 everyone: list[int] | None = None) -> None:
        self.machine = machine
        self.size, self.packets, self.duration = size, packets, duration
        self.flows = tuple(flows)
        self.everyone = everyone or list(machine.partitions)
        self.incarnations = Incarnations(machine)
        self.until: float | None = None
        self.given: dict[int, Child] = {}
        self.pending: dict[int, float] = {}  # network ID -> since when it waits for its share

    def start(self) -> None:
        """Every local partition's share, from the beginning (a partition that dies meanwhile
        gets it when it is restarted); a partition that refuses it ends the run."""
        if self.duration is not None:
            self.until = time.monotonic() + self.duration
        self.pending = dict.fromkeys(self.machine.partitions, time.monotonic())
        for nid, reply in self._give().items():
            if not reply.get("ok"):
                raise SystemExit(f"partition {nid} refused the traffic: {reply.get('message')}")

    def _peers(self, nid: int) -> list[int]:
        return [p for p in self.everyone if p != nid]

    def resume(self) -> list[str]:
        """Give every process started since the last look (and any that did not answer
        before) what is left of its share; a line for each that got it."""
        now = time.monotonic()
        for nid in self.incarnations.new():
            self.pending.setdefault(nid, now)
        lines = self._give_up()
        for nid, reply in self._give().items():
            name = self.machine.partitions[nid].name
            if self.machine.restarts.get(nid):
                name += " restarted"
            if not reply.get("ok"):
                lines.append(f"{name}, but refused its traffic: {reply.get('message')}")
            elif reply["command"]["cmd"] == "receive_on":
                lines.append(f"{name}: it receives (its share is sent)")
            else:
                quota = reply["command"].get("quota")
                lines.append(f"{name}: it continues its share" + (
                    f" ({sum(quota.values()):,} packets left)" if quota is not None else ""))
        return lines

    def _give_up(self) -> list[str]:
        """Kill a running process that has not taken its share within SHARE_TIMEOUT_S (hung):
        its partition is then the machine's to restart or retire, and the run does not wait
        for it forever."""
        lines = []
        for nid, since in list(self.pending.items()):
            child = self.machine.partitions[nid]
            if (time.monotonic() - since > SHARE_TIMEOUT_S and child.proc.poll() is None
                    and child.state.value == "running"):
                self.machine.kill(nid)
                self.pending[nid] = time.monotonic()  # its next process gets the full time
                lines.append(f"{child.name} did not take its share of the traffic within "
                             f"{SHARE_TIMEOUT_S:g} s: killed (pid {child.proc.pid})")
        return lines

    def _give(self) -> dict[int, dict]:
        """Send each pending partition's running process the rest of its share; the replies
        (with the command) of those that answered. One that does not answer stays pending."""
        replies = {}
        for nid in sorted(self.pending):
            child = self.machine.partitions[nid]
            if child.proc.poll() is not None or child.state.value != "running":
                continue  # dead, or not up yet: its next process is given the share
            # named after the process: a command repeated because its reply was lost is
            # taken as the one it repeats (the workload answers "already sending" otherwise)
            command = {**self.rest_of_share(nid), "share": child.proc.pid}
            try:
                reply = self.machine.call(nid, command, SHARE_CALL_TIMEOUT_S)
            except MachineError:
                continue
            if self.machine.partitions[nid] is not child:
                continue  # restarted during the call: the new one is asked next look
            del self.pending[nid]
            self.given[nid] = child
            replies[nid] = {**reply, "command": command}
        return replies

    def rest_of_share(self, nid: int) -> dict:
        """The command for `nid`'s new incarnation: the packets its predecessors did not get
        accepted (the books say which were), within what is left of the duration; only its
        receiving if nothing is left to send."""
        peers = self._peers(nid)
        duration = None if self.until is None else self.until - time.monotonic()
        quota = None
        if self.packets is not None:
            total = self.packets * len(self.flows)
            accepted = accepted_from(self._pairs(), nid, peers)
            quota = {p: max(0, total - accepted[p]) for p in peers}
        if (duration is not None and duration <= 0) or (quota is not None
                                                         and not any(quota.values())):
            return {"cmd": "receive_on"}
        return traffic_command(peers, self.flows, self.size, None, duration, quota)

    def _pairs(self) -> dict:
        assert self.machine.memory is not None
        return pair_books(self.machine.memory.view, self.machine.layout)

    def look(self, cmd: str = "stats") -> dict[int, dict]:
        """Every local partition's report (`halt`: after stopping its traffic): its current
        process's, what killed processes counted added, and packets (and bytes) out and in
        from the books. A process not given its share yet has no report, so its partition is
        not done sending."""
        self.incarnations.last.update(collect(self.machine, cmd, self.given))
        counted = self.incarnations.counted()
        books = partition_counts(self._pairs(), self.machine.partitions)
        stats = {}
        for nid in self.machine.partitions:
            s = {**self.incarnations.last.get(nid, {}), **counted[nid], **books[nid]}
            s["bytes_out"] = sum(s["sent"].values()) * self.size
            s["bytes_in"] = sum(s["received"].values()) * self.size
            stats[nid] = s
        return stats
