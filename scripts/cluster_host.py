"""This MPI rank's host of a cluster: its machine and its fabric, started in agreement with
every other host and stopped whatever happens (`launch` and `bench` under `mpiexec`).

Every host runs the same sequence of collectives, and every run ends with a meeting of all
hosts (waited outside MPI, so a signal still gets through) that agrees on the exit code, the
worst of them: each host then frees the window, stops its machine and finalizes MPI, and none
goes on to a collective another skips. Ctrl-C or SIGTERM reaches every rank, so all hosts come
to the meeting; a host that ends early finds the others there, or tells them in the look
(`allgather`) it leaves (HostEnding). A host the others do not meet within its grace ends
the job with MPI_Abort after stopping its own machine (the others' names are swept by their
run registry on the next start).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import numpy as np
from rich.console import Console

from hypervisor.config import MachineConfig, with_program
from hypervisor.machine import Machine, MachineError
from hypervisor.names import RUNTIME_FILE_RE
from scripts.cluster_start import check_started, meet
from scripts.console import make_console
from scripts.launch import signals_deferred
from scripts.workload.program import PROGRAM

if TYPE_CHECKING:
    from cluster.wakeups import Wakeups

T = TypeVar("T")
ENDING = "xpmove: host ending"  # what a host that ends early gives a look it joins
WAIT_S = 0.005  # how often a host waiting for the others looks (outside MPI)
ABORT_GRACE_S = 5.0  # how long a host that ends the job waits for the others to clean up


def check_world(config: MachineConfig, size: int, command: str = "launch") -> None:
    """One MPI process per [[host]]; SystemExit saying how to run it otherwise."""
    if size != len(config.hosts):
        names = ", ".join(h.name for h in config.hosts)
        raise SystemExit(f"xpmove {command}: the config has {len(config.hosts)} hosts "
                         f"({names}): run it as `mpiexec -n {len(config.hosts)} xpmove "
                         f"{command} --config F` (this is {size} MPI "
                         f"process{'es' if size != 1 else ''})")


def config_digest(config: MachineConfig) -> str:
    """What every host must agree on: the whole parsed config (layout, network IDs, hosts)."""
    return hashlib.sha256(repr(config).encode()).hexdigest()


def check_same_config(config: MachineConfig, digests: list[str | None], command: str) -> None:
    """SystemExit on every rank alike if the hosts were not given the same config."""
    differ = [config.hosts[r].name for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise SystemExit(f"xpmove {command}: hosts {', '.join(differ)} read a config that "
                         f"differs from host {config.hosts[0].name}'s: every host must get "
                         f"the same file (the same partitions, sizes and [[host]] tables)")


def runtime_names(maps: str) -> list[str]:
    """The MPI runtime's shared-memory files (MPICH's, RUNTIME_FILE_RE) named in a
    /proc/PID/maps text, those still linked (an unlinked one reads "... (deleted)")."""
    fields = (line.split(maxsplit=5) for line in maps.splitlines())
    return sorted({f[5] for f in fields if len(f) == 6 and RUNTIME_FILE_RE.fullmatch(f[5])})


def mapped_runtime_names() -> list[str]:
    """The MPI runtime's shared-memory files this process maps (none without /proc)."""
    try:
        with open("/proc/self/maps") as f:
            return runtime_names(f.read())
    except OSError:
        return []  # no /proc (not Linux): nothing we can find


def unlink_runtime_names() -> None:
    """MPI_Abort skips the MPI_Finalize that unlinks the runtime's shared memory, which
    would be left on the host: unlink it first (the processes mapping it keep it)."""
    for path in mapped_runtime_names():
        with contextlib.suppress(OSError):
            os.unlink(path)


@contextlib.contextmanager
def signals_held(deliver: bool = True) -> Iterator[list[int]]:
    """Ctrl-C or SIGTERM arriving inside the block is noted (the list yielded) and, if
    `deliver`, delivered when it ends: a host that left between a barrier and the collective
    after it would leave the others inside MPI, where no signal reaches Python, until the job
    is aborted."""
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda sig, _frame: caught.append(sig))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught[:1] if deliver else ():
            signal.raise_signal(sig)


class HostEnding(Exception):
    """Another host ended the run early (interrupted, or its work failed) during a look."""


class ClusterHost:
    def __init__(self, config: MachineConfig, console: Console | None = None,
                 command: str = "launch", workload: bool = True):
        """`workload`: every partition runs the tools' workload program (launch, bench);
        otherwise each runs the program its config names (run)."""
        from cluster.fabric import Fabric  # only here: importing it starts MPI
        from cluster.mpi import MPI

        self.config = config
        self.comm: Any = MPI.COMM_WORLD
        wakeups = self._wakeups(command)  # before the hosts meet: it may fail on one only
        try:
            digests = meet(self.comm, None if wakeups is None else config_digest(config))
            check_started(digests, [h.name for h in config.hosts], command)
            check_world(config, self.comm.Get_size(), command)
            self.rank = self.comm.Get_rank()
            self.name = config.hosts[self.rank].name
            check_same_config(config, digests, command)
        except BaseException:
            if wakeups is not None:
                wakeups.close()
            raise
        assert wakeups is not None  # else check_started raised
        # rank 0 speaks for the cluster
        self.console = (console or make_console()) if self.rank == 0 else Console(quiet=True)
        self._ending = self.comm.Dup()  # where every host meets at the end of a run (_meet)
        self._look: Any = None  # the barrier of a look (`allgather`) not yet seen met
        self._max = MPI.MAX
        self._unsupervised = False  # the machine's supervision gave up (see _supervise)
        self._told = False  # this host took part in a look that said the run ends
        # how long a host that ends early waits for the others: more than the work's longest
        # stretch between two looks (the bench's measuring sleep), or they cannot be told
        self.grace = ABORT_GRACE_S
        self._failure: str | None = None  # what ended this host's work early, as printed
        self.fabric = Fabric(config, self.comm, wakeups)
        self.machine = Machine(with_program(config, PROGRAM) if workload else config,
                               gateway=self.fabric)

    def _wakeups(self, command: str) -> Wakeups | None:
        """This host's doorbell socket (its address: $XPMOVE_FABRIC_ADDRESS or what its name
        resolves to), or None, the reason printed, if it cannot be made here."""
        from cluster.wakeups import Wakeups

        try:
            return Wakeups()
        except OSError as exc:
            rank = self.comm.Get_rank()
            hosts = self.config.hosts
            name = hosts[rank].name if rank < len(hosts) else f"of MPI rank {rank}"
            print(f"xpmove {command}: host {name}: its fabric's doorbell socket: {exc} (set "
                  f"XPMOVE_FABRIC_ADDRESS to the address the other hosts reach it at)",
                  file=sys.stderr, flush=True)
            return None

    def allgather(self, value: T, then: Callable[[list[T]], object] | None = None) -> list[T]:
        """`comm.allgather`, but the wait for the other hosts is spent outside MPI (a rank
        waiting inside MPI spins: CPU = wall) and supervising this host's machine, so a host
        that hangs costs the others no CPU and their partitions are still looked after.
        HostEnding when another host ended the run instead of looking. `then(values)` runs
        before a signal can get in (a collective every host must enter after this look)."""
        request = self._look = self.comm.Ibarrier()
        while True:
            with signals_held():  # once past the barrier, every host must reach the allgather
                if request.Test():
                    self._look = None
                    values = self.comm.allgather(value)
                    ending = [self.config.hosts[r].name for r, v in enumerate(values)
                              if isinstance(v, str) and v == ENDING]
                    if ending:
                        self._told = True
                        raise HostEnding(f"host {', '.join(ending)} ended the run")
                    if then is not None:
                        then(values)
                    return values
            if self.machine.running:
                self.machine.poll(liveness=True)
            time.sleep(WAIT_S)  # pacing the look, not synchronisation

    def local(self, network_id: int) -> bool:
        return network_id in self.machine.partitions

    def run(self, work: Callable[[], T]) -> T | None:
        """Start this host's machine once every host could, run `work` (the same collectives
        on every host), stop. None, the reasons printed, when some host could not start.
        SystemExit when some host ended the run early: every host then ends the same way."""
        errors: list[str] = []
        result = None
        code = 0
        held = contextlib.ExitStack()  # signals held from the end of the work to the end
        caught: list[int] | None = None
        try:
            error = None
            try:
                self.machine.start()
                self._record_runtime_names()
            except MachineError as exc:
                error = f"host {self.name}: {exc}"
            errors = [e for e in self.allgather(error, then=self._start_fabric) if e]
            if not errors:
                self.console.print(
                    f"cluster up: {self.comm.Get_size()} hosts, {len(self.config.partitions)} "
                    f"partitions; host {self.name}: run {self.machine.prefix}, segment "
                    f"{self.machine.layout.total_size:,} bytes")
                result = work()
            # from here every host ends the same way: held before this `try` ends, so a
            # signal is either caught below or held, never raised on the way between the two
            caught = held.enter_context(signals_held(deliver=False))
        except BaseException as exc:  # the others may be in a look: end the run for all
            code = 130 if isinstance(exc, KeyboardInterrupt) else 1
            self._failure = str(exc)
            what = ("interrupted (Ctrl-C or SIGTERM)" if isinstance(exc, KeyboardInterrupt)
                    else f"{type(exc).__name__}: {exc}")
            with signals_deferred():
                Console(stderr=True).print(f"[red]host {self.name}: {what}; ending the MPI job",
                                           soft_wrap=True)
        with held:
            if caught is None:  # the work raised (or a signal came before the hold)
                caught = held.enter_context(signals_held(deliver=False))
            self.fabric.stop()
            code = self._meet(code, caught)
            self.fabric.close()  # every host stops reading the others' segments, then unmaps
            self.machine.stop()
        if code:
            raise SystemExit(code)  # MPI_Finalize at exit unlinks the runtime's names
        for e in errors:
            self.console.print(f"[red]{e}", soft_wrap=True)
        return None if errors else result

    def _record_runtime_names(self) -> None:
        """Record the MPI runtime's shared memory this rank maps with the run: a killed rank
        never reaches the MPI_Finalize that unlinks it, and the run's sweep (its adapter's,
        when this process dies) unlinks it then. Best effort: if the registry cannot be
        written, they are left to MPI_Finalize as before (with a warning)."""
        try:
            self.machine.registry.add_runtime(self.machine.prefix, mapped_runtime_names())
        except OSError as exc:
            Console(stderr=True).print(f"[yellow]host {self.name}: the MPI runtime's files "
                                       f"are not recorded with the run ({exc}); a killed "
                                       f"rank leaves them", soft_wrap=True)

    def _start_fabric(self, errors: list[str | None]) -> None:
        """Once every host could start its machine: the window (a collective, entered by every
        host in the look that agreed on it, so no signal leaves one host out)."""
        if not any(errors):
            self.fabric.start(self.machine)

    def after_run(self) -> contextlib.AbstractContextManager[list[int]]:
        """Around the hosts' exchange after `run` (the report gathered, the exit code agreed):
        a signal is held to its end, since a host that left it would leave the others inside
        MPI, where no signal reaches them; the run is over, so it waits for the report only."""
        return signals_held()

    def _meet(self, code: int, caught: list[int]) -> int:
        """Meet every other host at the end of the run: the highest exit code of them all, so
        no host goes on to a collective that another skips. On the way, join the look the
        others may wait in (a host that ends early brings them here). Waited outside MPI,
        supervising this host's machine. A host that ends early (`code`) or is interrupted
        here (`caught`) waits `grace` for the others, then ends the job alone with
        MPI_Abort."""
        mine, worst = np.array([code], np.int32), np.zeros(1, np.int32)
        request = self._ending.Iallreduce(mine, worst, op=self._max)
        deadline = None
        met = False
        while True:
            if self._look is None and not self._told:  # the others are in a look, or here
                self._look = self.comm.Ibarrier()
            if self._look is not None and self._look.Test():
                # the look this host left or joined: the others in it hear that the run ends
                # (HostEnding), and none stays in its allgather, inside MPI where no signal
                # reaches it. Every host takes part in one such look, so none is left pending.
                self._look = None
                self._told = True
                self.comm.allgather(ENDING)
            met = met or request.Test()
            if met and self._told:
                return int(worst[0])
            if deadline is None and (code or caught):
                deadline = time.monotonic() + self.grace
            if deadline is not None and time.monotonic() > deadline:
                self._abort(code or 130)
            self._supervise()
            time.sleep(WAIT_S)  # pacing the look, not synchronisation

    def _supervise(self) -> None:
        """Look after this host's machine while waiting for the others; once it cannot be
        looked after (its adapter given up on: every poll says so) only the stop is left."""
        if not self.machine.running or self._unsupervised:
            return
        try:
            self.machine.poll(liveness=True)
        except MachineError as exc:
            self._unsupervised = True
            if str(exc) != self._failure:  # not said already as what ended the work
                Console(stderr=True).print(f"[red]host {self.name}: {exc}", soft_wrap=True)

    def _abort(self, code: int) -> NoReturn:
        self.machine.stop()  # the job ends now: another host reading our segment ends with it
        unlink_runtime_names()
        self.comm.Abort(code)
        raise SystemExit(code)  # not reached: MPI_Abort ends this process

    def problems(self) -> list[str]:
        """What this host's fabric found wrong (the run is then not clean)."""
        out = [f"host {self.name}: {p}" for p in self.fabric.problems]
        if self.fabric.stats["dropped"]:
            out.append(f"host {self.name}: {self.fabric.stats['dropped']} landed records "
                       f"dropped")
        return out
