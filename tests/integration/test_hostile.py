"""A hostile process of the same OS user (issue 12): real machines, a rogue thread in the test
process holding the run's names."""

from __future__ import annotations

import threading
import time

import posix_ipc
import pytest

from scripts.soak import pair_books
from tests.integration.conftest import TIMEOUT, small_config, wait_for

ROGUE_PERIOD_S = 0.0005


class Poster(threading.Thread):
    """Opens every destination's lock semaphore by name and posts one every ~0.5 ms."""

    def __init__(self, names: dict[int, str]):
        super().__init__(daemon=True)
        self.sems = [posix_ipc.Semaphore(name) for name in names.values()]
        self.halt = threading.Event()
        self.posts = 0

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                for sem in self.sems:
                    sem.release()
                    self.posts += 1
                time.sleep(ROGUE_PERIOD_S)
        finally:
            for sem in self.sems:
                sem.close()


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("flow", ["fig12", "fig11"])
def test_stray_lock_posts_do_not_break_exactly_once(make_machine, flow, batch):
    """Every lock is posted every 0.5 ms while all-to-all traffic runs: the adapter absorbs
    and counts the stray posts, a grant ends only on its holder's proof; nothing is corrupt,
    lost or doubled, and every accepted packet is delivered."""
    m = make_machine(small_config())
    rogue = Poster(m.names.locks)
    rogue.start()
    try:
        for nid in m.partitions:
            peers = [p for p in m.partitions if p != nid]
            assert m.call(nid, {"cmd": "traffic", "peers": peers, "flows": [flow], "size": 512,
                                "duration": 1.5, "send_timeout": TIMEOUT,
                                "batch": batch})["ok"]

        def done():
            stats = {n: m.call(n, {"cmd": "stats"})["stats"] for n in m.partitions}
            return stats if all(s["sender_done"] for s in stats.values()) else None

        wait_for(done, timeout=TIMEOUT, what="senders to finish")
    finally:
        rogue.halt.set()
        rogue.join(TIMEOUT)
    assert rogue.posts > 1000

    def settled():
        stats = {n: m.call(n, {"cmd": "stats"})["stats"] for n in m.partitions}
        sent = sum(sum(s["sent"].values()) for s in stats.values())
        got = sum(sum(s["received"].values()) for s in stats.values())
        return stats if sent == got else None

    stats = wait_for(settled, timeout=TIMEOUT, what="every accepted packet delivered")
    for s in stats.values():
        assert s["corrupt"] == s["gaps"] == s["duplicates"] == 0, s
        assert not s["errors"], s
    accepted = sum(sum(s["sent"].values()) for s in stats.values())
    assert accepted > 0
    committed, delivered = pair_books(m)
    assert committed == delivered == accepted
    adapter = m.adapter_stats()
    assert adapter["errors"].get("stray_lock_release", 0) > 0, adapter
    assert "grants_abandoned" not in adapter["counters"], adapter
    assert set(adapter["locks"].values()) == {"free"}, adapter
