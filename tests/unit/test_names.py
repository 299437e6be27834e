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
    RunDirError,
    RunRegistry,
    default_run_dir,
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
    monkeypatch.setattr("hypervisor.names.DEFAULT_RUN_DIR", str(tmp_path / "default"))
    assert RunRegistry().directory == str(tmp_path / "default")


def test_default_run_dir_is_per_user() -> None:
    # a shared /tmp/xpmove-runs belonged to whoever ran first: the next user could not run
    assert default_run_dir() == DEFAULT_RUN_DIR == f"/tmp/xpmove-runs-{os.getuid()}"


def test_registry_refuses_directory_others_can_write(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(RunDirError, match="not writable by others") as info:
        RunRegistry(directory)
    assert info.value.path == str(directory)
    assert str(info.value).startswith(f"run directory {directory}: must be owned by uid")


def test_registry_refuses_directory_of_another_user(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # as if another user ran second
    with pytest.raises(RunDirError, match=f"owner uid {me}.*{RUN_DIR_ENV}"):
        RunRegistry(directory)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p.write_text(""), "exists and is not a directory"),
    (lambda p: (p.parent / "target").mkdir() or p.symlink_to(p.parent / "target"),
     "symbolic link"),
])
def test_registry_refuses_non_directory(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "runs"
    make(path)
    with pytest.raises(RunDirError, match=reason) as info:
        RunRegistry(path)
    assert isinstance(info.value, OSError) and info.value.path == str(path)


def test_registry_refuses_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match=r"runs: Not a directory"):
        RunRegistry(tmp_path / "file" / "runs")


def test_registry_reports_os_errors_as_run_dir_errors(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path, mode=0o777, exist_ok=False):
        raise PermissionError(13, "Permission denied", "/no")

    monkeypatch.setattr(os, "makedirs", denied)
    with pytest.raises(RunDirError) as info:
        RunRegistry("/no/such/runs")
    assert str(info.value) == "run directory /no/such/runs: Permission denied (/no)"


@pytest.mark.skipif(os.getuid() == 0, reason="root may write anywhere")
def test_registry_refuses_directory_it_cannot_write(tmp_path: Path) -> None:
    directory = tmp_path / "readonly"
    directory.mkdir(mode=0o500)
    with pytest.raises(RunDirError, match="no permission"):
        RunRegistry(directory)


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
