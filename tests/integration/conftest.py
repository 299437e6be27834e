"""Fixtures that start real machines (real processes, segment, semaphores, pipes): one per
test (`machine`, `make_machine`), or machines the fuzz tests (test_fuzz_*.py) share across
examples (`rig`); the sweep after each cluster test's MPI job (`swept`); and the sweep of
every test's own run registry (`runs_swept`).

Every fixture that spawns also reaps and unlinks, whatever the test did. One timeout constant
for the whole suite; tests poll against a deadline instead of sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from hypervisor.config import MachineConfig, PartitionConfig
from hypervisor.machine import Machine
from hypervisor.names import RunRegistry
from tests.integration.cluster_jobs import REPO, TIMEOUT_S, env

TIMEOUT = 10.0
KiB = 1024
MiB = 1024 * KiB


PROBE = "tests.integration.probe:main"  # the tests' partition program (probe.py)


def small_config(n: int = 4, memory: int = 1 * MiB, receive: int = 256 * KiB,
                 program: str | None = PROBE, **machine) -> MachineConfig:
    """A machine sized for tests: quick to create, still page-aligned and realistic; every
    partition runs the probe unless told otherwise."""
    parts = tuple(PartitionConfig(f"p{i}", i, memory, receive, None, program)
                  for i in range(1, n + 1))
    return MachineConfig(partitions=parts, **machine)


def wait_for(predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "") -> object:
    """Poll `predicate` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)  # polling interval against a deadline


def booted_partition(argv: list[str]) -> int | None:
    """The network ID of the partition process started with `argv` (its boot block names
    it); None for any other process."""
    if "partitions.main" not in argv or "--boot" not in argv:
        return None
    return json.loads(argv[argv.index("--boot") + 1]).get("network_id")


def names_exist(machine: Machine) -> list[str]:
    shm = os.listdir("/dev/shm")
    return [n for n in shm if machine.prefix in n]


@pytest.fixture(autouse=True)
def runs_swept(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test with a `tmp_path`: the runs in its registry (`tmp_path/runs`, where
    the tests point XPMOVE_RUN_DIR) whose owner is dead are unlinked. A test that starts
    `xpmove` in a subprocess and fails before the run ended kills it in its `finally`, and a
    killed launcher cannot unlink its names (seen: a ctrl-c test that never delivered its
    signal left a whole run in /dev/shm). The sweep spares a live owner's run."""
    yield
    tmp_path = request.node.funcargs.get("tmp_path")
    if tmp_path is not None and (tmp_path / "runs").is_dir():
        RunRegistry(str(tmp_path / "runs")).sweep()


@pytest.fixture
def registry(tmp_path) -> RunRegistry:
    return RunRegistry(str(tmp_path / "runs"))


@pytest.fixture
def make_machine(registry) -> Iterator[Callable[..., Machine]]:
    machines: list[Machine] = []

    def make(config: MachineConfig | None = None) -> Machine:
        m = Machine(config or small_config(), registry=registry)
        machines.append(m)
        return m.start()

    yield make
    for m in machines:
        m.stop()
        assert not names_exist(m), f"names left behind: {names_exist(m)}"


@pytest.fixture
def machine(make_machine) -> Machine:
    return make_machine()


# -- the fuzz tests' machines (test_fuzz_*.py) -----------------------------------------------------
# Machines are shared across examples (starting one costs ~1.5 s); a partition whose pipe the
# adapter closed (or whose request stream was left mid-frame) is not used as the offender again,
# and a new machine is started when too few healthy partitions remain.

IDS = (1, 2, 3)  # the fuzz machines' network IDs


@dataclass
class Lease:
    machine: Machine
    offender: int
    sender: int  # a healthy partition that checks the adapter still serves others
    receiver: int


@dataclass
class Rig:
    """Hands out (machine, offender, sender, receiver); restarts when it must."""

    registry: RunRegistry
    machine: Machine | None = None
    adapter_pid: int = 0
    state: dict[int, str] = field(default_factory=dict)  # ok | silent (mid-frame) | closed
    last_seq: dict[tuple[int, int], int] = field(default_factory=dict)
    dirty: bool = False  # an example did not finish: its machine's state is unknown
    machines: list[Machine] = field(default_factory=list)
    checks: int = 0

    def lease(self) -> Lease:
        if self.dirty:
            self.retire()
        self.dirty = True
        for _ in range(2):
            if self.machine is not None:
                for off in IDS:
                    if self.state[off] != "ok":
                        continue
                    for snd in IDS:
                        if snd == off or self.state[snd] != "ok":
                            continue
                        for rcv in IDS:
                            if rcv not in (off, snd) and self.state[rcv] != "closed":
                                return Lease(self.machine, off, snd, rcv)
            self.retire()
            self.start()
        raise AssertionError("no usable partitions on a fresh machine")

    def start(self) -> None:
        m = Machine(small_config(3), registry=self.registry)
        self.machines.append(m)
        m.start()
        self.machine = m
        self.adapter_pid = m.pid()
        self.state = {nid: "ok" for nid in IDS}
        self.last_seq = {}
        for nid in IDS:  # every region's own data gets a pattern, so moves carry real bytes
            p = m.layout.by_id()[nid]
            m.memory.view[p.base:p.receive_base] = pattern(nid, p.receive_base - p.base)

    def retire(self) -> None:
        if self.machine is not None:
            self.machine.stop()
            assert not names_exist(self.machine)
        self.machine = None
        self.dirty = False

    def done(self) -> None:
        self.dirty = False

    def close(self) -> None:
        for m in self.machines:
            m.stop()
        leaked = [n for m in self.machines for n in names_exist(m)]
        assert not leaked, f"names left behind: {leaked}"


def pattern(nid: int, n: int) -> bytes:
    unit = bytes((nid * 37 + i * 11) & 0xFF for i in range(251))  # prime period: no alignment
    return (unit * (n // len(unit) + 1))[:n]


@pytest.fixture(scope="module")
def rig_module(tmp_path_factory) -> Iterator[Rig]:
    rig = Rig(RunRegistry(str(tmp_path_factory.mktemp("fuzz") / "runs")))
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def rig(rig_module) -> Iterator[Rig]:
    yield rig_module
    if rig_module.dirty:  # the test failed mid-example: do not hand that machine on
        rig_module.retire()


# -- the cluster tests' MPI jobs (test_cluster_*.py: pytestmark = usefixtures("swept")) ----
def mpi_runtime_names() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("mpich_shm_")}


def mapped_by_a_live_process(name: str) -> bool:
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if any(m.path == f"/dev/shm/{name}" for m in proc.memory_maps(grouped=True)):
                return True
    return False


@pytest.fixture
def swept(tmp_path: Path):
    """Whatever a test did (a failed one may end the MPI job with a host's names still there),
    the names of its runs whose owner is dead are unlinked after it (`xpmove cleanup`); and
    the MPI runtime's own shared memory must be gone with its job (the test fails if not,
    after unlinking it, so the suite leaves /dev/shm as it found it)."""
    before = mpi_runtime_names()
    yield
    if (tmp_path / "runs").exists():
        subprocess.run([sys.executable, "-m", "scripts.cli", "cleanup"], cwd=REPO,
                       env=env(tmp_path), capture_output=True, timeout=TIMEOUT_S)
    left = sorted(n for n in mpi_runtime_names() - before if not mapped_by_a_live_process(n))
    for name in left:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{name}")
    assert not left, f"the MPI job left its runtime's shared memory: {left}"
