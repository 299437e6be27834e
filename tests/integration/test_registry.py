"""Integration: a killed run's shared memory and semaphores are swept by a later sweep.

Real processes and real posix_ipc objects. Every test reaps what it spawns and unlinks
what it names, even when an assertion fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import posix_ipc
import psutil
import pytest

from hypervisor.names import RunRegistry, ipc_name, new_run_prefix, unlink_quietly

TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]

# The child plays a hypervisor that is about to be killed: it registers its run, records
# the names before creating them, creates them, says "ready" and blocks on stdin.
CHILD = """
import os, sys
import posix_ipc
from hypervisor.names import RunRegistry
directory, prefix, shm_name, sem_name = sys.argv[1:5]
registry = RunRegistry(directory)
registry.register(prefix, os.getpid())
registry.add(prefix, shm=[shm_name], sem=[sem_name])
posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, size=4096).close_fd()
posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, initial_value=1).close()
print("ready", flush=True)
sys.stdin.read()
"""


class Run:
    """A child 'hypervisor' holding one shm and one semaphore under a fresh prefix."""

    def __init__(self, directory: Path) -> None:
        self.prefix = new_run_prefix()
        self.shm = ipc_name(self.prefix, "mem")
        self.sem = ipc_name(self.prefix, "lock-1")
        pythonpath = [str(REPO), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in pythonpath if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), self.prefix, self.shm, self.sem],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
            cwd=REPO,
            env=env,
        )

    def wait_ready(self) -> None:
        """Poll the child's stdout for "ready" against a deadline (no sleeping)."""
        out = b""
        deadline = time.monotonic() + TIMEOUT
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"ready\n" not in out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"child not ready within {TIMEOUT}s; output so far: {out!r}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(TIMEOUT)
                    pytest.fail(f"child exited with {code} before ready: {out.decode()}")
                out += chunk

    def kill(self) -> None:
        """SIGKILL and reap, so the pid is really gone (not a zombie) afterwards."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def close(self) -> None:
        try:
            self.kill()
        finally:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            unlink_quietly(shm=[self.shm], sem=[self.sem])


@pytest.fixture
def spawn_run(tmp_path: Path) -> Iterator[Callable[[], Run]]:
    runs: list[Run] = []

    def spawn() -> Run:
        run = Run(tmp_path)
        runs.append(run)
        return run

    try:
        yield spawn
    finally:
        for run in runs:
            run.close()


def exists_shm(name: str) -> bool:
    try:
        posix_ipc.SharedMemory(name).close_fd()
    except posix_ipc.ExistentialError:
        return False
    return True


def exists_sem(name: str) -> bool:
    try:
        posix_ipc.Semaphore(name).close()
    except posix_ipc.ExistentialError:
        return False
    return True


def test_sweep_spares_live_run_and_unlinks_killed_run(
    tmp_path: Path, spawn_run: Callable[[], Run]
) -> None:
    run = spawn_run()
    run.wait_ready()
    registry = RunRegistry(tmp_path)
    [record] = registry.records()
    assert record["owner_pid"] == run.proc.pid
    assert (record["shm"], record["sem"]) == ([run.shm], [run.sem])

    assert registry.sweep() == []  # owner alive: nothing touched
    assert exists_shm(run.shm) and exists_sem(run.sem)
    assert len(registry.records()) == 1

    run.kill()
    assert sorted(registry.sweep()) == sorted([run.shm, run.sem])
    assert not exists_shm(run.shm)
    assert not exists_sem(run.sem)
    assert registry.records() == []
    assert registry.sweep() == []  # idempotent


def test_sweep_only_touches_dead_runs(tmp_path: Path, spawn_run: Callable[[], Run]) -> None:
    doomed, survivor = spawn_run(), spawn_run()
    doomed.wait_ready()
    survivor.wait_ready()
    doomed.kill()
    registry = RunRegistry(tmp_path)
    assert sorted(registry.sweep()) == sorted([doomed.shm, doomed.sem])
    assert exists_shm(survivor.shm) and exists_sem(survivor.sem)
    assert [r["prefix"] for r in registry.records()] == [survivor.prefix]


def test_sweep_orphan_sweeps_only_its_run_once_the_owner_is_dead(
        tmp_path: Path, spawn_run: Callable[[], Run]) -> None:
    """What an adapter does when its hypervisor's channel closes: its own run only, and
    nothing while the owner lives (the wait is bounded)."""
    mine, other, alive = spawn_run(), spawn_run(), spawn_run()
    for run in (mine, other, alive):
        run.wait_ready()
    registry = RunRegistry(tmp_path)
    assert registry.sweep_orphan(alive.prefix, wait_s=0.05) == []
    assert exists_shm(alive.shm) and exists_sem(alive.sem)
    mine.kill()
    other.kill()
    assert sorted(registry.sweep_orphan(mine.prefix)) == sorted([mine.shm, mine.sem])
    assert exists_shm(other.shm) and exists_sem(other.sem)  # dead, but not this sweep's
    assert sorted(r["prefix"] for r in registry.records()) == sorted([other.prefix,
                                                                      alive.prefix])
    assert registry.sweep_orphan(mine.prefix) == []  # its record is gone: nothing to do


def test_a_dead_runs_mpi_runtime_files_are_unlinked_and_no_others(
        tmp_path: Path, spawn_run: Callable[[], Run]) -> None:
    """A cluster host records the MPI runtime's shared memory it maps (a killed rank never
    reaches the MPI_Finalize that unlinks it); the run's sweep unlinks it. Only that pattern
    is accepted, and a refused path changes nothing."""
    run = spawn_run()
    run.wait_ready()
    registry = RunRegistry(tmp_path)
    runtime = f"/dev/shm/mpich_shm_{run.prefix[4:]}_0"
    try:
        with open(runtime, "wb"):
            pass
        for bad in ("/etc/hostname", "/dev/shm/mpich_shm_x/../../tmp/x", f"/dev/shm/{run.prefix}"):
            with pytest.raises(ValueError, match="is not a file of the MPI runtime"):
                registry.add_runtime(run.prefix, [runtime, bad])
        assert "runtime" not in registry.records()[0]
        registry.add_runtime(run.prefix, [runtime, runtime])
        assert registry.records()[0]["runtime"] == [runtime]
        assert registry.sweep() == []  # its owner lives
        run.kill()
        assert sorted(registry.sweep()) == sorted([run.shm, run.sem, runtime])
        assert not os.path.exists(runtime) and not registry.records()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(runtime)


def test_unreaped_zombie_owner_counts_as_dead(tmp_path: Path, spawn_run: Callable[[], Run]) -> None:
    run = spawn_run()
    run.wait_ready()
    run.proc.send_signal(signal.SIGKILL)
    # Wait for the kernel to turn it into a zombie without reaping it (we are its parent).
    os.waitid(os.P_PID, run.proc.pid, os.WEXITED | os.WNOWAIT)
    assert psutil.Process(run.proc.pid).status() == psutil.STATUS_ZOMBIE
    assert sorted(RunRegistry(tmp_path).sweep()) == sorted([run.shm, run.sem])
    assert not exists_shm(run.shm) and not exists_sem(run.sem)


@pytest.fixture
def own_names() -> Iterator[tuple[str, str, str]]:
    prefix = new_run_prefix()
    shm, sem = ipc_name(prefix, "mem"), ipc_name(prefix, "bell-1")
    try:
        yield prefix, shm, sem
    finally:
        unlink_quietly(shm=[shm], sem=[sem])


def pretend_pid_reused(path: Path) -> None:
    """Rewrite a record as if its owner's pid now belonged to a later process."""
    record = json.loads(path.read_text())
    record["owner_create_time"] -= 3600.0
    path.write_text(json.dumps(record))


def test_reused_pid_counts_as_dead(tmp_path: Path, own_names: tuple[str, str, str]) -> None:
    """A live pid whose create time differs from the record is someone else: sweep."""
    prefix, shm, sem = own_names
    registry = RunRegistry(tmp_path)
    registry.register(prefix, os.getpid())
    registry.add(prefix, shm=[shm], sem=[sem])
    posix_ipc.SharedMemory(shm, posix_ipc.O_CREX, size=4096).close_fd()
    posix_ipc.Semaphore(sem, posix_ipc.O_CREX).close()
    assert registry.sweep() == []

    pretend_pid_reused(tmp_path / f"{prefix}.json")
    assert sorted(registry.sweep()) == sorted([shm, sem])
    assert not exists_shm(shm) and not exists_sem(sem)


def test_sweep_of_record_whose_names_were_never_created(
    tmp_path: Path, own_names: tuple[str, str, str]
) -> None:
    """A crash between recording and creating leaves a record but no objects: no error."""
    prefix, shm, sem = own_names
    registry = RunRegistry(tmp_path)
    registry.register(prefix, os.getpid())
    registry.add(prefix, shm=[shm], sem=[sem])
    pretend_pid_reused(tmp_path / f"{prefix}.json")
    assert registry.sweep() == []
    assert registry.records() == []


def test_unlink_quietly_is_idempotent(own_names: tuple[str, str, str]) -> None:
    _, shm, sem = own_names
    posix_ipc.SharedMemory(shm, posix_ipc.O_CREX, size=4096).close_fd()
    posix_ipc.Semaphore(sem, posix_ipc.O_CREX).close()
    assert unlink_quietly(shm=[shm], sem=[sem]) == [shm, sem]
    assert unlink_quietly(shm=[shm], sem=[sem]) == []
    assert not exists_shm(shm) and not exists_sem(sem)
