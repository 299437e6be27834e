"""Supervision that notices (issue 12, items 2, 5, 6): a hung adapter found by the liveness
ping and replaced, reconnects in parallel, adapter restarts that back off and give up, a
failed restart tried again, a grant held too long. Real processes, deadlines polled,
everything started is reaped."""

from __future__ import annotations

import os
import re
import resource
import signal
import threading
import time

import pytest

from tests.integration.conftest import TIMEOUT, small_config, wait_for
from tests.integration.test_machine import receive, send
from tests.integration.xpmove_command import reap_group, shm_names, tiny_config, xpmove


# -- item 6: reconnects in parallel ------------------------------------------------------------
def test_adapter_restart_is_not_held_up_by_a_stopped_partition(make_machine):
    m = make_machine(small_config(n=3))
    stopped = m.pid(3)
    os.kill(stopped, signal.SIGSTOP)
    try:
        old = m.pid()
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: m.poll() or m.restarts.get("adapter"), timeout=TIMEOUT,
                 what="adapter restart")
        assert m.pid() != old
        assert send(m, 1, 2, b"healthy pair", "fig11", timeout=TIMEOUT)["ok"]
        assert time.monotonic() - killed_at < 5.0
        packet = receive(m, 2)
        assert bytes.fromhex(packet["hex"]) == b"healthy pair"
    finally:
        os.kill(stopped, signal.SIGCONT)
    # the late partition takes its pipes when it runs again
    assert send(m, 3, 1, b"late one", "fig11", timeout=TIMEOUT)["ok"]
    assert bytes.fromhex(receive(m, 1)["hex"]) == b"late one"


# -- item 5: a hung adapter ----------------------------------------------------------------------
def test_a_stopped_adapter_is_detected_and_replaced(make_machine):
    m = make_machine(small_config(n=3))
    old = m.pid()
    os.kill(old, signal.SIGSTOP)
    started = time.monotonic()
    assert m.check_adapter(timeout=1.0) is False
    assert time.monotonic() - started < 5.0
    assert m.pid() != old and m.restarts.get("adapter") == 1
    assert any("hung" in e for e in m.events), m.events
    assert send(m, 1, 2, b"after the hang", "fig12", timeout=TIMEOUT)["ok"]
    assert bytes.fromhex(receive(m, 2)["hex"]) == b"after the hang"
    assert m.check_adapter(timeout=1.0) is True


def test_poll_pings_at_most_once_a_second(make_machine):
    m = make_machine(small_config(n=2))
    old = m.pid()
    m.poll(liveness=True)  # a ping now ...
    os.kill(old, signal.SIGSTOP)
    started = time.monotonic()
    m.poll(liveness=True)  # ... so none now: no wait on the stopped adapter
    assert time.monotonic() - started < 0.5
    assert m.pid() == old
    wait_for(lambda: m.poll(liveness=True) is not None and m.pid() != old, timeout=TIMEOUT,
             what="the hung adapter replaced by poll(liveness=True)")
    assert send(m, 1, 2, b"x", "fig11", timeout=TIMEOUT)["ok"]


# -- item 2: a restart loop backs off and gives up ---------------------------------------------
def _kill_adapter_when_up(m, old: int) -> float:
    """Wait until a new adapter (not `old`) is up, kill it; when it came up."""
    wait_for(lambda: m.poll() is not None and m.pid() != old
             and m.adapter.state.value == "running", what="the adapter back")
    up = time.monotonic()
    m.kill(None)
    return up


def test_adapter_restarts_back_off_and_give_up(make_machine):
    """An adapter that dies each time it comes back is restarted later each time (at once,
    then 0.1 s, 0.2 s, 0.4 s), and after adapter_restart_limit restarts in a row the machine
    gives up with one line naming how many restarts in how long (was: restarted for ever,
    as fast as it died)."""
    from hypervisor.machine import MachineError

    m = make_machine(small_config(n=2, adapter_restart_limit=4))
    pid = m.pid()
    killed = [time.monotonic()]
    m.kill(None)
    ups = []
    for _ in range(4):
        ups.append(_kill_adapter_when_up(m, pid))
        killed.append(time.monotonic())
        pid = m.pid()
    with pytest.raises(MachineError) as failure:
        wait_for(lambda: m.poll() and False, what="the machine to give up")
    message = str(failure.value)
    assert re.fullmatch(r"the adapter keeps dying \(killed by SIGKILL\): restarted 4 times in "
                        r"\d+\.\d s, and each time "
                        r"it died again within 10 s of its start; not restarted again "
                        r"\(machine\.adapter_restart_limit = 4; .*\)", message), message
    assert m.restarts["adapter"] == 4
    delays = [float(d) for d in re.findall(r"restarted in ([\d.]+) s", " ".join(m.events))]
    assert delays == [0.1, 0.2, 0.4], m.events
    spacing = [up - down for down, up in zip(killed, ups, strict=False)]
    for gap, delay in zip(spacing[1:], delays, strict=True):
        assert gap >= delay, (spacing, delays)  # each restart waited its turn
    with pytest.raises(MachineError, match="keeps dying"):
        m.poll()  # and says so on every later poll
    assert m.pid() == pid  # the last one was not replaced


def test_launch_exits_with_one_line_when_the_adapter_keeps_dying(tmp_path):
    import psutil

    config = tmp_path / "dying.toml"
    config.write_text("[machine]\nadapter_restart_limit = 2\n\n"
                      + tiny_config(tmp_path / "tiny.toml").read_text())
    proc = xpmove(["launch", "--duration", "60", "--config", str(config)], tmp_path,
                  start_new_session=True)
    try:
        assert proc.stdout is not None
        prefix = None
        for line in proc.stdout:
            if m := re.search(r"machine up: run (xpm-[0-9a-f]+)", line):
                prefix = m.group(1)
                break
        assert prefix, "no 'machine up' line"
        launcher, killed = psutil.Process(proc.pid), set()
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            for child in launcher.children():
                try:
                    if "adapter.server" in child.cmdline() and child.pid not in killed:
                        child.kill()
                        killed.add(child.pid)
                except psutil.Error:
                    pass  # gone meanwhile
            time.sleep(0.02)  # polling interval against the deadline
        out, err = proc.communicate(timeout=30)
    finally:
        reap_group(proc, tmp_path)
    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("xpmove:")]
    assert len(lines) == 1, err
    assert "the adapter keeps dying (killed by SIGKILL): restarted 2 times in" in lines[0], err
    assert len(killed) == 3
    assert not shm_names(prefix)


# -- a grant held by a live but stuck driver ---------------------------------------------------
def sent_while_supervised(m, src: int, dst: int, data: bytes) -> dict:
    """`send` (fig11, retried up to TIMEOUT) from another thread while this one polls the
    machine with liveness pings, as `launch` does, so supervision can end a stuck holder that
    keeps the destination's lock; the send's reply once it got through."""
    outcome: dict = {}
    sender = threading.Thread(target=lambda: outcome.update(
        send(m, src, dst, data, "fig11", timeout=TIMEOUT)))
    sender.start()
    try:
        wait_for(lambda: m.poll(liveness=True) is not None and not sender.is_alive(),
                 timeout=TIMEOUT + 5, what="the other sender to get through")
    finally:
        sender.join(TIMEOUT * 2)
    return outcome


@pytest.mark.parametrize("packets", [None, 8])
def test_a_grant_held_too_long_kills_its_holder(make_machine, packets):
    """Partition 1 takes a Fig 12 grant on 2 and never finishes it (alive, not dying). With
    grant_timeout_s = 1, supervision's liveness ping sees the grant's age and kills the holder;
    the adapter takes the lock back and undoes the half-done record, so another sender to 2
    gets through after about the timeout (was: LockTimeout for as long as the holder lived);
    the holder is restarted per policy and its pair's sequence continues exactly once."""
    m = make_machine(small_config(n=3, grant_timeout_s=1.0, restart="always"))
    hold = {"cmd": "hold_grant", "dst": 2, "count": 100 if packets else 5000, "packets": packets}
    assert m.call(1, hold)["ok"]
    held_at = time.monotonic()
    grants = m.adapter_stats()["grants"]
    assert grants["2"]["holder"] == 1 and 0 <= grants["2"]["age_s"] < 10, grants
    outcome = sent_while_supervised(m, 3, 2, b"from three")
    took = time.monotonic() - held_at
    assert outcome.get("seq") == 1, outcome
    assert 1.0 <= took < 1.0 + 6.0, took  # the timeout, a ping a second, the send's retries
    assert any("p1 held the lock of network ID 2 for" in e and "killed" in e
               for e in m.events), m.events
    wait_for(lambda: m.poll(liveness=True) is not None and m.restarts.get(1), what="p1 back")
    packet = receive(m, 2)
    assert (packet["source_id"], packet["seq"], bytes.fromhex(packet["hex"])) == \
        (3, 1, b"from three")
    assert receive(m, 2, timeout=0) is None  # the held record never became visible
    assert send(m, 1, 2, b"holder again", "fig12", timeout=TIMEOUT)["seq"] == 1
    assert bytes.fromhex(receive(m, 2)["hex"]) == b"holder again"
    stats = m.adapter_stats()
    assert stats["counters"]["grants_abandoned"] == 1 and stats["grants"] == {}
    assert set(stats["locks"].values()) == {"free"}


def test_a_restart_that_could_not_start_is_tried_again(make_machine):
    """A partition whose restart fails (here: no descriptor left for its pipes) is not
    forgotten: the next poll tries again, within restart_limit, and it comes back."""
    m = make_machine(small_config(n=2, restart="always"))
    lowest_free = os.dup(0)
    os.close(lowest_free)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    os.kill(m.pid(2), signal.SIGKILL)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no pipe can be opened
    try:
        wait_for(lambda: m.poll() is not None and any("restart of p2 failed" in e
                                                      for e in m.events),
                 what="a failed restart of p2")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait_for(lambda: m.poll() is not None and m.partitions[2].state.value == "running",
             what="p2 restarted on a later poll")
    assert m.restarts[2] == 2  # the failed attempt counts against restart_limit
    assert send(m, 1, 2, b"back again", "fig11", timeout=TIMEOUT)["ok"]
    assert bytes.fromhex(receive(m, 2)["hex"]) == b"back again"
