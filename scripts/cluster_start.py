"""The first meeting of a cluster run's hosts, which a host that failed before it still attends.

Every MPI rank of `mpiexec -n H xpmove launch|run|bench` starts MPI and meets the others
(ClusterHost: an allgather of the config's digest). A rank that fails before that meeting (its
arguments refused, its config unreadable, its run directory unusable: one host's file system
may differ from another's) would leave the others inside MPI_Init or the allgather for good,
where no signal reaches Python: MPICH's launcher does not end a job whose process exits
before starting MPI. So such a rank starts MPI anyway and brings None to the meeting; every
host then ends with a line naming the hosts that could not start, and MPI finalizes normally
on all of them (no runtime name is left in /dev/shm).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
from typing import Any

COMMANDS = ("launch", "run", "bench")  # the commands that run across hosts
# How long a rank that failed waits for MPI to start. The others may not start it at all (a
# one-host config under mpiexec, each rank running its own machine, when this rank failed
# before reading its config); then faulthandler's watchdog thread ends the process (exit 1)
# since MPI_Init holds the interpreter. MPICH then reports the rank's end and leaves its
# runtime's file in /dev/shm (mpich_shm_*): the one case this module does not clean up.
START_S = 30.0
_met = False  # this process has been to the meeting (or is there)
_one_host = False  # this process's config places everything on one host: nobody waits


def launched_by_mpi() -> bool:
    """Started by an MPI launcher (MPICH's hydra sets PMI_RANK; a PMIx launcher PMIX_RANK)."""
    return "PMI_RANK" in os.environ or "PMIX_RANK" in os.environ


def meet(comm: Any, digest: str | None) -> list[str | None]:
    """Every host's config digest, None for a host that failed before it could start."""
    global _met
    _met = True
    return comm.allgather(digest)


def one_host() -> None:
    """The command's config has no [[host]] tables: its failures concern no other rank."""
    global _one_host
    _one_host = True


def check_started(digests: list[str | None], host_names: list[str], command: str) -> None:
    """SystemExit on every host alike when some host could not start."""
    failed = [host_names[r] if r < len(host_names) else f"of MPI rank {r}"
              for r, digest in enumerate(digests) if digest is None]
    if failed:
        raise SystemExit(f"xpmove {command}: host {', '.join(failed)} could not start (its "
                         f"error is printed above): the run ends on every host before any "
                         f"partition starts")


def command_of(argv: list[str]) -> str | None:
    """The command word of an xpmove command line (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def attend_after_failing(argv: list[str]) -> None:
    """Called by a process whose command failed: if it is a host of a cluster run that has not
    met the others yet, meet them with None so that they end too instead of waiting for it.
    Nothing it does replaces the command's own error: a failure here is ignored."""
    if _met or _one_host or not launched_by_mpi() or command_of(argv) not in COMMANDS:
        return
    with contextlib.suppress(Exception), open(os.devnull, "w") as quiet:
        faulthandler.dump_traceback_later(START_S, exit=True, file=quiet)
        try:
            from cluster.mpi import MPI  # importing it starts MPI
        finally:
            faulthandler.cancel_dump_traceback_later()
        meet(MPI.COMM_WORLD, None)
