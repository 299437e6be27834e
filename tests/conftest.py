"""Suite-wide guard: the tests leave /dev/shm exactly as they found it (Invariant 7)."""

from __future__ import annotations

import os

import pytest

SHM = "/dev/shm"


def project_names() -> set[str]:
    if not os.path.isdir(SHM):
        return set()
    return {n for n in os.listdir(SHM) if "xpm-" in n}


@pytest.fixture(autouse=True, scope="session")
def dev_shm_unchanged():
    before = project_names()
    yield
    leaked = project_names() - before
    assert not leaked, f"the test suite leaked IPC names: {sorted(leaked)}"
