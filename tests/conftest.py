"""Suite-wide guard: the tests leave /dev/shm as they found it (Invariant 7).

Every run's names start with "xpm-" (hypervisor.names). The names present when the session
starts are the business of whoever made them (a developer's launch, another session); any
other such name still there when the suite ends is a leak of this suite's.
"""

from __future__ import annotations

import os

import pytest

SHM = "/dev/shm"


def run_names() -> set[str]:
    if not os.path.isdir(SHM):
        return set()
    return {n for n in os.listdir(SHM) if n.startswith(("xpm-", "sem.xpm-"))}


@pytest.fixture(autouse=True, scope="session")
def dev_shm_unchanged():
    before = run_names()
    yield
    leaked = run_names() - before
    assert not leaked, f"the test suite leaked IPC names: {sorted(leaked)}"
