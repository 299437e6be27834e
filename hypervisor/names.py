"""Per-run IPC names and the run registry that lets a later launch sweep a killed run.

POSIX shared memory and named semaphores outlive the processes that created them. Every
name of a run therefore carries a random per-run prefix and is written to a registry
file *before* the object is created; `RunRegistry.sweep` unlinks the names of runs whose
owner is dead. Nothing here survives a reboot, and neither do the IPC objects, so the
registry needs crash consistency (atomic replace) but not durability (no fsync).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterable

import posix_ipc
import psutil

log = logging.getLogger(__name__)

NAME_MAX = 30  # macOS PSHMNAMLEN is 31 including the NUL; Linux allows far more
PREFIX_RE = re.compile(r"xpm-[0-9a-f]{8}", re.ASCII)
_WHAT_RE = re.compile(r"[a-z0-9][a-z0-9-]*", re.ASCII)
# The one kind of file a run may record that is not its own: the shared memory of the MPI
# runtime its hypervisor maps on a cluster host (MPICH's), which MPI_Finalize unlinks and a
# killed rank leaves behind (`RunRegistry.add_runtime`).
RUNTIME_FILE_RE = re.compile(r"/dev/shm/mpich_shm_[0-9A-Za-z]+_[0-9]+", re.ASCII)
RUN_DIR_ENV = "XPMOVE_RUN_DIR"


def default_run_dir() -> str:
    """/tmp/xpmove-runs-<uid>: per user, so one user's directory never blocks another's."""
    return f"/tmp/xpmove-runs-{os.getuid()}"


DEFAULT_RUN_DIR = default_run_dir()
# Tolerance when comparing create times: psutil derives them from the boot time, which
# another process may compute slightly differently after a clock step. Erring towards
# "still alive" only delays a sweep; erring the other way would unlink a live run.
CREATE_TIME_SLACK_S = 1.0
ORPHAN_WAIT_S = 0.5  # how long `sweep_orphan` waits for an exiting owner to be dead (its
# channels close in its last steps, after its memory is gone: microseconds before it is)
ORPHAN_POLL_S = 0.01


def new_run_prefix() -> str:
    """A fresh prefix such as "xpm-3f9a1c2b": random, so concurrent runs never collide."""
    return f"xpm-{secrets.token_hex(4)}"


def ipc_name(prefix: str, what: str) -> str:
    """The IPC name "/<prefix>-<what>", e.g. "/xpm-3f9a1c2b-lock-3"; ValueError if invalid.

    Checked here so a bad name fails at the call site, not as an obscure OS error later.
    """
    if PREFIX_RE.fullmatch(prefix) is None:
        raise ValueError(f"run prefix {prefix!r} does not match {PREFIX_RE.pattern}")
    if _WHAT_RE.fullmatch(what) is None:
        raise ValueError(f"IPC name part {what!r} does not match {_WHAT_RE.pattern}")
    name = f"/{prefix}-{what}"
    if len(name) > NAME_MAX:
        raise ValueError(f"IPC name {name!r} is {len(name)} chars, over the limit {NAME_MAX}")
    return name


def _belongs(prefix: str, name: object) -> bool:
    return isinstance(name, str) and name.startswith(f"/{prefix}-") and len(name) <= NAME_MAX


def _unlink_all(shm: Iterable[str], sem: Iterable[str]) -> tuple[list[str], list[str]]:
    """Unlink every name; return (unlinked, failed). Absent names are neither."""
    unlinked: list[str] = []
    failed: list[str] = []
    for names, unlink in (
        (shm, posix_ipc.unlink_shared_memory),
        (sem, posix_ipc.unlink_semaphore),
    ):
        for name in names:
            try:
                unlink(name)
            except posix_ipc.ExistentialError:
                continue
            except (posix_ipc.Error, OSError, ValueError) as e:
                # Keep going: one stuck name must not leak all the others.
                log.warning("cannot unlink %s: %s", name, e)
                failed.append(name)
                continue
            unlinked.append(name)
    return unlinked, failed


def unlink_quietly(shm: Iterable[str] = (), sem: Iterable[str] = ()) -> list[str]:
    """Unlink shared-memory and semaphore names, ignoring ones already gone.

    Idempotent, so every exit path (clean shutdown, signal handler, sweep) may call it.
    Returns the names that existed and were unlinked by this call.
    """
    return _unlink_all(shm, sem)[0]


def _owner_alive(pid: int, create_time: float) -> bool:
    """True unless the owner is certainly dead: gone, a zombie, or its pid reused."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - create_time) <= CREATE_TIME_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # someone's process exists under that pid: leave the record alone


class RunDirError(OSError):
    """The run registry's directory cannot be used; names the path and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"run directory {path}: {reason}")
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"run directory {self.path}: {self.reason}"


class RunRegistry:
    """One JSON file per live run in a registry directory.

    A record is {"prefix", "owner_pid", "owner_create_time", "shm": [...], "sem": [...]}.
    Default directory: env XPMOVE_RUN_DIR or /tmp/xpmove-runs-<uid> (created 0o700); a
    directory that cannot be used raises RunDirError (naming it and why). Each
    record has a single writer (its run's hypervisor); writes are atomic (tmp file +
    os.replace), so a reader sees the old record or the new one, never a torn one.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        if directory is None:
            directory = os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR
        self.directory = os.fspath(directory)
        self._check_directory()

    def _check_directory(self) -> None:
        """Create the directory (0o700) if missing; RunDirError unless it is a directory of
        ours that only we can write into, and we can."""
        path = self.directory
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            st = os.lstat(path)
        except FileExistsError:
            raise RunDirError(path, "exists and is not a directory") from None
        except OSError as e:
            where = "" if e.filename in (None, path) else f" ({e.filename})"
            raise RunDirError(path, f"{e.strerror or e}{where}") from None
        # /tmp is shared: refuse a directory someone else planted or can write into,
        # since sweep unlinks whatever names its records list.
        if stat.S_ISLNK(st.st_mode):
            raise RunDirError(path, "is a symbolic link; give the directory itself")
        if not stat.S_ISDIR(st.st_mode):
            raise RunDirError(path, "is not a directory")
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise RunDirError(
                path, f"must be owned by uid {os.getuid()} and not writable by others (owner "
                f"uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); set {RUN_DIR_ENV} to "
                f"a directory of yours")
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise RunDirError(path, f"no permission to read and write in it (mode "
                              f"{stat.S_IMODE(st.st_mode):o})")

    def _path(self, prefix: str) -> str:
        if PREFIX_RE.fullmatch(prefix) is None:
            raise ValueError(f"run prefix {prefix!r} does not match {PREFIX_RE.pattern}")
        return os.path.join(self.directory, f"{prefix}.json")

    def _write_tmp(self, prefix: str, record: dict) -> str:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{prefix}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def _read(self, path: str) -> dict:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError("record is not a JSON object")
        return record

    def register(self, prefix: str, owner_pid: int) -> None:
        """Create the run's record; FileExistsError if the prefix is already registered."""
        path = self._path(prefix)
        record = {
            "prefix": prefix,
            "owner_pid": owner_pid,
            "owner_create_time": psutil.Process(owner_pid).create_time(),
            "shm": [],
            "sem": [],
        }
        tmp = self._write_tmp(prefix, record)
        try:
            os.link(tmp, path)  # atomic and exclusive: never overwrite another run's record
        finally:
            os.unlink(tmp)

    def add(self, prefix: str, *, shm: Iterable[str] = (), sem: Iterable[str] = ()) -> None:
        """Record names BEFORE creating them, so a crash in between cannot leak them."""
        shm, sem = list(shm), list(sem)
        for name in (*shm, *sem):
            if not _belongs(prefix, name):
                raise ValueError(f"IPC name {name!r} does not belong to run {prefix!r}")
        self._extend(prefix, {"shm": shm, "sem": sem})

    def add_runtime(self, prefix: str, paths: Iterable[str]) -> None:
        """Record the MPI runtime's shared-memory files (RUNTIME_FILE_RE; ValueError for any
        other path) that the run's owner maps, so that a sweep of the run once its owner is
        dead unlinks them too: the runtime unlinks them at MPI_Finalize, which a killed rank
        never reaches."""
        paths = list(paths)
        for path in paths:
            if RUNTIME_FILE_RE.fullmatch(path) is None:
                raise ValueError(f"{path!r} is not a file of the MPI runtime's "
                                 f"({RUNTIME_FILE_RE.pattern})")
        self._extend(prefix, {"runtime": paths})

    def _extend(self, prefix: str, lists: dict[str, list[str]]) -> None:
        """Add each list's entries to the record's list of that key (once each), atomically."""
        path = self._path(prefix)
        record = self._read(path)
        for key, names in lists.items():
            listed = record.setdefault(key, [])
            listed.extend(n for n in dict.fromkeys(names) if n not in listed)
        os.replace(self._write_tmp(prefix, record), path)

    def status_socket_path(self, prefix: str) -> str:
        """Where the run's status socket lives: <directory>/<prefix>.sock (hypervisor/status)."""
        return os.path.join(self.directory, f"{prefix}.sock")

    def record_status_socket(self, prefix: str, path: str, *, started: float,
                             partitions: Iterable[str]) -> None:
        """Note the run's status socket (before it is bound, like every name), when the run
        started and its partitions' names, for `xpmove status`. Only the standard path is
        accepted, so a sweep never unlinks anything else."""
        if path != self.status_socket_path(prefix):
            raise ValueError(f"status socket {path!r} is not {self.status_socket_path(prefix)!r}")
        record = self._read(self._path(prefix))
        record.update(status_socket=path, started=started, partitions=list(partitions))
        os.replace(self._write_tmp(prefix, record), self._path(prefix))

    def remove(self, prefix: str) -> None:
        """Drop the run's record once everything it lists is unlinked; idempotent."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(prefix))

    def _record_paths(self) -> list[tuple[str, str]]:
        try:
            entries = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            prefix, ext = os.path.splitext(entry)
            if ext == ".json" and PREFIX_RE.fullmatch(prefix):
                out.append((prefix, os.path.join(self.directory, entry)))
        return out

    def _load(self, prefix: str, path: str) -> dict | None:
        """The record at path, or None (with a warning) if it is unreadable or corrupt."""
        try:
            record = self._read(path)
            if record.get("prefix") != prefix:
                raise ValueError(f"prefix {record.get('prefix')!r} does not match file name")
            for key in ("shm", "sem"):
                if not isinstance(record.get(key), list):
                    raise ValueError(f"{key!r} is not a list")
            pid, created = record.get("owner_pid"), record.get("owner_create_time")
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                raise ValueError(f"owner_pid {pid!r} is not a pid")
            if (not isinstance(created, int | float) or isinstance(created, bool)
                    or not math.isfinite(created)):
                raise ValueError(f"owner_create_time {created!r} is not a finite number")
        except FileNotFoundError:
            return None  # removed since listdir: the run shut down cleanly
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable run record %s: %s", path, e)
            return None
        return record

    def sweep_orphan(self, prefix: str, wait_s: float = ORPHAN_WAIT_S) -> list[str]:
        """Sweep run `prefix` once its owner is dead, waiting up to `wait_s` for that: what a
        child of the run does when the hypervisor's end of its control channel closes (the
        channel closes as the owner exits, a moment before it is dead to psutil). A live
        owner's run is left alone: the hypervisor stops it and unlinks its names itself."""
        deadline = time.monotonic() + wait_s
        while True:
            record = self._load(prefix, self._path(prefix))
            if record is None:
                return []  # unlinked and removed already (a clean stop, or another sweep)
            if not _owner_alive(record["owner_pid"], record["owner_create_time"]):
                return self._sweep_dead(prefix, record)
            if time.monotonic() >= deadline:
                return []
            time.sleep(ORPHAN_POLL_S)

    def records(self) -> list[dict]:
        """Every readable record, sorted by prefix; corrupt files are skipped with a warning."""
        return [r for p, path in self._record_paths() if (r := self._load(p, path)) is not None]

    def sweep(self) -> list[str]:
        """Unlink the names of every run whose owner is dead and drop its record.

        Live owners' records are left alone. Only names under the record's own prefix are
        unlinked, so a damaged record cannot take out another program's objects. A record
        whose names could not all be unlinked is kept for the next sweep.
        """
        unlinked: list[str] = []
        for prefix, path in self._record_paths():
            record = self._load(prefix, path)
            if record is None or _owner_alive(record["owner_pid"], record["owner_create_time"]):
                continue
            unlinked.extend(self._sweep_dead(prefix, record))
        return unlinked

    def _sweep_dead(self, prefix: str, record: dict) -> list[str]:
        """Unlink what the record of run `prefix`, whose owner is dead, lists, and drop the
        record (kept if a name of the run's own could not be unlinked); what was unlinked."""
        names = {}
        for key in ("shm", "sem"):
            names[key] = [n for n in record[key] if _belongs(prefix, n)]
            for bad in (n for n in record[key] if not _belongs(prefix, n)):
                log.warning("run record of %s: ignoring foreign name %r", prefix, bad)
        unlinked, failed = _unlink_all(names["shm"], names["sem"])
        if failed:
            log.warning("run record of %s kept: could not unlink %s", prefix, failed)
            return unlinked
        if record.get("status_socket") is not None:  # only ever at the standard path
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.status_socket_path(prefix))
        for file in record.get("runtime", ()):  # the MPI runtime's, that pattern only
            if not isinstance(file, str) or RUNTIME_FILE_RE.fullmatch(file) is None:
                log.warning("run record of %s: ignoring foreign file %r", prefix, file)
                continue
            try:
                os.unlink(file)
                unlinked.append(file)
            except FileNotFoundError:
                pass
            except OSError as e:  # the record goes anyway: these are not our names
                log.warning("cannot unlink %s: %s", file, e)
        self.remove(prefix)
        return unlinked
