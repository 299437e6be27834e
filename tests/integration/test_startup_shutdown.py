"""Startup and shutdown (issue 12, items 8, 9, 10): a signal to the process group stops
launch cleanly, a startup failure is one line, each child has its own startup deadline, the
segment is allocated at start, and a stop is bounded even with a hung adapter. Real
processes, deadlines polled, everything started is reaped."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from hypervisor.boot import AdapterBoot, PartitionBoot
from hypervisor.layout import plan_segment
from hypervisor.names import ipc_name, new_run_prefix
from tests.integration.cluster_jobs import REPO
from tests.integration.conftest import names_exist, small_config
from tests.integration.xpmove_command import reap_group, shm_names, tiny_config, xpmove


# -- item 8: Ctrl-C in a terminal, SIGTERM from a batch system or mpiexec -------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_process_group_stops_launch_cleanly(tmp_path, sig):
    """What a terminal's Ctrl-C does, or mpiexec forwarding SIGTERM (killpg): the hypervisor
    stops the machine in order; no child dies of the signal itself (each has its own group)."""
    proc = xpmove(["launch", "--duration", "30", "--config",
                   str(tiny_config(tmp_path / "tiny.toml"))], tmp_path, start_new_session=True)
    try:
        assert proc.stdout is not None
        prefix = None
        deadline = time.monotonic() + 30
        for line in proc.stdout:  # blocking reads end with launch's output (killed at worst)
            if m := re.search(r"machine up: run (xpm-[0-9a-f]+)", line):
                prefix = m.group(1)
            if prefix and re.match(r"\[\s*[\d.]+-\s*[\d.]+ s\]", line):
                break  # traffic runs
            assert time.monotonic() < deadline, "no interval line within 30 s"
        assert prefix, "no 'machine up' line"
        interrupted_at = time.monotonic()
        os.killpg(proc.pid, sig)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("launch still running 10 s after Ctrl-C")
        took = time.monotonic() - interrupted_at
        assert proc.returncode == 130, (proc.returncode, err[-2000:])
        assert "Traceback" not in err, err[-3000:]
        assert "interrupted" in out
        assert " died " not in out and "dead: none" in out, out[-3000:]
        assert took < 10
        assert not shm_names(prefix)
    finally:
        reap_group(proc, tmp_path)


# -- item 10: startup failures -----------------------------------------------------------------
def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))


def test_startup_failure_is_one_line_and_leaves_no_names(tmp_path):
    """16 partitions need 64 pipe ends and 16 control sockets: 40 descriptors cannot hold them."""
    proc = xpmove(["launch", "--packets", "1", "--config",
                   str(tiny_config(tmp_path / "many.toml", n=16))], tmp_path,
                  start_new_session=True, preexec_fn=_few_descriptors)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        reap_group(proc, tmp_path)
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    match = re.match(r"xpmove: run (xpm-[0-9a-f]+) could not start: too many open files", lines[0])
    assert match, lines[0]
    assert "ulimit -n" in lines[0]
    assert not shm_names(match.group(1))


def test_startup_deadline_is_per_child(make_machine):
    """Each child's deadline runs from its own spawn: one spawned late is not short of time."""
    import hypervisor.children as children_module

    m = make_machine(small_config(n=2))
    spawned = [c.spawned_at for c in m.children()]
    assert spawned == sorted(spawned) and len(set(spawned)) == len(spawned)
    assert children_module.STARTUP_PER_CHILD_S > 0


def test_stop_with_a_stopped_adapter_is_bounded(make_machine):
    m = make_machine(small_config(n=3))
    adapter = m.pid()
    os.kill(adapter, signal.SIGSTOP)
    try:
        started = time.monotonic()
        m.stop()
        assert time.monotonic() - started < 10.0
        assert not names_exist(m)
        assert all(c.proc.poll() is not None for c in m.children())
    finally:
        try:
            os.kill(adapter, signal.SIGCONT)
        except ProcessLookupError:
            pass


# -- item 9: the segment is allocated at start ---------------------------------------------------
def test_the_segment_is_allocated_when_it_is_created(make_machine):
    """Every page of the segment is allocated when the machine starts (was: a sparse file, so a
    /dev/shm that filled up later meant SIGBUS in whichever process touched a page first)."""
    m = make_machine(small_config(n=2))
    st = os.stat(f"/dev/shm/{m.names.segment.lstrip('/')}")
    assert st.st_size == m.layout.total_size
    assert st.st_blocks * 512 >= st.st_size, (st.st_blocks * 512, st.st_size)


# -- a start undone under a child: its machine's names are gone before it attaches ---------------
def gone_machine_boot(module: str, control_fd: int, pipe_fds: tuple[int, int]) -> str:
    """The boot block of a machine whose names were never created (as after a start undone:
    unlinked before the child attached), for the adapter or partition 1."""
    config = small_config(2, program=None)
    prefix = new_run_prefix()
    ids = [p.network_id for p in config.partitions]
    names = {"segment": ipc_name(prefix, "mem"), "layout": plan_segment(config),
             **{kind: {i: ipc_name(prefix, f"{kind[:-1]}-{i}") for i in ids}
                for kind in ("locks", "bells", "recalls", "rooms")}}
    if module == "adapter.server":
        return AdapterBoot(**names, control_fd=control_fd, lock_timeout_s=1.0,
                           connections=()).to_json()
    return PartitionBoot(**names, control_fd=control_fd, network_id=1, request_fd=pipe_fds[1],
                         reply_fd=pipe_fds[0], cpus=None, program=None).to_json()


@pytest.mark.parametrize("module", ["adapter.server", "partitions.main"])
@pytest.mark.parametrize("undone", [True, False], ids=["start-undone", "hypervisor-waits"])
def test_a_child_that_finds_its_machine_gone_leaves_quietly_only_if_its_start_was_undone(
        module: str, undone: bool) -> None:
    """A Ctrl-C right after a child was spawned undoes the start: the hypervisor closes the
    child's channel and unlinks the names, possibly before the child attached (CI saw the
    adapter's ExistentialError traceback in `soak`'s output). Such a child leaves quietly,
    exit 0. A child whose hypervisor still waits for it (its channel open) and finds no names
    has met a fault: it fails with the error, which the hypervisor reports."""
    parent, child = socket.socketpair()
    read_end, write_end = os.pipe()
    boot = gone_machine_boot(module, child.fileno(), (read_end, write_end))
    proc = subprocess.Popen([sys.executable, "-m", module, "--boot", boot], cwd=REPO,
                            pass_fds=[child.fileno(), read_end, write_end],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child.close()
        if undone:
            parent.close()
        out, err = proc.communicate(timeout=30)
    finally:
        parent.close()
        os.close(read_end)
        os.close(write_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if undone:
        assert (proc.returncode, out, err) == (0, "", "")
    else:
        assert proc.returncode != 0 and "ExistentialError" in err, (proc.returncode, err)
