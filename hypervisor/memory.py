"""The machine's physical memory: ONE POSIX shared-memory segment.

One owner (Invariant 7): only the hypervisor creates and unlinks it; the adapter and the
partitions attach by name. close() and unlink() are idempotent so every exit path can call them.
"""

from __future__ import annotations

import mmap
import os

import posix_ipc


class PhysicalMemory:
    def __init__(self, name: str, shm: posix_ipc.SharedMemory, owner: bool):
        self.name = name
        self.size = shm.size
        self._owner = owner
        self._map: mmap.mmap | None = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        self.view: memoryview = memoryview(self._map)

    @classmethod
    def create(cls, name: str, size: int) -> PhysicalMemory:
        """Create a new zero-filled segment (fails if the name exists), every page of it
        allocated now: a filesystem too small for it is an OSError (ENOSPC) here, at start,
        never a SIGBUS in whichever process first touches a page that has no room."""
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            os.posix_fallocate(shm.fd, 0, size)
        except BaseException:
            shm.close_fd()  # the name is the caller's to unlink (it recorded it)
            raise
        return cls(name, shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> PhysicalMemory:
        return cls(name, posix_ipc.SharedMemory(name), owner=False)

    def close(self) -> None:
        if self._map is None:
            return
        try:
            self.view.release()
            self._map.close()
        except BufferError:
            # A memoryview derived from the segment is still alive somewhere; the mapping goes
            # away with the process. Never fatal on a shutdown path.
            pass
        self._map = None

    def unlink(self) -> None:
        if not self._owner:
            raise PermissionError(f"only the hypervisor unlinks segment {self.name}")
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass
