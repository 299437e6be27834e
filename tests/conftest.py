"""Suite-wide guard: the tests leave /dev/shm as they found it (Invariant 7).

Checked for the runs this test process created (Machine.prefixes_created); tests that start
`xpmove` in a subprocess check their own run's names themselves. Other runs on the machine
(a developer's launch, a parallel session) are none of this suite's business.
"""

from __future__ import annotations

import os

import pytest

from hypervisor.machine import Machine

SHM = "/dev/shm"


def names_of(prefixes: list[str]) -> set[str]:
    if not os.path.isdir(SHM) or not prefixes:
        return set()
    return {n for n in os.listdir(SHM) if any(p in n for p in prefixes)}


@pytest.fixture(autouse=True, scope="session")
def dev_shm_unchanged():
    yield
    leaked = names_of(Machine.prefixes_created)
    assert not leaked, f"the test suite leaked IPC names: {sorted(leaked)}"
