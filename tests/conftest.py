"""Suite-wide guard: the tests leave /dev/shm as they found it (Invariant 7).

Checked for the runs this test process created: every Machine registers its run prefix in a
run registry before it creates a name, so the suite notes each prefix registered here (a
wrapper installed for the session, test-side only). Tests that start `xpmove` in a subprocess
check their own run's names themselves. Other runs on the machine (a developer's launch, a
parallel session) are none of this suite's business. iceoryx2 (a bench peer) keeps a
management file by design (`iox2_*.global_mgmt` in its default home): the suite's nodes live
in homes of their own (`Iceoryx2Home`, removed by whoever made them), so a new file in the
default home, or a home left in /dev/shm or /tmp, is a leak, reported at the end (not
removed: it may be another iceoryx2 program's).
"""

from __future__ import annotations

import os
import signal

import pytest

from hypervisor.names import RunRegistry
from scripts.workload.iceoryx2_peer import HOME_DIR, HOME_NAME

SHM = "/dev/shm"


def names_of(prefixes: list[str]) -> set[str]:
    if not os.path.isdir(SHM) or not prefixes:
        return set()
    return {n for n in os.listdir(SHM) if any(p in n for p in prefixes)}


def peer_names() -> set[str]:
    """iceoryx2's management files in its default home, and what is there of our homes."""
    names = set(os.listdir(SHM)) if os.path.isdir(SHM) else set()
    homes = {os.path.join(HOME_DIR, n) for n in os.listdir(HOME_DIR) if n.startswith(HOME_NAME)}
    return homes | {n for n in names if n.startswith(HOME_NAME)
                    or (n.startswith("iox2_") and n.endswith(".global_mgmt"))}


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_delivered():
    """Ctrl-C reaches this process and the ones it starts, however the suite was started. A
    shell without job control starts a background command (`pytest ... &`) with SIGINT
    ignored, which Python and every child then keep: the tests that interrupt a run never
    reached the code they name (seen: seven ctrl-c tests failing, a soak run to its end)."""
    inherited = signal.getsignal(signal.SIGINT)
    if inherited == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


@pytest.fixture(autouse=True, scope="session")
def dev_shm_unchanged():
    peers_before = peer_names()
    prefixes: list[str] = []
    register = RunRegistry.register

    def noting(self, prefix, *args, **kwargs):
        prefixes.append(prefix)
        return register(self, prefix, *args, **kwargs)

    RunRegistry.register = noting  # type: ignore[method-assign]
    try:
        yield
    finally:
        RunRegistry.register = register  # type: ignore[method-assign]
    leaked = names_of(prefixes) | (peer_names() - peers_before)
    assert not leaked, f"the test suite leaked IPC names: {sorted(leaked)}"
