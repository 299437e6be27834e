"""The host's fabric: moves records between hosts with MPI one-sided communication.

Each host's hypervisor is an MPI rank (`mpiexec -n H xpmove launch`); its fabric is one thread
that makes every MPI call after start-up. For a partition q living on another host, this host
has a proxy of q (hypervisor/gateway.py): the adapter and Fig 12 drivers commit records into
q's proxy ring here exactly as for a local destination, under q's lock here.

* Outbound: the fabric is the proxy ring's receiver. It ships whole records into the landing
  ring that q's host keeps for this host (cluster/landing.py): puts of the contiguous spans,
  flush, then a put of the landing head, flush; only then is the proxy ring's tail published.
* Inbound: for each record landed here, the fabric commits it into the destination's receive
  ring as the record's source partition's driver on this host: a Fig 12 grant taken, filled in
  place and committed (partitions/lending.py). The destination's lock, the pair's sequence
  numbers, adapter restarts and exactly-once are those of a local move; the landing tail moves
  only after the commit.
* Wake-ups, never spinning (cluster/wakeups.py): a proxy ring's doorbell, and one UDP datagram
  per shipped batch to the destination host's fabric, one back when landing space was freed.
  Heartbeats carry each host's partitions' states (cluster/heartbeat.py).

MPI facts this relies on (docs/cluster.md): a window from `Win.Allocate` under one `Lock_all`
epoch per run takes puts without the target calling MPI on one machine and on RDMA fabrics;
over plain TCP MPICH completes them only when the target makes MPI progress, which the idle
loop does every IDLE_S.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import posix_ipc
from mpi4py import MPI

from adapter import receive_area
from adapter.errors import DestinationFull, RingCorrupt, XpmoveError
from adapter.ring import KIND_RUN, RECORD_HEADER, RUN_DESCRIPTOR, next_record, reserve
from cluster import heartbeat
from cluster.heartbeat import HEARTBEAT_S
from cluster.landing import LandingRing, plan_landing, shippable, spans
from cluster.wakeups import Wakeups
from hypervisor.config import MachineConfig
from partitions.driver import Driver

if TYPE_CHECKING:
    from hypervisor.machine import Machine

IDLE_S = 0.01  # the longest the fabric sleeps without looking (a missed wake-up costs this)
# A landed record whose destination is full (or its lock busy) is tried again after a pause
# that doubles from the first to the last value while nothing lands (the drivers' back-off):
# a receiver frees space without a doorbell.
RETRY_S = (0.00005, 0.002)
GRANT_WAIT_S = 1.0  # how long one commit of a landed record may wait for the adapter


class Fabric:
    """One host's fabric; also the machine's Gateway for the partitions of other hosts.

    Life: `Fabric(config, comm)` (collective: the window), `Machine(..., gateway=fabric)`,
    `machine.start()` (hands over the proxies' pipes), `start(machine)`, traffic, `stop()`,
    `machine.stop()`, `close()` (collective: frees the window)."""

    def __init__(self, config: MachineConfig, comm: Any):
        self.comm = comm.Dup()  # the fabric's own context: the tools' collectives stay apart
        self.host = comm.Get_rank()
        self.host_of = config.host_of()
        self.network_ids = frozenset(n for n, h in self.host_of.items() if h != self.host)
        self.landing, size = plan_landing(config, self.host)
        # where this host puts, per remote partition: its host's landing ring from this host
        self.remote: dict[int, LandingRing] = {}
        for h in range(len(config.hosts)):
            if h != self.host:
                for ring in plan_landing(config, h)[0]:
                    if ring.source_host == self.host:
                        self.remote[ring.dst_id] = ring
        self.win = MPI.Win.Allocate(size, 1, comm=self.comm)
        self.window = memoryview(self.win.tomemory()).cast("B")  # type: ignore[arg-type]
        self.window[:] = bytes(size)
        self.wwords = self.window.cast("Q")
        self.wakeups = Wakeups()
        self.wakeups.peers = [tuple(a) for a in self.comm.allgather(self.wakeups.address)]
        self.win.Lock_all()  # one shared epoch per run: every ring has one writer
        self.comm.Barrier()
        self._fds: dict[int, tuple[int, int]] = {}
        self.drivers: dict[int, Driver] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._semaphores: list[posix_ipc.Semaphore] = []
        self._landing_tail: dict[int, int] = {}  # per remote partition, as last read
        self._word = np.zeros(1, np.uint64)
        self.stats = {"shipped_bytes": 0, "ships": 0, "landed_records": 0, "landed_packets": 0,
                      "retries": 0, "dropped": 0}
        self.problems: list[str] = []
        self._seen: tuple[int, ...] = ()
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
        """Become the proxies' driver and receiver on `machine` (started, with this gateway)."""
        assert machine.memory is not None
        self.machine = machine
        self.physical = machine.memory.view
        self.layout = machine.layout
        self.by_id = machine.layout.by_id()
        self.words = receive_area.words(self.physical)
        locks = {k: posix_ipc.Semaphore(v) for k, v in machine.names.locks.items()}
        bells = {k: posix_ipc.Semaphore(v) for k, v in machine.names.bells.items()}
        for nid in sorted(self.network_ids):
            request_fd, reply_fd = self._fds.pop(nid)
            self.drivers[nid] = Driver(nid, self.physical, self.layout, request_fd, reply_fd,
                                       locks, bells)
        self._semaphores = [*locks.values(), *bells.values()]
        self.rings = {nid: receive_area.RingWords.of(self.by_id[nid]) for nid in self.network_ids}
        self._shipping = sorted(self.network_ids)  # proxy rings not found corrupt
        self.local_rings = {p.network_id: receive_area.RingWords.of(p)
                            for p in self.layout.partitions if p.network_id not in self.rings}
        self.wakeups.forward_bells({nid: machine.names.bells[nid] for nid in self.network_ids})
        self._threads = [threading.Thread(target=self._run, name="fabric", daemon=True),
                         threading.Thread(target=self._beat, name="fabric-heartbeat",
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End the threads (the machine may stop after this); idempotent."""
        self._stop.set()
        self.wakeups.wake()
        for thread in self._threads:
            thread.join()
        self._threads = []
        self.wakeups.stop()
        for driver in self.drivers.values():
            driver.close()

    def close(self) -> None:
        """Free the window and the doorbell (collective: every host calls it)."""
        self.stop()
        self.win.Unlock_all()
        self.comm.Barrier()
        self.window.release()
        self.wwords.release()
        self.win.Free()
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

    def _news(self) -> tuple[int, ...]:
        """The proxy rings' and landing rings' heads: what changes when there is new work."""
        return (*(self.words[r.head] for r in self.rings.values()),
                *(self.wwords[r.words >> 3] for r in self.landing))

    # -- the fabric thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            pause = RETRY_S[0]
            while not self._stop.is_set():
                for datagram in self.wakeups.poll():  # heartbeats are read even when busy
                    self._heard_from(datagram)
                self._looked = time.monotonic()
                self._seen = self._news()
                shipped = any([self._ship_unless_corrupt(nid) for nid in self._shipping])
                landed, waiting = self._land_all()
                if landed or not waiting:
                    pause = RETRY_S[0]
                if not (shipped or landed):
                    self._sleep(pause if waiting else IDLE_S)
                    if waiting:
                        pause = min(pause * 2, RETRY_S[1])
        except BaseException as exc:  # the run's verdict reports it; never a silent stop
            self.problems.append(f"fabric of host {self.host} stopped: "
                                 f"{type(exc).__name__}: {exc}")

    def _sleep(self, timeout: float) -> None:
        """Wait for a doorbell, a datagram or `timeout`; MPI progress on the way back."""
        for ring in self.rings.values():
            self.words[ring.sleeping] = 1
        try:
            if self._news() != self._seen:
                return  # committed or landed since the last look (work stuck behind a full
                # ring is not news: it waits for a datagram, a doorbell or the timeout)
            for datagram in self.wakeups.wait(timeout):
                self._heard_from(datagram)
            self._looked = time.monotonic()
        finally:
            for ring in self.rings.values():
                self.words[ring.sleeping] = 0
            self.comm.Iprobe()  # MPI progress, for fabrics whose puts need the target

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

    # -- outbound ----------------------------------------------------------------------------
    def _ship_unless_corrupt(self, nid: int) -> bool:
        """A proxy ring whose words or headers no correct writer could have left (a forged
        word in the segment) is shipped no more, and reported; the others go on."""
        try:
            return self._ship(nid)
        except RingCorrupt as exc:
            self._shipping.remove(nid)
            self.problems.append(f"the proxy ring of network ID {nid} is corrupt, nothing more "
                                 f"is shipped from it: {exc}")
            return False

    def _ship(self, nid: int) -> bool:
        """Ship what fits of proxy `nid`'s ring into its host's landing ring; True if any."""
        proxy, ring = self.by_id[nid], self.rings[nid]
        head, tail = self.words[ring.head], self.words[ring.tail]
        if head == tail:
            return False
        landing = self.remote[nid]
        target = self.host_of[nid]
        base = proxy.receive_base

        def header(pos: int) -> tuple[int, int, int, int]:
            return RECORD_HEADER.unpack_from(self.physical, base + pos)

        end = shippable(tail, head, proxy.receive_size, self._landing_tail.get(nid, 0), header)
        if end == tail:  # full as last seen: look at the landing tail again
            self.win.Get(self._word, target, (landing.tail_word, 8, MPI.BYTE))
            self.win.Flush(target)
            self._landing_tail[nid] = int(self._word[0])
            end = shippable(tail, head, proxy.receive_size, self._landing_tail[nid], header)
            if end == tail:
                return False  # the destination host frees space and rings us
        for pos, length in spans(tail, end, proxy.receive_size):
            self.win.Put(self.physical[base + pos:base + pos + length], target,
                         (landing.data + pos, length, MPI.BYTE))
        self.win.Flush(target)  # the records are in the destination host's memory
        self._word[0] = end
        self.win.Put(self._word, target, (landing.words, 8, MPI.BYTE))
        self.win.Flush(target)  # and now visible to its fabric
        receive_area.publish_tail(self.words, proxy.control, end)
        self.stats["shipped_bytes"] += end - tail
        self.stats["ships"] += 1
        self.wakeups.ring(target)
        return True

    # -- inbound -----------------------------------------------------------------------------
    def _land_all(self) -> tuple[bool, bool]:
        """Commit landed records into local receive rings: (any committed, any waiting)."""
        landed = retry = False
        for ring in self.landing:
            done, waiting = self._land(ring)
            landed |= done
            retry |= waiting
        return landed, retry

    def _land(self, ring: LandingRing) -> tuple[bool, bool]:
        head, tail = self.wwords[ring.words >> 3], self.wwords[ring.tail_word >> 3]
        if head == tail:
            return False, False

        def header(pos: int) -> tuple[int, int, int, int]:
            return RECORD_HEADER.unpack_from(self.window, ring.data + pos)

        start, waiting = tail, False
        while True:
            record = next_record(tail, head, ring.capacity, header)
            if record is None:
                tail = head  # padding only
                break
            outcome = self._commit(ring, record)
            if outcome is None:
                waiting = True
                self.stats["retries"] += 1
                break
            tail = record.next_tail
            self.wwords[ring.tail_word >> 3] = tail
        self.wwords[ring.tail_word >> 3] = tail
        if tail != start:
            self.wakeups.ring(ring.source_host)  # landing space freed
        return tail != start, waiting

    def _commit(self, ring: LandingRing, record: Any) -> bool | None:
        """Commit one landed record as its source's driver: True committed, False dropped
        (never deliverable: counted and reported), None to try again later."""
        source = record.source_id
        driver = self.drivers.get(source)
        if driver is None or self.host_of.get(source) != ring.source_host:
            return self._drop(f"a record from host {ring.source_host} names source network ID "
                              f"{source}, which does not live there")
        if not self._room(ring.dst_id, record.length):
            return None  # full as far as we can see: no adapter round trip to be told so
        payload = ring.data + record.payload_position
        run = record.kind == KIND_RUN
        skip = RUN_DESCRIPTOR.size if run else 0
        if run:  # the adapter reads a run's descriptor from the source's own memory
            own = self.by_id[source].base
            self.physical[own:own + skip] = self.window[payload:payload + skip]
        granted = driver.take_grant_to_fill(ring.dst_id, 0, record.length, run=run,
                                            reply_by=time.monotonic() + GRANT_WAIT_S)
        if isinstance(granted, XpmoveError):
            if granted.retryable:
                return None
            return self._drop(f"record {record.seq} from network ID {source} to "
                              f"{ring.dst_id}: {type(granted).__name__}: {granted}")
        start = payload + skip
        self.physical[granted.address:granted.address + granted.size] = (
            self.window[start:start + granted.size])
        if driver.end_grant(granted, commit=True) is not None:
            return None  # the adapter took the grant back: nothing delivered, try again
        self.stats["landed_records"] += 1
        self.stats["landed_packets"] += granted.records
        return True

    def _room(self, dst_id: int, length: int) -> bool:
        """Whether destination `dst_id`'s ring seems to have room for a record of `length`
        (a hint read without its lock: the adapter decides)."""
        words, dst = self.local_rings[dst_id], self.by_id[dst_id]
        try:
            reserve(self.words[words.head], self.words[words.tail], dst.receive_size, length)
        except DestinationFull:
            return False
        except XpmoveError:
            return True  # not ours to judge: the adapter will say what is wrong
        return True

    def _drop(self, why: str) -> bool:
        self.stats["dropped"] += 1
        if len(self.problems) < 20:
            self.problems.append(why)
        return False

