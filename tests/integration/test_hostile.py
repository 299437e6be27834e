"""A hostile process of the same OS user (issue 12): real machines, a rogue thread in the test
process holding the run's names."""

from __future__ import annotations

import threading
import time

import posix_ipc
import pytest

from scripts.soak import segment_totals
from tests.integration.conftest import TIMEOUT, small_config, wait_for
from tests.integration.test_faults import kill, restarted
from tests.integration.test_machine import send

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
    committed, delivered = segment_totals(m)
    assert committed == delivered == accepted
    adapter = m.adapter_stats()
    assert adapter["errors"].get("stray_lock_release", 0) > 0, adapter
    assert "grants_abandoned" not in adapter["counters"], adapter
    assert set(adapter["locks"].values()) == {"free"}, adapter


def _words(m):
    from adapter import receive_area

    return receive_area.words(m.memory.view)


def _innocents_move(m, bad: int) -> None:
    for src in m.partitions:
        for dst in m.partitions:
            if src != dst and dst != bad:
                for flow in ("fig11", "fig12"):
                    reply = send(m, src, dst, b"innocent", flow, timeout=TIMEOUT)
                    assert reply["ok"], (src, dst, flow, reply)


def test_a_poisoned_pending_commit_fails_its_destination_not_the_adapter(make_machine):
    """Issue 12 item 2: the pending commit's first-sequence word is zeroed while a driver holds
    a grant, then the holder is SIGKILLed: the adapter used to die (and every restarted one in
    recovery). Now the adapter lives on, the destination is refused by name, the rest moves."""
    from adapter import receive_area

    m = make_machine(small_config(restart="always"))
    adapter_pid = m.pid()
    assert m.call(1, {"cmd": "hold_grant", "dst": 2, "count": 5000})["ok"]
    ring = receive_area.RingWords.of(m.layout.by_id()[2])
    _words(m)[ring.pending + 2] = 0
    kill(m.pid(1))
    wait_for(lambda: restarted(m, 1), what="partition 1 to restart")
    reply = send(m, 3, 2, b"to the poisoned one", "fig11", timeout=TIMEOUT)
    assert (reply["ok"], reply["error"]) == (False, "RingCorrupt"), reply
    _innocents_move(m, bad=2)
    assert m.pid() == adapter_pid and not restarted(m, "adapter")
    assert m.adapter_stats()["counters"]["destinations_corrupt"] == 1


def test_a_poisoned_sequence_word_does_not_cut_the_sender_off(make_machine):
    """Issue 12 item 3: the pair (1 -> 2)'s sequence word is 2**64-1: partition 1's next send
    to 2 fails with RingCorrupt, its pipe stays open and its sends elsewhere work."""
    m = make_machine(small_config())
    layout = m.layout
    src, dst = layout.by_id()[1], layout.by_id()[2]
    _words(m)[layout.seq_address(src.index, dst.index) >> 3] = 2**64 - 1
    for flow in ("fig11", "fig12"):
        reply = send(m, 1, 2, b"innocent", flow, timeout=TIMEOUT)
        assert (reply["ok"], reply["error"]) == (False, "RingCorrupt"), reply
        assert send(m, 1, 3, b"elsewhere", flow, timeout=TIMEOUT)["ok"]
    _innocents_move(m, bad=2)
    stats = m.adapter_stats()
    assert "internal" not in stats["errors"] and "connections_closed" not in stats["counters"]


def test_a_plausible_forged_head_is_refused_to_senders(make_machine):
    """Issue 12 item 4: a head that passes the counter checks but is not the last commit's:
    the receiver reports RingCorrupt, and the senders get RingCorrupt too instead of moves
    accepted into a ring nobody can read."""
    from adapter import receive_area

    m = make_machine(small_config())
    assert send(m, 1, 2, b"x" * 10, "fig11")["seq"] == 1
    dst = m.layout.by_id()[2]
    words = _words(m)
    receive_area.publish_head(words, dst.control, receive_area.read_head(words, dst) + 4096)
    assert m.call(2, {"cmd": "receive", "timeout": 1.0})["packet"]["seq"] == 1  # the real one
    reply = m.call(2, {"cmd": "receive", "timeout": 1.0})
    assert reply["ok"] is False and reply["error"] == "RingCorrupt", reply
    for flow in ("fig11", "fig12"):
        reply = send(m, 3, 2, b"into that ring?", flow, timeout=TIMEOUT)
        assert (reply["ok"], reply["error"]) == (False, "RingCorrupt"), reply
    _innocents_move(m, bad=2)
