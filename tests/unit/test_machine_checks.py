"""Checks the Machine makes before it creates anything (issue 12, item 9): /dev/shm's room."""

from __future__ import annotations

import os

import pytest

import hypervisor.machine as machine_module
from hypervisor.config import MachineConfig, PartitionConfig
from hypervisor.machine import Machine, MachineError, check_shm_room, shm_free_bytes
from hypervisor.names import RunRegistry

MiB = 1024 * 1024


def config(n: int = 2, memory: int = MiB) -> MachineConfig:
    return MachineConfig(partitions=tuple(
        PartitionConfig(f"p{i}", i, memory, 256 * 1024, None, None) for i in range(1, n + 1)))


def test_room_enough_passes():
    check_shm_room(10 * MiB, 10 * MiB)
    check_shm_room(1, 64 * MiB, config_total=1)


def test_too_little_room_names_both_numbers_the_total_and_the_fix():
    with pytest.raises(MachineError) as info:
        check_shm_room(100 * MiB + 4096, 64 * MiB, config_total=100 * MiB)
    text = str(info.value)
    assert f"{64 * MiB:,} bytes free" in text
    assert f"{100 * MiB + 4096:,} bytes" in text
    assert f"{100 * MiB:,}" in text  # the config's total
    assert "--shm-size=" in text and "less memory" in text
    assert "\n" not in text


def test_free_bytes_is_statvfs_of_dev_shm():
    st = os.statvfs("/dev/shm")
    assert abs(shm_free_bytes() - st.f_bavail * st.f_frsize) < 64 * MiB  # others may allocate


def _names_of(prefix: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if prefix in n]


def test_machine_refuses_before_creating_anything(tmp_path, monkeypatch):
    """Through the Machine, with the statvfs shell saying /dev/shm is Docker's 64 MiB."""
    monkeypatch.setattr(machine_module, "shm_free_bytes", lambda path="/dev/shm": 64 * MiB)
    registry = RunRegistry(str(tmp_path / "runs"))
    m = Machine(config(n=4, memory=32 * MiB), registry=registry)
    with pytest.raises(MachineError, match="--shm-size="):
        m.start()
    assert not m.children() and m.memory is None
    assert not _names_of(m.prefix)
    assert not [f for f in os.listdir(registry.directory) if f.endswith(".json")] \
        if os.path.isdir(registry.directory) else True
    m.stop()  # idempotent, harmless


def test_machine_refuses_a_segment_larger_than_the_real_dev_shm(tmp_path):
    """The real statvfs, when a loadable config can outgrow /dev/shm (the loader caps at 16 GiB)."""
    free = shm_free_bytes()
    need = free + 64 * MiB
    if need > 16 * 1024 * MiB:
        pytest.skip(f"/dev/shm has {free:,} bytes free: no config (<= 16 GiB) is larger")
    memory = -(-need // 2 // 4096) * 4096
    m = Machine(config(n=2, memory=memory), registry=RunRegistry(str(tmp_path / "runs")))
    with pytest.raises(MachineError, match="bytes free"):
        m.start()
    assert not _names_of(m.prefix)


def test_cli_prints_it_as_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(machine_module, "shm_free_bytes", lambda path="/dev/shm": 64 * MiB)
    monkeypatch.setenv("XPMOVE_RUN_DIR", str(tmp_path / "runs"))
    path = tmp_path / "big.toml"
    path.write_text("".join(f'[[partition]]\nname = "p{i}"\nnetwork_id = {i}\n'
                            f'memory = "64MiB"\nreceive_area = "256KiB"\n\n' for i in (1, 2)))
    from scripts.cli import main

    assert main(["launch", "--config", str(path), "--packets", "1"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xpmove: run xpm-") and "--shm-size=" in lines[0]
    assert "Traceback" not in err


def test_no_room_while_preallocating_is_one_line_naming_the_numbers_and_the_fix():
    import errno

    from hypervisor.machine import preallocation_error

    error = preallocation_error(OSError(errno.ENOSPC, "No space left on device"),
                                needed=100 * MiB, free=3 * MiB)
    assert isinstance(error, MachineError)
    text = str(error)
    assert f"{100 * MiB:,} bytes" in text and f"{3 * MiB:,} bytes free" in text
    assert "--shm-size=" in text and "less memory" in text and "\n" not in text
    other = OSError(errno.EACCES, "Permission denied")
    assert preallocation_error(other, needed=MiB, free=MiB) is other  # not ours to explain
