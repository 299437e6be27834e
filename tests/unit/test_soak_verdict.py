"""The soak's verdict and the rogue's aim (scripts/soak_report.py, scripts/rogue.py): pure."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from adapter import receive_area
from hypervisor.config import MachineConfig, PartitionConfig
from hypervisor.layout import RING_CONTROL_SIZE, plan_segment
from scripts.rogue import MASK, RoguePlan, garbage, target_words
from scripts.soak_report import (
    KillBook,
    Poisoned,
    SoakReport,
    broken_promises,
    poison_lines,
    tally,
)

KiB = 1024


def clean(**changes) -> SoakReport:
    report = SoakReport(accepted=100, delivered=100, kills=4, locks_free=True)
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def test_a_clean_report_passes():
    assert broken_promises(clean()) == [] and clean().ok


def test_a_loss_fails_the_verdict():
    report = clean(delivered=99, lost=1)
    assert broken_promises(report) == ["1 accepted packets lost"]
    assert not report.ok


def test_more_delivered_than_accepted_fails_too():
    assert broken_promises(clean(lost=-3)) == ["3 more packets delivered than accepted"]


def test_every_promise_is_in_the_verdict():
    report = clean(duplicated=2, corrupt=1, locks_free=False,
                   innocents_hurt=["destination 2 was refused as corrupt but never poisoned"],
                   deaths=["adapter died (exit code 1): not killed by the soak"],
                   sender_failures=["partition 1's sender stopped: sender: OSError"],
                   rogue_failure="the rogue ended on its own (exit code 1): no message")
    assert broken_promises(report) == [
        "2 packets delivered twice", "1 packets corrupt",
        "a lock of a destination not poisoned is still taken",
        "destination 2 was refused as corrupt but never poisoned",
        "adapter died (exit code 1): not killed by the soak",
        "partition 1's sender stopped: sender: OSError",
        "the rogue ended on its own (exit code 1): no message"]


def test_tally_leaves_out_the_poisoned_only():
    """A loss on a poisoned destination is reported, not counted; one elsewhere is lost."""
    books = {1: (10, 10), 2: (2**64 - 1, 5), 3: (7, 6)}
    assert tally(books, {2}) == (17, 16)  # 3 lost one: the verdict fails
    accepted, delivered = tally(books, {2})
    assert not clean(accepted=accepted, delivered=delivered, lost=accepted - delivered).ok
    assert tally(books, {2, 3}) == (10, 10)
    assert tally(books, ()) == (2**64 + 16, 21)


def test_poison_lines_name_what_was_written_where_and_what_was_seen():
    write = {"t": 1.25, "dst": 3, "word": "head", "address": 256, "old": 4096, "value": 0,
             "kind": "zero"}
    report = clean(rogue=True, poisoned=[Poisoned(3, [write], 50, 40, "ring counters bad",
                                                  "RingCorrupt: x", 0, 0)])
    assert poison_lines(report) == [
        "destination 3 poisoned (1 garbage words; its books are reported, not promised):",
        "  at 1.25 s: head (address 256) = 0 (zero), was 4096",
        "  adapter: refused it: ring counters bad",
        "  receiver: stopped: RingCorrupt: x",
        "  committed 50, delivered 40, duplicates 0, corrupt 0"]


def layout():
    return plan_segment(MachineConfig(partitions=tuple(
        PartitionConfig(f"p{i}", i * 10, 64 * KiB, 16 * KiB) for i in range(1, 5))))


def test_target_words_are_the_destinations_own():
    """Its whole control block's words and the pair words where it is the destination; all in
    the control area; none of another destination's."""
    lay = layout()
    mine = target_words(lay, 20)
    dst = lay.by_id()[20]
    ring = receive_area.RingWords.of(dst)
    block = {a for name, a in mine.items() if " " not in name}
    assert {ring.head * 8, ring.tail * 8, ring.token * 8, ring.released * 8, ring.lease * 8,
            ring.recall * 8, ring.wanting * 8} <= block
    assert all(dst.control <= a < dst.control + RING_CONTROL_SIZE for a in block)
    assert mine["seq 10->20"] == lay.seq_address(0, 1)
    assert mine["delivered 40->20"] == lay.delivered_address(3, 1)
    assert len(mine) == 12 + 2 * 3
    assert all(a < lay.control_size and a % 8 == 0 for a in mine.values())
    others = {a for nid in (10, 30, 40) for a in target_words(lay, nid).values()}
    assert not others & set(mine.values())


@given(st.integers(0, MASK), st.integers(0, 2**32))
def test_garbage_is_a_word_and_never_the_old_value(old, seed):
    kind, value = garbage(random.Random(seed), old)
    assert 0 <= value <= MASK and value != old
    assert kind in ("zero", "ones", "random", "nudged", "flipped")


def test_the_plan_travels_as_json():
    plan = RoguePlan("xpm-0123abcd", layout(), (20, 30), 7, 0.5, 0.25)
    assert RoguePlan.from_json(plan.to_json()) == plan


def test_only_the_soaks_own_kills_excuse_a_death():
    """Each kill excuses one SIGKILL death of that child; a second SIGKILL of it (the OOM
    killer, an operator's kill -9), one of a child the soak did not kill, or a death by any
    other signal or exit is not the soak's."""
    book = KillBook()
    book.killed("adapter")
    book.killed("delta")
    assert not book.died("charlie", -9)  # nobody here killed charlie
    assert not book.died("delta", -11)  # a crash, not our SIGKILL (the kill stays pending)
    assert book.died("delta", -9)
    assert not book.died("delta", -9)  # one kill, one death
    assert book.died("adapter", -9)
    assert not book.died("adapter", 1)
