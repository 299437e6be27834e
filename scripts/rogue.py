"""The rogue of `xpmove soak --rogue`: a hostile process of the run's own OS user (issue 12).

No POSIX mechanism stops a process of the same user from opening a run's names, so this one does
what such a process can. It derives the names from the run's prefix (`ls /dev/shm` shows it;
hypervisor/names.py: "/<prefix>-mem", "/<prefix>-lock-<id>", "/<prefix>-bell-<id>",
"/<prefix>-recall-<id>", "/<prefix>-room-<id>"), maps the
whole segment, knows where every word is from the config (hypervisor/layout.py,
adapter/receive_area.py), and until it is stopped:

* posts a random lock, doorbell, recall or room semaphore every POST_EVERY_S. A stray post must be
  ABSORBED with no effect at all, in every flow (the adapter counts and ignores it; a Fig 12
  grant ends only on its holder's token; a doorbell only wakes a receiver early; a recall
  only wakes a driver's keeper, which gives back only a lease whose `recall` word names it; a
  room post only wakes a sender early, which asks again);
* every `garbage_every` seconds writes ONE garbage word into a word of one of its `targets`:
  the destination's ring control block (head, the pending commit's three words, holder, grant
  token, released, tail, sleeping, lease, recall, wanting) or a per-pair word whose
  destination it is (the pair's sequence word, its delivered word). Such a write POISONS that
  destination: the promises no longer hold for it (its checks should refuse it, RingCorrupt),
  but it must not harm any other.

Each write is one JSON line on stdout (`{"event": "write", ...}`: destination, word, address,
old and new value, seconds since the start); on SIGTERM it prints `{"event": "done", ...}` with
its counts and exits 0. It ignores SIGINT (the soak stops it) and leaves when its parent dies.
`RogueProcess` is the soak's handle: spawn, collect the lines, stop and reap on every path.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

import posix_ipc

from adapter import receive_area as ra
from hypervisor.layout import SegmentLayout
from hypervisor.names import ipc_name

POST_EVERY_S = 0.001  # pace of the stray posts (the attack's rate, not synchronisation)
STOP_TIMEOUT_S = 2.0  # SIGTERM, then SIGKILL
MASK = (1 << 64) - 1
NUDGES = (1, -1, 8, -8, 4096, -4096)  # a plausible value: the old one a little off


def target_words(layout: SegmentLayout, dst_id: int) -> dict[str, int]:
    """Every word that belongs to destination `dst_id`, name -> byte address: its ring control
    block, and each pair's sequence and delivered word where it is the destination."""
    by_id = layout.by_id()
    dst = by_id[dst_id]
    block = {"head": ra.HEAD_OFFSET, "pending_head": ra.PENDING_OFFSET,
             "pending_source": ra.PENDING_OFFSET + 8, "pending_first_seq": ra.PENDING_OFFSET + 16,
             "holder": ra.HOLDER_OFFSET, "grant_token": ra.GRANT_TOKEN_OFFSET,
             "released": ra.RELEASED_OFFSET, "tail": ra.TAIL_OFFSET,
             "sleeping": ra.SLEEPING_OFFSET, "lease": ra.LEASE_OFFSET,
             "recall": ra.RECALL_OFFSET, "wanting": ra.WANTING_OFFSET}
    words = {name: dst.control + offset for name, offset in block.items()}
    for src in layout.partitions:
        if src.network_id != dst_id:
            words[f"seq {src.network_id}->{dst_id}"] = layout.seq_address(src.index, dst.index)
            words[f"delivered {src.network_id}->{dst_id}"] = layout.delivered_address(
                src.index, dst.index)
    return words


def garbage(rng: random.Random, old: int) -> tuple[str, int]:
    """(kind, a u64 other than `old`): 0, all ones, random bits, or the old value nudged (the
    lowest bit of `old` flipped if the pick was `old` itself)."""
    kind = rng.choice(("zero", "ones", "random", "nudged"))
    value = {"zero": 0, "ones": MASK, "random": rng.getrandbits(64),
             "nudged": (old + rng.choice(NUDGES)) & MASK}[kind]
    return (kind, value) if value != old else ("flipped", old ^ 1)


@dataclass(frozen=True)
class RoguePlan:
    """What the rogue attacks: the run (prefix, layout), the destinations it poisons, when."""

    prefix: str
    layout: SegmentLayout
    targets: tuple[int, ...]
    seed: int
    garbage_every: float
    first_garbage: float  # seconds after the start

    def to_json(self) -> str:
        return json.dumps({"prefix": self.prefix, "layout": self.layout.to_dict(),
                           "targets": list(self.targets), "seed": self.seed,
                           "garbage_every": self.garbage_every,
                           "first_garbage": self.first_garbage})

    @classmethod
    def from_json(cls, text: str) -> RoguePlan:
        data = json.loads(text)
        return cls(str(data["prefix"]), SegmentLayout.from_dict(data["layout"]),
                   tuple(int(t) for t in data["targets"]), int(data["seed"]),
                   float(data["garbage_every"]), float(data["first_garbage"]))


def attack(plan: RoguePlan, out: TextIO, stopped: threading.Event) -> dict:
    """Post and write until `stopped` is set or the parent dies; the final counts."""
    shm = posix_ipc.SharedMemory(ipc_name(plan.prefix, "mem"))
    segment = mmap.mmap(shm.fd, shm.size)
    shm.close_fd()
    words = ra.words(memoryview(segment))
    ids = [p.network_id for p in plan.layout.partitions]
    sems = [(what, posix_ipc.Semaphore(ipc_name(plan.prefix, f"{what}-{nid}")))
            for what in ("lock", "bell", "recall", "room") for nid in ids]
    rng = random.Random(plan.seed)  # the posts
    pick = random.Random(plan.seed + 1)  # the writes: the same words and kinds for a seed
    posts: Counter[str] = Counter()
    writes = 0
    parent = os.getppid()
    start = time.monotonic()
    next_write = start + plan.first_garbage
    while not stopped.is_set() and os.getppid() == parent:
        what, sem = rng.choice(sems)
        sem.release()
        posts[what] += 1
        now = time.monotonic()
        if now >= next_write:
            next_write += plan.garbage_every
            dst = pick.choice(plan.targets)
            word, address = pick.choice(sorted(target_words(plan.layout, dst).items()))
            old = words[address >> 3]
            kind, value = garbage(pick, old)
            words[address >> 3] = value
            writes += 1
            out.write(json.dumps({"event": "write", "t": round(now - start, 3), "dst": dst,
                                  "word": word, "address": address, "old": old,
                                  "value": value, "kind": kind}) + "\n")
            out.flush()
        time.sleep(POST_EVERY_S)
    for _, sem in sems:
        sem.close()
    return {"event": "done", "lock_posts": posts["lock"], "bell_posts": posts["bell"],
            "recall_posts": posts["recall"], "room_posts": posts["room"], "writes": writes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the rogue of `xpmove soak --rogue`")
    parser.add_argument("--plan", required=True, help="JSON RoguePlan")
    plan = RoguePlan.from_json(parser.parse_args(argv).plan)
    stopped = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the soak stops us
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        done = attack(plan, sys.stdout, stopped)
    except (posix_ipc.Error, OSError, ValueError) as exc:
        print(f"rogue: cannot attack run {plan.prefix}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(done), flush=True)
    return 0


@dataclass
class RogueProcess:
    """The soak's handle on the rogue: `start()`, then `stop()` on every path (idempotent:
    SIGTERM, STOP_TIMEOUT_S, SIGKILL, reaped). `writes` are its write lines as they come,
    `done` its final counts, `failure` why it ended on its own (empty if it did not)."""

    plan: RoguePlan
    writes: list[dict] = field(default_factory=list)
    done: dict = field(default_factory=dict)
    failure: str = ""
    _proc: subprocess.Popen | None = None
    _reader: threading.Thread | None = None
    _stderr: list[str] = field(default_factory=list)

    def start(self) -> RogueProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__, "--plan", self.plan.to_json()],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True, name="rogue-reader")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout and self._proc.stderr
        for line in self._proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("event") == "write":
                self.writes.append(message)
            elif message.get("event") == "done":
                self.done = message
        self._stderr.append(self._proc.stderr.read())

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        ended_alone = proc.poll() is not None
        if not ended_alone:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        if ended_alone and not self.failure:
            why = "".join(self._stderr).strip() or "no message"
            self.failure = f"the rogue ended on its own (exit code {proc.returncode}): {why}"
        self._proc = None


if __name__ == "__main__":
    sys.exit(main())
