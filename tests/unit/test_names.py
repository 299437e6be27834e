"""Unit tests for hypervisor.names: name format and the registry's JSON records (no IPC)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path

import psutil
import pytest

from hypervisor.names import (
    DEFAULT_RUN_DIR,
    NAME_MAX,
    RUN_DIR_ENV,
    RunRegistry,
    ipc_name,
    new_run_prefix,
)

PREFIX = "xpm-0123abcd"


def test_prefix_format_and_uniqueness() -> None:
    prefixes = {new_run_prefix() for _ in range(100)}
    assert len(prefixes) == 100
    for prefix in prefixes:
        assert re.fullmatch(r"xpm-[0-9a-f]{8}", prefix), prefix


def test_ipc_name_format() -> None:
    assert ipc_name("xpm-3f9a1c2b", "mem") == "/xpm-3f9a1c2b-mem"
    assert ipc_name("xpm-3f9a1c2b", "lock-3") == "/xpm-3f9a1c2b-lock-3"
    assert ipc_name("xpm-3f9a1c2b", "bell-3") == "/xpm-3f9a1c2b-bell-3"


@pytest.mark.parametrize("what", ["mem", "lock-65535", "bell-65535"])
def test_longest_planned_names_fit_macos_limit(what: str) -> None:
    assert len(ipc_name(new_run_prefix(), what)) <= NAME_MAX == 30


@pytest.mark.parametrize(
    ("prefix", "what"),
    [
        ("xpm-3F9A1C2B", "mem"),  # upper case
        ("xpm-3f9a1c2", "mem"),  # short
        ("/xpm-3f9a1c2b", "mem"),
        ("other-3f9a1c2b", "mem"),
        (PREFIX, ""),
        (PREFIX, "a/b"),
        (PREFIX, "-lead"),
        (PREFIX, "Mem"),
        (PREFIX, "x" * 17),  # 14 + 17 = 31 chars
    ],
)
def test_ipc_name_rejects(prefix: str, what: str) -> None:
    with pytest.raises(ValueError):
        ipc_name(prefix, what)


def test_registry_directory_created_private(tmp_path: Path) -> None:
    directory = tmp_path / "runs" / "nested"
    registry = RunRegistry(str(directory))
    assert registry.directory == str(directory)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert registry.records() == []


def test_registry_directory_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "envdir"))
    assert RunRegistry().directory == str(tmp_path / "envdir")
    monkeypatch.delenv(RUN_DIR_ENV)
    assert DEFAULT_RUN_DIR == "/tmp/xpmove-runs"


def test_registry_refuses_directory_others_can_write(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(PermissionError, match="not writable by others"):
        RunRegistry(directory)


def test_registry_refuses_non_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        RunRegistry(tmp_path / "file")


def test_register_add_records_round_trip(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    me = os.getpid()
    registry.register(PREFIX, me)
    mem, lock, bell = (ipc_name(PREFIX, w) for w in ("mem", "lock-1", "bell-1"))
    registry.add(PREFIX, shm=[mem])
    registry.add(PREFIX, sem=[lock, bell, lock])
    registry.add(PREFIX, shm=[mem], sem=[bell])  # re-adding is harmless

    expected = {
        "prefix": PREFIX,
        "owner_pid": me,
        "owner_create_time": psutil.Process(me).create_time(),
        "shm": [mem],
        "sem": [lock, bell],
    }
    assert registry.records() == [expected]
    on_disk = json.loads((tmp_path / f"{PREFIX}.json").read_text())
    assert on_disk == expected
    # a second registry object over the same directory sees the same record
    assert RunRegistry(tmp_path).records() == [expected]
    # atomic writes leave no temporary files behind
    assert sorted(os.listdir(tmp_path)) == [f"{PREFIX}.json"]


def test_register_twice_is_refused(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    registry.register(PREFIX, os.getpid())
    registry.add(PREFIX, shm=[ipc_name(PREFIX, "mem")])
    with pytest.raises(FileExistsError):
        registry.register(PREFIX, os.getpid())
    assert registry.records()[0]["shm"] == [ipc_name(PREFIX, "mem")]
    assert sorted(os.listdir(tmp_path)) == [f"{PREFIX}.json"]


def test_add_refuses_names_of_other_runs(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    registry.register(PREFIX, os.getpid())
    for name in ("/xpm-ffffffff-mem", "/unrelated", f"/{PREFIX}mem", PREFIX + "-mem"):
        with pytest.raises(ValueError, match="does not belong"):
            registry.add(PREFIX, shm=[name])
    assert registry.records()[0]["shm"] == []


def test_add_to_unregistered_run_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RunRegistry(tmp_path).add(PREFIX, shm=[ipc_name(PREFIX, "mem")])


def test_remove_is_idempotent(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    registry.register(PREFIX, os.getpid())
    other = new_run_prefix()
    registry.register(other, os.getpid())
    registry.remove(PREFIX)
    registry.remove(PREFIX)
    assert [r["prefix"] for r in registry.records()] == [other]


def test_invalid_prefix_rejected(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    with pytest.raises(ValueError):
        registry.register("../escape", os.getpid())
    with pytest.raises(ValueError):
        registry.remove("xpm-*")


def test_corrupt_records_are_skipped_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = RunRegistry(tmp_path)
    registry.register(PREFIX, os.getpid())
    bad = {
        "xpm-00000001": "{not json",
        "xpm-00000002": "[1, 2]",
        "xpm-00000003": json.dumps(
            {
                "prefix": "xpm-99999999",
                "owner_pid": 1,
                "owner_create_time": 0.0,
                "shm": [],
                "sem": [],
            }
        ),
        "xpm-00000004": json.dumps(
            {
                "prefix": "xpm-00000004",
                "owner_pid": True,
                "owner_create_time": 0.0,
                "shm": [],
                "sem": [],
            }
        ),
        "xpm-00000005": json.dumps(
            {
                "prefix": "xpm-00000005",
                "owner_pid": 1,
                "owner_create_time": 0.0,
                "shm": "x",
                "sem": [],
            }
        ),
    }
    for prefix, text in bad.items():
        (tmp_path / f"{prefix}.json").write_text(text)
    (tmp_path / "notes.txt").write_text("not a record")

    with caplog.at_level(logging.WARNING, logger="hypervisor.names"):
        assert [r["prefix"] for r in registry.records()] == [PREFIX]
        # sweep leaves corrupt files and the live owner's record alone
        assert registry.sweep() == []
    for prefix in bad:
        assert any(prefix in rec.getMessage() for rec in caplog.records), prefix
        assert (tmp_path / f"{prefix}.json").exists()
    assert (tmp_path / f"{PREFIX}.json").exists()


def test_sweep_leaves_live_owner_alone(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    registry.register(PREFIX, os.getpid())
    registry.add(PREFIX, shm=[ipc_name(PREFIX, "mem")], sem=[ipc_name(PREFIX, "lock-1")])
    assert registry.sweep() == []
    assert [r["prefix"] for r in registry.records()] == [PREFIX]
