"""Every wait in the driver honours its timeout (issue 12 item 5, the driver's side): a send
to a stopped or dead adapter ends at its timeout with the typed error that says whether it
may have moved, and a late grant goes back at once. Real processes, deadlines polled."""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.integration.conftest import TIMEOUT, small_config, wait_for
from tests.integration.test_machine import receive, send


# -- item 5, the driver's side: every wait in the driver honours its timeout ---------------------
def _delivered(m, nid: int) -> list[tuple[int, bytes]]:
    got = []
    while (packet := receive(m, nid, timeout=0.5)) is not None:
        got.append((packet["seq"], bytes.fromhex(packet["hex"])))
    return got


@pytest.mark.parametrize("flow", ["fig11", "fig12"])
def test_a_send_to_a_stopped_adapter_ends_at_its_timeout(make_machine, flow):
    """SIGSTOP the adapter (nothing supervises here): a send with timeout=1.0 ends with its
    typed error in about 1 s (was: no answer at all). A move in flight is InDoubt; a grant
    moved nothing (AdapterGone). The next request, while the late reply is still awaited, is
    not sent (AdapterGone, never InDoubt). After SIGCONT the late reply is dropped by id (a
    late grant given back unused) and nothing is lost or doubled."""
    m = make_machine(small_config(n=3))
    assert send(m, 1, 2, b"before", flow)["seq"] == 1
    m.kill(None, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = send(m, 1, 2, b"during", flow, timeout=1.0)
        took = time.monotonic() - started
        assert reply["ok"] is False, reply
        expected = "InDoubt" if flow == "fig11" else "AdapterGone"
        assert reply["error"] == expected, reply
        assert re.search(r"no reply from the adapter within 1(\.\d+)? s", reply["message"]), \
            reply["message"]
        assert took < 2.5, took
        started = time.monotonic()
        # (elsewhere in memory: the move in doubt still reads its bytes when the adapter runs)
        reply = send(m, 1, 3, b"not sent", flow, offset=4096, timeout=0.5)
        assert reply["error"] == "AdapterGone", reply
        assert "not sent" in reply["message"], reply["message"]
        assert time.monotonic() - started < 2.5
    finally:
        m.kill(None, signal.SIGCONT)
    assert send(m, 1, 2, b"after", flow, offset=8192, timeout=TIMEOUT)["ok"]
    assert send(m, 1, 3, b"to three", flow, offset=8192, timeout=TIMEOUT)["seq"] == 1
    if flow == "fig11":  # the move in doubt was in the pipe: the adapter did it when it ran
        assert _delivered(m, 2) == [(1, b"before"), (2, b"during"), (3, b"after")]
    else:  # the late grant was given back unused: its reservation undone, the seq reused
        assert _delivered(m, 2) == [(1, b"before"), (2, b"after")]
        assert m.adapter_stats()["counters"]["grants_abandoned"] == 1
    assert _delivered(m, 3) == [(1, b"to three")]
    assert set(m.adapter_stats()["locks"].values()) == {"free"}
    assert m.restarts.get("adapter") is None  # the same adapter all along


def test_a_late_grant_goes_back_at_once(make_machine):
    """A Fig 12 send gives up on a stopped adapter; once the adapter runs again it grants the
    abandoned request. The sender's driver gives that grant back as soon as the reply arrives,
    without sending anything else (was: at its next request, so a partition that stopped
    sending held the destination's lock until the grant timeout killed it)."""
    m = make_machine(small_config(n=3))
    m.kill(None, signal.SIGSTOP)
    try:
        reply = send(m, 1, 2, b"abandoned", "fig12", timeout=0.5)
        assert reply["error"] == "AdapterGone", reply
    finally:
        m.kill(None, signal.SIGCONT)
    wait_for(lambda: m.adapter_stats()["grants"] == {}, timeout=3.0,
             what="the late grant given back")
    assert m.adapter_stats()["counters"]["grants_abandoned"] == 1
    assert send(m, 3, 2, b"from three", "fig11", timeout=TIMEOUT)["seq"] == 1
    assert _delivered(m, 2) == [(1, b"from three")]
    assert set(m.adapter_stats()["locks"].values()) == {"free"}


def test_a_send_that_never_reached_an_adapter_is_not_in_doubt(make_machine):
    """The adapter is dead and nothing restarts it: the request cannot be written (EPIPE), so
    the send fails AdapterGone, retryable, by its timeout (was: InDoubt after 5 s)."""
    m = make_machine(small_config(n=2))
    adapter = m.adapter
    m.kill(None, signal.SIGKILL)
    wait_for(lambda: adapter.proc.poll() is not None, what="the adapter's exit")
    started = time.monotonic()
    reply = send(m, 1, 2, b"nowhere", "fig11", timeout=1.0)
    assert reply["error"] == "AdapterGone" and reply["retryable"], reply
    assert "nothing was sent" in reply["message"], reply["message"]
    assert time.monotonic() - started < 2.5
    wait_for(lambda: m.poll() or m.restarts.get("adapter"), what="adapter restart")
    assert send(m, 1, 2, b"somewhere", "fig11", timeout=TIMEOUT)["seq"] == 1
    assert _delivered(m, 2) == [(1, b"somewhere")]
