"""Can MPI's one-sided atomics be a claim both hosts respect while the target sleeps outside
MPI? (docs/cluster.md, "What Fig 11 by reference would give", rule (b).)

Rank 1 exposes a POSIX shared-memory word array with `Win.Create`, as a host exposes its
segment, then sleeps outside MPI, as a host's hypervisor does between passes. Rank 0 locks
the window once (`Lock_all`, as the fabric does) and:

1. adds 1 to word 0 with `Fetch_and_op` + `Flush`, up to 200 times while rank 1 sleeps;
2. once rank 1 has stored 7 in word 1 with a plain store and gone back to sleep for 1 s,
   swaps it for 9 with `Compare_and_swap` + `Flush`.

Rank 1 reads both words with plain loads while asleep and after its next MPI call. Run with
the fabric's MPI settings (cluster/mpi.py):

    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/mpi_atomics.py
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import posix_ipc  # noqa: E402

from cluster.mpi import MPI  # noqa: E402  (the fabric's runtime settings)

ASLEEP_S = 3.0
ADDS = 200


def main() -> None:
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    name = f"/xpmove-mpi-atomics-{os.getppid()}"  # mpiexec's pid: the same on both ranks
    words = None
    if rank == 1:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=mmap.PAGESIZE)
        memory = mmap.mmap(shm.fd, mmap.PAGESIZE)
        shm.close_fd()
        words = np.frombuffer(memory, dtype=np.uint64)
        window = MPI.Win.Create(memory, disp_unit=8, comm=comm)
    else:
        window = MPI.Win.Create(None, disp_unit=8, comm=comm)
    try:
        comm.Barrier()
        if rank == 1:
            cpu = time.process_time()
            time.sleep(ASLEEP_S)
            print(f"target: word 0 = {int(words[0])} after {ASLEEP_S:g} s asleep outside MPI "
                  f"(CPU {time.process_time() - cpu:.5f} s)", flush=True)
            comm.Barrier()
            words[1] = 7
            comm.Barrier()
            time.sleep(1.0)
            print(f"target: word 1 = {int(words[1])} after 1 s asleep", flush=True)
        else:
            _origin(comm, window)
    finally:
        window.Free()
        comm.Barrier()
        if rank == 1:
            print(f"target: after its next MPI call, word 0 = {int(words[0])}, "
                  f"word 1 = {int(words[1])}", flush=True)
            posix_ipc.unlink_shared_memory(name)


def _origin(comm, window) -> None:
    window.Lock_all()
    one, result = np.ones(1, dtype=np.uint64), np.zeros(1, dtype=np.uint64)
    start, adds = time.monotonic(), 0
    while adds < ADDS and time.monotonic() - start < ASLEEP_S - 0.5:
        window.Fetch_and_op(one, result, 1, 0, MPI.SUM)
        window.Flush(1)
        adds += 1
    took = time.monotonic() - start
    print(f"origin: {adds} Fetch_and_op + Flush in {took * 1e3:.1f} ms; the last fetched "
          f"{int(result[0])}", flush=True)
    comm.Barrier()
    comm.Barrier()
    start = time.monotonic()
    window.Compare_and_swap(np.array([9], dtype=np.uint64), np.array([7], dtype=np.uint64),
                            result, 1, 1)
    window.Flush(1)
    print(f"origin: Compare_and_swap 7 -> 9 saw {int(result[0])} after "
          f"{(time.monotonic() - start) * 1e3:.0f} ms", flush=True)
    window.Unlock_all()


if __name__ == "__main__":
    main()
