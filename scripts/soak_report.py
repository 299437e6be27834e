"""The soak's report and verdict (pure: no processes, no segment), for scripts/soak.py.

The verdict is `broken_promises`: what the soak found broken for the destinations the rogue
did not poison (empty: passed). A poisoned destination's books and counts are reported
(`Poisoned`, `poison_lines`), never promised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from scripts.tables import Col, Grid


@dataclass
class Poisoned:
    """A destination the rogue poisoned: what it wrote where, and what was seen of it."""

    network_id: int
    writes: list[dict]
    accepted: int = 0  # its books (not promised: its words were written by the rogue)
    delivered: int = 0
    refused: str = ""  # why the adapter refused it (RingCorrupt), if it did
    receiver_error: str = ""  # why its receiver stopped, if it did
    duplicates: int = 0
    corrupt: int = 0


@dataclass
class SoakReport:
    accepted: int = 0  # over the destinations not poisoned
    delivered: int = 0
    failed_reported: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    kills: int = 0
    adapter_kills: int = 0
    restarts: int = 0
    locks_free: bool = False
    deaths: list[str] = field(default_factory=list)  # deaths the soak did not cause
    innocents_hurt: list[str] = field(default_factory=list)  # unpoisoned, yet refused/stopped
    sender_failures: list[str] = field(default_factory=list)  # a sender that gave up entirely
    sender_errors: dict[str, int] = field(default_factory=dict)  # by kind, over every sender
    rogue: bool = False
    lock_posts: int = 0
    bell_posts: int = 0
    recall_posts: int = 0
    room_posts: int = 0
    stray_posts_absorbed: int = 0  # by the adapter (seen by its last look at each incarnation)
    poisoned: list[Poisoned] = field(default_factory=list)
    rogue_failure: str = ""
    drained: bool = True  # False: interrupted before the drain (lost, locks free unknown)
    seed: int | None = None  # the soak's random seed (kills, rogue): --seed replays it

    @property
    def ok(self) -> bool:
        return not broken_promises(self)


class KillBook:
    """Which deaths the soak caused: each of its kills excuses ONE death by SIGKILL of that
    child (by name); any other death (another signal, or a SIGKILL nobody here sent: the OOM
    killer, an operator) is a broken promise."""

    SIGKILL_CODE = -9  # a Popen return code: minus the signal

    def __init__(self) -> None:
        self._pending: dict[str, int] = {}

    def killed(self, name: str) -> None:
        self._pending[name] = self._pending.get(name, 0) + 1

    def died(self, name: str, exit_code: int) -> bool:
        """Whether the soak caused this death (and it is now accounted for)."""
        if exit_code != self.SIGKILL_CODE or not self._pending.get(name):
            return False
        self._pending[name] -= 1
        return True


def broken_promises(report: SoakReport) -> list[str]:
    """Every promise the soak found broken for the destinations not poisoned (empty: passed).
    Pure: the verdict of `xpmove soak`."""
    broken = []
    if report.lost > 0:
        broken.append(f"{report.lost:,} accepted packets lost")
    elif report.lost < 0:
        broken.append(f"{-report.lost:,} more packets delivered than accepted")
    if report.duplicated:
        broken.append(f"{report.duplicated:,} packets delivered twice")
    if report.corrupt:
        broken.append(f"{report.corrupt:,} packets corrupt")
    if not report.locks_free:
        broken.append("a lock of a destination not poisoned is still taken")
    broken += report.innocents_hurt + report.deaths + report.sender_failures
    if report.rogue_failure:
        broken.append(report.rogue_failure)
    return broken


def tally(books: Mapping[int, tuple[int, int]], poisoned: Collection[int]) -> tuple[int, int]:
    """(accepted, delivered) summed over the destinations not poisoned; `books` is
    destination -> (committed, delivered) over every source. Pure."""
    kept = [b for dst, b in books.items() if dst not in poisoned]
    return sum(c for c, _ in kept), sum(d for _, d in kept)



def report_table(report: SoakReport) -> Grid:
    table = Grid("soak", [Col("what", "left", True), Col("count")])
    unknown = set() if report.drained else {"lost", "locks_free"}
    for f in dataclasses.fields(report)[:10]:
        value = "not determined" if f.name in unknown else str(getattr(report, f.name))
        table.add_row(f.name.replace("_", " "), value)
    if report.rogue:
        table.add_row("rogue lock posts", str(report.lock_posts))
        table.add_row("rogue bell posts", str(report.bell_posts))
        table.add_row("rogue recall posts", str(report.recall_posts))
        table.add_row("rogue room posts", str(report.room_posts))
        table.add_row("stray posts absorbed", str(report.stray_posts_absorbed))
        table.add_row("poisoned destinations", str(len(report.poisoned)))
        table.add_row("RingCorrupt at senders", str(report.sender_errors.get("RingCorrupt", 0)))
    return table


def poison_lines(report: SoakReport) -> list[str]:
    """What the rogue did to each poisoned destination and what was seen of it."""
    lines = []
    for p in report.poisoned:
        lines.append(f"destination {p.network_id} poisoned ({len(p.writes)} garbage words; "
                     f"its books are reported, not promised):")
        lines += [f"  at {w['t']:.2f} s: {w['word']} (address {w['address']}) = {w['value']} "
                  f"({w['kind']}), was {w['old']}" for w in p.writes]
        lines.append("  adapter: " + (f"refused it: {p.refused}" if p.refused
                                          else "never refused it"))
        lines.append("  receiver: " + (f"stopped: {p.receiver_error}" if p.receiver_error
                                       else "no error"))
        lines.append(f"  committed {p.accepted}, delivered {p.delivered}, duplicates "
                     f"{p.duplicates}, corrupt {p.corrupt}")
    return lines
