"""The bench's split floor (scripts/loadgen/floor.py) with its real checker process: the
floor's loop with its check in a second process sharing a memfd."""

from __future__ import annotations

import subprocess

import psutil
import pytest

from hypervisor.children import REP_MOVSB_OFF, REP_MOVSB_TUNABLE
from scripts.loadgen.benchcore import BenchError
from scripts.loadgen.floor import _checker, _Floor, measured_floors, split_floors


def test_split_floor_checks_in_a_second_process_and_leaves_nothing():
    before = set(psutil.Process().children())
    out = split_floors({64: 32, 4096: 2}, seconds=0.02, rounds=1)
    assert set(out) == {64, 4096}
    assert all(v["S"] > 0 and v["cores"] in (1, 2) for v in out.values())
    assert out[64]["batch"] == 32 and out[4096]["batch"] == 2
    assert set(psutil.Process().children()) == before


def test_split_floor_of_packets_bigger_than_its_batch_cap():
    """A packet above FLOOR_BYTES is a batch of one: the shared memory holds it."""
    out = split_floors({12 << 20: 16}, seconds=0.01, rounds=1)
    assert out[12 << 20]["S"] > 0


def test_a_checker_that_dies_is_a_bench_error_and_is_reaped():
    with _checker(1 << 20) as checker:
        checker.proc.kill()
        checker.proc.wait(timeout=10)
        with pytest.raises(BenchError, match="the checker process ended"):
            checker.check(64, 1, 1)
    assert checker.proc.returncode is not None
    assert not psutil.Process().children()


def test_an_old_batch_is_not_passed_as_the_next_one():
    """The checker compares the batch's first counter with the one it was told, so a batch
    it checked before (the fill not done, or lost) does not count as the next one."""
    with _checker(1 << 20) as checker:
        assert not checker.check(64, 32, 1)[0]  # nothing filled yet: all zeros
        floor = _Floor(64, 32, memoryview(checker.memory))
        floor.fill(1)
        assert checker.check(64, 32, 1)[0]
        assert not checker.check(64, 32, 33)[0]  # the same bytes again, told the next batch
        del floor  # no view of the memory may outlive the checker's context


def test_the_floor_is_measured_with_the_partitions_copies(monkeypatch):
    """The floor runs in a child process with the partitions' environment (glibc's
    `rep movsb` off, hypervisor/children.py), whatever the bench process was started with;
    it reports what `floors` does and leaves no process behind."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    seen: list[dict] = []
    real_run = subprocess.run

    def run(argv, **kwargs):
        seen.append(kwargs["env"])
        return real_run(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    before = set(psutil.Process().children())
    out = measured_floors((64, 2048), (1, 32), seconds=0.02, rounds=1)
    assert set(out) == {"64", "2048"}
    assert all(f["S"] > 0 and f["batch"] in (1, 32) and f["split"]["S"] > 0
               and f["S"] == max(f["alone"], f["split"]["S"]) for f in out.values())
    assert [env["GLIBC_TUNABLES"] for env in seen] == [f"{REP_MOVSB_TUNABLE}={REP_MOVSB_OFF}"]
    assert set(psutil.Process().children()) == before


def test_a_floor_process_that_fails_is_a_bench_error_naming_why():
    why = r"(?s)the floor process exited with 1: .*ValueError: packet size 0"
    with pytest.raises(BenchError, match=why):
        measured_floors((0,), (1,), seconds=0.02, rounds=1)
