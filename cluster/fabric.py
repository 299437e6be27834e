"""The host's fabric: moves records between hosts with MPI one-sided communication.

Each host's hypervisor is an MPI rank (`mpiexec -n H xpmove launch`); its fabric is one thread
that makes every MPI call after start-up. The MPI window is the host's segment itself: every
host carves the whole config, so a segment offset names the same word on every host.

For a partition q living on another host, this host has a proxy of q (hypervisor/gateway.py):
the adapter and Fig 12 drivers commit records into q's proxy ring here exactly as for a local
destination, under q's lock here (a loan is filled in place there).

* Pull, Fig 12 across hosts (cluster/pull.py): q's host's fabric is the receiver of q's proxy
  ring on every other host; it gets each record straight into a grant it takes in q's ring as
  the record's source's driver, so the one copy between hosts is made by the host that holds
  the destination's lock.
* Wake-ups, never spinning (cluster/wakeups.py): before it sleeps a fabric sets the `sleeping`
  word of every proxy ring it pulls (MPI_Put), as a local receiver does for its ring; a mover
  that commits into a sleeping proxy ring rings its doorbell, and the source host's fabric
  turns that into a UDP datagram to the puller. Heartbeats carry each host's partitions'
  states (cluster/heartbeat.py).

MPI facts this relies on (cluster/mpi.py, docs/cluster.md): with MPICH's UCX netmod and
MPIR_CVAR_NOLOCAL, gets and puts into a `Win.Create` window complete without the target
calling MPI, on one machine and on RDMA fabrics; over plain TCP only when the target makes MPI
progress, which the idle loop does every IDLE_S.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import posix_ipc

from adapter import receive_area
from adapter.errors import AdapterGone
from adapter.ring import RECORD_HEADER
from cluster import heartbeat
from cluster.heartbeat import HEARTBEAT_S
from cluster.mpi import MPI
from cluster.pull import Inbox, Puller
from cluster.wakeups import Wakeups
from hypervisor.config import MachineConfig
from partitions.driver import Driver

if TYPE_CHECKING:
    from hypervisor.machine import Machine

IDLE_S = 0.01  # the longest the fabric sleeps without looking (a missed wake-up costs this)
# A record whose destination is full (or its lock busy) is tried again after a pause that
# doubles from the first to the last value while nothing is pulled (the drivers' back-off): a
# receiver frees space without a doorbell.
RETRY_S = (0.00005, 0.002)


class Fabric(Puller):
    """One host's fabric; also the machine's Gateway for the partitions of other hosts.

    Life: `Fabric(config, comm, Wakeups())` (collective), `Machine(..., gateway=fabric)`,
    `machine.start()` (hands over the proxies' pipes), `start(machine)` (collective: the
    window over the segment), traffic, `stop()` on every host, `close()` (collective: frees
    the window; every host's fabric has stopped pulling), then `machine.stop()`."""

    def __init__(self, config: MachineConfig, comm: Any, wakeups: Wakeups):
        """`wakeups`: this host's doorbell socket, made before the hosts met (making it may
        fail on one host only, and then every host must learn it at that meeting)."""
        self.comm = comm.Dup()  # the fabric's own context: the tools' collectives stay apart
        self.host = comm.Get_rank()
        self.host_of = config.host_of()
        self.hosts = [h.name for h in config.hosts]
        self.network_ids = frozenset(n for n, h in self.host_of.items() if h != self.host)
        self.win: Any = None
        self.wakeups = wakeups
        self.wakeups.peers = [tuple(a) for a in self.comm.allgather(self.wakeups.address)]
        self._fds: dict[int, tuple[int, int]] = {}
        self.drivers: dict[int, Driver] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._semaphores: list[posix_ipc.Semaphore] = []
        self._word = np.zeros(1, np.uint64)
        self._header = bytearray(RECORD_HEADER.size)
        self.stats = {"pulled_bytes": 0, "gets": 0, "landed_records": 0, "landed_packets": 0,
                      "retries": 0, "dropped": 0}
        self.problems: list[str] = []
        self._states: dict[int, str] = {}  # remote partitions' states, as their hosts said
        now = time.monotonic()
        self._heard = {h: now for h in range(len(config.hosts)) if h != self.host}
        self._looked = now  # when the fabric last read its datagrams
        self.machine: Machine | None = None

    # -- Gateway -----------------------------------------------------------------------------
    def connect(self, network_id: int, request_fd: int, reply_fd: int) -> None:
        driver = self.drivers.get(network_id)
        if driver is None:
            self._fds[network_id] = (request_fd, reply_fd)
        else:
            driver.reconnect(request_fd, reply_fd)

    def remote_states(self) -> dict[int, str]:
        # silence counts only up to our last look: a fabric blocked for a while (waiting
        # for a restarted adapter) has not heard, which is not the others' fault
        return heartbeat.remote_states(self.network_ids, self.host_of, self._heard,
                                       self._states, min(time.monotonic(), self._looked))

    # -- life --------------------------------------------------------------------------------
    def start(self, machine: Machine) -> None:
        """Expose the segment to the other hosts and become the receiver of the proxy rings
        they keep for this host's partitions (collective; `machine` started with this
        gateway)."""
        assert machine.memory is not None
        self.machine = machine
        self.physical = machine.memory.view
        self.layout = machine.layout
        self.by_id = machine.layout.by_id()
        self.words = receive_area.words(self.physical)
        self.win = MPI.Win.Create(self.physical, 1, comm=self.comm)
        now = time.monotonic()  # every host has started its machine: silence counts from here
        self._heard = dict.fromkeys(self._heard, now)
        self._looked = now
        self.win.Set_errhandler(MPI.ERRORS_RETURN)  # a failed get is an exception, not an abort
        self.win.Lock_all()  # one shared epoch per run: each remote word has one writer
        locks = {k: posix_ipc.Semaphore(v) for k, v in machine.names.locks.items()}
        bells = {k: posix_ipc.Semaphore(v) for k, v in machine.names.bells.items()}
        for nid in sorted(self.network_ids):
            request_fd, reply_fd = self._fds.pop(nid)
            self.drivers[nid] = Driver(nid, self.physical, self.layout, request_fd, reply_fd,
                                       locks, bells)
        self._semaphores = [*locks.values(), *bells.values()]
        self.proxies = {nid: receive_area.RingWords.of(self.by_id[nid])
                        for nid in self.network_ids}
        self._announced = dict.fromkeys(self.network_ids, 0)  # proxy heads told their puller
        self.local_rings = {p.network_id: receive_area.RingWords.of(p)
                            for p in self.layout.partitions if p.network_id not in self.proxies}
        self.inboxes = [Inbox(h, nid, words, self.by_id[nid].receive_base,
                              self.by_id[nid].receive_size)
                        for h in sorted(self._heard) for nid, words in self.local_rings.items()]
        self._pulling = list(self.inboxes)  # inboxes not found corrupt
        self._tails = {box: self._remote_word(box.host, box.ring.tail) for box in self.inboxes}
        self._heads = dict(self._tails)  # each inbox's head, as last read
        self._ahead = {}  # per inbox, (source, seq) of records committed past the tail
        self.wakeups.forward_bells({nid: machine.names.bells[nid] for nid in self.network_ids})
        self._threads = [threading.Thread(target=self._run, name="fabric", daemon=True),
                         threading.Thread(target=self._beat, name="fabric-heartbeat",
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End the threads (no get or put of this host after this); idempotent."""
        self._stop.set()
        self.wakeups.wake()
        for driver in self.drivers.values():
            driver.close()  # a pull waiting for a restarted adapter gives up now, not in 5 s
        for thread in self._threads:
            thread.join()
        self._threads = []
        self.wakeups.stop()

    def close(self) -> None:
        """Free the window and the doorbell (collective: every host calls it after `stop`, and
        before its machine unmaps the segment)."""
        self.stop()
        if self.win is not None:
            self.win.Unlock_all()
            self.comm.Barrier()  # nobody reads or writes another host's segment any more
            self.win.Free()
            self.win = None
        self.comm.Free()
        self.wakeups.close()
        for sem in self._semaphores:
            sem.close()
        for driver in self.drivers.values():
            for fd in (driver.request_fd, driver.reply_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- the fabric thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            pause = RETRY_S[0]
            while not self._stop.is_set():
                for datagram in self.wakeups.poll():  # heartbeats are read even when busy
                    self._heard_from(datagram)
                self._looked = time.monotonic()
                self._announce()
                pulled, waiting = self._pull_all()
                if pulled or not waiting:
                    pause = RETRY_S[0]
                if not pulled:
                    self._sleep(pause if waiting else IDLE_S)
                    if waiting:
                        pause = min(pause * 2, RETRY_S[1])
        except BaseException as exc:  # the run's verdict reports it; never a silent stop
            if self._stop.is_set() and isinstance(exc, AdapterGone):
                return  # the stop closed the drivers mid-pull: the record stays in its ring
            self.problems.append(f"fabric of host {self.hosts[self.host]} stopped: "
                                 f"{type(exc).__name__}: {exc}")

    def _announce(self) -> None:
        """Tell the puller of each proxy ring here that records wait, if it sleeps (it set the
        ring's `sleeping` word) and was not told of this head yet."""
        for nid, ring in self.proxies.items():
            head = self.words[ring.head]
            if self.words[ring.sleeping] and head != self._announced[nid]:
                self._announced[nid] = head
                self.wakeups.ring(self.host_of[nid])

    def _sleep(self, timeout: float) -> None:
        """Wait for a datagram, a proxy's doorbell or `timeout`, with every pulled ring marked
        sleeping (then read once more: a record committed before the mark is not missed)."""
        for box in self._pulling:
            self._put_word(box.host, box.ring.sleeping, 1)
        try:
            if any(self._remote_word(box.host, box.ring.head) != self._heads[box]
                   for box in self._pulling):
                return  # committed since the last look (work stuck behind a full ring is not
                # news: it waits for a datagram, a doorbell or the timeout)
            for datagram in self.wakeups.wait(timeout):
                self._heard_from(datagram)
            self._looked = time.monotonic()
        finally:
            for box in self._pulling:
                self._put_word(box.host, box.ring.sleeping, 0)
            self.comm.Iprobe()  # MPI progress, for fabrics whose gets need the target

    def _heard_from(self, datagram: bytes) -> None:
        beat = heartbeat.decode(datagram, self.host_of)
        if beat is not None and beat[0] in self._heard:
            self._heard[beat[0]] = time.monotonic()
            self._states.update(beat[1])

    def _beat(self) -> None:
        """Every HEARTBEAT_S, tell every other host the states of this host's partitions: a
        thread of its own, so a fabric thread waiting for a restarted adapter does not make
        this host look down to the others."""
        while not self._stop.wait(HEARTBEAT_S):
            self._heartbeat()

    def _heartbeat(self) -> None:
        machine = self.machine
        if machine is None:
            return
        states = {nid: "gone" if nid in machine.retired else
                  "active" if child.state.value == "running" else "dead"
                  for nid, child in list(machine.partitions.items())}
        beat = heartbeat.encode(self.host, states)
        for host in self._heard:
            self.wakeups.ring(host, beat)
