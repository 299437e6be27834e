"""Room for the segment in /dev/shm: checked before the segment is created, and a shortfall
met while its pages are allocated, each told as one line naming the bytes and the fix (pure
functions, but for `shm_free_bytes`, the statvfs shell)."""

from __future__ import annotations

import errno
import os

from hypervisor.children import MachineError

SHM_DIR = "/dev/shm"


def check_shm_room(needed: int, free: int, config_total: int | None = None) -> None:
    """Refuse a segment of `needed` bytes when the filesystem behind /dev/shm has only `free`
    (pure: the caller measures). Without this, the processes die of SIGBUS on first touch."""
    if needed <= free:
        return
    total = "" if config_total is None else f" (the partitions' memory is {config_total:,} bytes)"
    raise MachineError(f"{SHM_DIR} has {free:,} bytes free but the segment needs {needed:,} "
                       f"bytes{total}: {_more_room(needed)}")


def _more_room(needed: int) -> str:
    return (f"give {SHM_DIR} more room (e.g. docker run --shm-size={_mib_up(needed)}m ...) or "
            f"give the partitions less memory in the config")


def preallocation_error(exc: OSError, needed: int, free: int) -> Exception:
    """What to raise when allocating the segment's `needed` bytes failed with `exc` (pure: the
    caller measures `free` after the failure). No room (ENOSPC: /dev/shm filled up since the
    check, or is smaller than statvfs said) is one line naming both numbers and the fix;
    anything else is `exc` itself."""
    if exc.errno != errno.ENOSPC:
        return exc
    return MachineError(f"{SHM_DIR} has no room for the segment's {needed:,} bytes ({free:,} "
                        f"bytes free now): {_more_room(needed)}")


def _mib_up(n: int) -> int:
    return -(-n // (1024 * 1024)) + 16  # a little headroom beyond the segment


def shm_free_bytes(path: str = SHM_DIR) -> int:
    """Bytes an unprivileged process may still allocate on the filesystem behind `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
