"""Fixtures that start real machines (real processes, segment, semaphores, pipes).

Every fixture that spawns also reaps and unlinks, whatever the test did. One timeout constant
for the whole suite; tests poll against a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator

import pytest

from hypervisor.config import MachineConfig, PartitionConfig
from hypervisor.machine import Machine
from hypervisor.names import RunRegistry

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
