"""How a host's fabric takes the records other hosts hold for its partitions (Fig 12 across
hosts; cluster/fabric.py runs it).

For each local partition q and each other host h, h keeps q's proxy ring (hypervisor/gateway.py).
This host is that ring's receiver, through the MPI window over h's segment: `MPI_Get` of the
ring's head and of each record's header; then, as the record's source partition's driver on
this host, a Fig 12 grant in q's receive ring from this host's adapter, `MPI_Get` of the
payload straight into the granted bytes, the commit, and only after the commits an `MPI_Put` of
the proxy ring's new tail. A record is therefore in exactly one of the two rings, and
committed once: a grant commits at most once, one taken back by a restarted adapter is tried
again, and the tail has one writer. Records that never can be delivered (the destination
ended for good, a source that does not live on h) are dropped, counted and reported.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

from adapter import receive_area
from adapter.errors import DestinationFull, RingCorrupt, XpmoveError
from adapter.ring import (
    KIND_RUN,
    RECORD_HEADER,
    RUN_DESCRIPTOR,
    RecordView,
    align,
    max_payload,
    next_record,
    reserve,
    run_size,
)
from cluster.coalesce import groups
from cluster.mpi import MPI

if TYPE_CHECKING:
    import threading

    import numpy as np

    from hypervisor.layout import PartitionLayout
    from partitions.driver import Driver

GRANT_WAIT_S = 1.0  # how long one commit of a pulled record may wait for the adapter
SCAN_RECORDS = 1024  # record headers one pass reads at most (a pass stopped early reads again)


class Inbox(NamedTuple):
    """A proxy ring on another host that this host's fabric drains: the records of `host`'s
    partitions for local partition `dst_id`. Offsets are the same on every host."""

    host: int
    dst_id: int
    ring: receive_area.RingWords  # word indices of the ring's control block
    base: int  # segment offset of the ring's first byte
    capacity: int


class Puller:
    """The fabric's methods for pulling; the attributes below come from Fabric."""

    if TYPE_CHECKING:
        win: Any
        physical: memoryview
        words: memoryview
        by_id: dict[int, PartitionLayout]
        drivers: dict[int, Driver]
        host_of: dict[int, int]
        hosts: list[str]
        local_rings: dict[int, receive_area.RingWords]
        stats: dict[str, int]
        problems: list[str]
        _pulling: list[Inbox]
        _tails: dict[Inbox, int]
        _heads: dict[Inbox, int]
        _word: np.ndarray
        _header: bytearray
        _ahead: dict[Inbox, set[tuple[int, int]]]  # committed past a record that must wait
        _stop: threading.Event  # set: the pass ends after the record in hand

    # -- one-sided access to another host's segment -------------------------------------------
    def _remote_word(self, host: int, index: int) -> int:
        self.win.Get(self._word, host, (index * 8, 8, MPI.BYTE))
        self.win.Flush(host)
        return int(self._word[0])

    def _put_word(self, host: int, index: int, value: int) -> None:
        self._word[0] = value
        self.win.Put(self._word, host, (index * 8, 8, MPI.BYTE))
        self.win.Flush(host)

    def _get(self, host: int, local: int, remote: int, length: int) -> None:
        """Copy `length` bytes at segment offset `remote` of `host` to offset `local` here."""
        self.win.Get(self.physical[local:local + length], host, (remote, length, MPI.BYTE))
        self.win.Flush(host)
        self.stats["gets"] += 1

    # -- pulling -----------------------------------------------------------------------------
    def _pull_all(self) -> tuple[bool, bool]:
        """Commit what waits in the proxy rings of this host's partitions on the other hosts:
        (any committed, any waiting for room)."""
        pulled = waiting = False
        for box in list(self._pulling):
            if self._stop.is_set():  # each inbox may wait GRANT_WAIT_S on a hung adapter
                break
            try:
                done, stuck = self._pull(box)
            except RingCorrupt as exc:
                self._pulling.remove(box)
                self.problems.append(
                    f"the proxy ring of network ID {box.dst_id} on host {self.hosts[box.host]} "
                    f"is corrupt, nothing more is pulled from it: {exc}")
                continue
            pulled |= done
            waiting |= stuck
        return pulled, waiting

    def _pull(self, box: Inbox) -> tuple[bool, bool]:
        """One pass over a proxy ring: read up to SCAN_RECORDS headers from the tail, commit
        them in groups (cluster/coalesce.py), then move the tail over the records done. A
        record committed past one that must wait is remembered (`_ahead`), skipped by the
        next pass and passed by the tail then: each is committed once. A word no correct
        writer could leave (a forged head or header there) raises RingCorrupt: that ring is
        pulled no more, the others go on."""
        head = self._heads[box] = self._remote_word(box.host, box.ring.head)
        start = tail = self._tails[box]
        ahead = self._ahead.setdefault(box, set())
        scanned: list[RecordView] = []
        end = None  # where the scan ended, if it reached the head
        while len(scanned) < SCAN_RECORDS and not self._stop.is_set():
            record = next_record(tail, head, box.capacity,
                                 lambda pos: self._read_header(box, pos))
            if record is None:
                end = head  # padding only after the last record
                break
            scanned.append(record)
            tail = record.next_tail
        waiting = False
        todo = [r for r in scanned if (r.source_id, r.seq) not in ahead]
        for group in groups(todo, max_payload(box.capacity)):
            if self._stop.is_set():
                break
            outcome = self._commit(box, group)
            if outcome is None and len(group) > 1:  # no room for them all: one at a time
                group = group[:1]
                outcome = self._commit(box, group)
            if outcome is None:
                waiting = True
                self.stats["retries"] += 1
                break
            ahead.update((r.source_id, r.seq) for r in group)  # committed or dropped
        tail = start
        for r in scanned:  # the tail passes the records done, up to the first not done
            if (r.source_id, r.seq) not in ahead:
                break
            ahead.discard((r.source_id, r.seq))
            tail = r.next_tail
        else:
            tail = end if end is not None else tail
        if tail != start:
            self._put_word(box.host, box.ring.tail, tail)  # after the commits: exactly once
            self._tails[box] = tail
        return tail != start, waiting

    def _read_header(self, box: Inbox, pos: int) -> tuple[int, int, int, int]:
        self.win.Get(self._header, box.host, (box.base + pos, RECORD_HEADER.size, MPI.BYTE))
        self.win.Flush(box.host)
        return RECORD_HEADER.unpack_from(self._header)

    def _commit(self, box: Inbox, group: list[RecordView]) -> bool | None:
        """Commit records of a remote proxy ring, one grant for all, as their source's driver:
        True committed, False dropped (never deliverable: counted and reported), None to try
        again later. Several records (`coalesce`) are committed as one run."""
        first = group[0]
        source = first.source_id
        driver = self.drivers.get(source)
        if driver is None or self.host_of.get(source) != box.host:
            return self._drop(len(group), f"a record from host {self.hosts[box.host]} names "
                                          f"source network ID {source}, which does not live "
                                          f"there")
        run = first.kind == KIND_RUN or len(group) > 1
        count = run_size(len(group), first.length) if len(group) > 1 else first.length
        if not self._room(box.dst_id, count):
            return None  # full as far as we can see: no adapter round trip to be told so
        own = self.by_id[source].base  # the adapter reads a run's descriptor from there
        if len(group) > 1:
            RUN_DESCRIPTOR.pack_into(self.physical, own, len(group), first.length)
        elif run:
            self._get(box.host, own, box.base + first.payload_position, RUN_DESCRIPTOR.size)
        granted = driver.take_grant_to_fill(box.dst_id, 0, count, run=run,
                                            reply_by=time.monotonic() + GRANT_WAIT_S)
        if isinstance(granted, XpmoveError):
            if granted.retryable:
                return None
            return self._drop(len(group), f"record {first.seq} from network ID {source} to "
                                          f"{box.dst_id}: {type(granted).__name__}: {granted}")
        if len(group) > 1:  # each packet to its place in the run
            stride = align(first.length)
            spans = [(granted.address + i * stride, box.base + r.payload_position, r.length)
                     for i, r in enumerate(group)]
        else:  # the record as it lies (a run's descriptor is written by the adapter)
            skip = RUN_DESCRIPTOR.size if run else 0
            spans = [(granted.address, box.base + first.payload_position + skip, granted.size)]
        for local, remote, length in spans:
            self.win.Get(self.physical[local:local + length], box.host,
                         (remote, length, MPI.BYTE))
        self.win.Flush(box.host)
        self.stats["gets"] += len(spans)
        if driver.end_grant(granted, commit=True) is not None:
            return None  # the adapter took the grant back: nothing delivered, try again
        self.stats["pulled_bytes"] += granted.size
        self.stats["landed_records"] += len(group)
        self.stats["landed_packets"] += granted.records
        return True

    def _room(self, dst_id: int, length: int) -> bool:
        """Whether destination `dst_id`'s ring seems to have room for a record of `length`
        (a hint read without its lock: the adapter decides)."""
        words, dst = self.local_rings[dst_id], self.by_id[dst_id]
        try:
            reserve(self.words[words.head], self.words[words.tail], dst.receive_size, length,
                    dst.window)
        except DestinationFull:
            return False
        except XpmoveError:
            return True  # not ours to judge: the adapter will say what is wrong
        return True

    def _drop(self, records: int, why: str) -> bool:
        self.stats["dropped"] += records
        if len(self.problems) < 20:
            self.problems.append(why)
        return False
