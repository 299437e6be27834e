"""The driver's half of a lease (partitions/lease.py): a standing grant on one destination.

`Leasing` is a part of `Driver` (partitions/driver.py), kept apart because it is one idea. A
Fig 12 grant gives the driver a destination's lock for ONE request's moves. A lease (Op.LEASE)
gives it the lock until it gives the lock back, and the driver commits record after record
itself with no request at all: the commit protocol's steps in adapter/receive_area.py's order
(check the words, reserve, begin the commit, header, payload, publish `head`, doorbell), as
the adapter does for a Fig 11 move. A lone packet then costs one wake-up (the receiver's) and
two processes, as it does over a socket, instead of two wake-ups and three processes.

What keeps it safe:

* **Given back when another sender waits.** A request that finds the lock leased makes the
  adapter write the lease's token as the control block's `recall` word and post this
  partition's recall semaphore. The keeper thread (one per driver, blocked on that semaphore)
  gives the lease back: the holder's proof (`released`), then the post of the lock, exactly as
  a Fig 12 grant ends. From the recall on the holder has `grant_timeout_s`, then the machine
  kills it as a stuck holder. A send finds the recall too: it commits its packet, then gives
  the lease back. A lease that has carried nothing yet is left to its first commit for up to
  FIRST_COMMIT_S (each grant carries at least one packet); the keeper gives it back after
  that, unused. So a hand-over waits for a commit, not a clock, unless no commit can come
  (the holder only took the lease, or the sender that waits is its own thread): then 1 ms.
* **Never two writers.** Each lease has a mutex: a commit and a give-back never overlap, so
  the lock is posted only between commits. Before each commit the driver checks that the grant
  is still its own (`grant_token`, `holder`, not yet `released`): a lease the adapter took
  back is never written under.
* **Exactly once, in order.** Sequence numbers come from the pair's sequence word, advanced by
  `begin_commit` under the lock, as for every other move; a holder that dies mid-commit leaves
  a pending commit the adapter settles (rolls back) when it takes the lock back.
* **Loans under a lease.** `lease_loan` reserves a record for the program to fill in place (no
  copy, no request) and `end_lease_loan` commits it: the same steps as `lease_send`, split at
  the payload. While a loan is open the lease is never given back (the keeper leaves a
  recall to the loan's end, a send waits): the program writes past `head`, where the next
  holder would write.
* **Adapter restarts.** A restarted adapter keeps a lease it finds in the segment (the `lease`
  word names its token). A LEASE whose reply died with the old adapter is asked again and
  confirmed (Engine._renew_lease); one the driver stopped asking for is given back by the
  keeper when it is recalled (`_answer_recall`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import posix_ipc

from adapter import receive_area
from adapter.errors import LockTimeout, RingCorrupt, Status, XpmoveError, error_for
from adapter.protocol import Move, Op
from adapter.ring import (
    KIND_RECORD,
    KIND_RUN,
    RUN_DESCRIPTOR,
    Reservation,
    has_room,
    reserve,
)
from partitions.driver_parts import DriverParts
from partitions.lending import Granted

if TYPE_CHECKING:
    from hypervisor.layout import PartitionLayout

KEEPER_SLICE_S = 0.5  # the keeper re-checks the recall words (and its driver closing) this often
# A lease the adapter recalls before its holder committed anything under it is given back by
# that first commit (each grant carries at least one packet: two lessees of one destination
# cannot hand it back and forth with nothing sent); the keeper gives it back itself only
# once it is this old, unused. The adapter recalls at once: hand-overs wait for a commit,
# not a clock (a fixed 1 ms hold in the adapter cost every hand-over that millisecond, and
# all-to-all leases moved 4-6x fewer packets).
FIRST_COMMIT_S = 0.001
KEEPER_RETRY_S = 0.001  # how soon it looks again at a recall it left (a request in flight,
# a lease still fresh)
monotonic = time.monotonic  # the clock of FIRST_COMMIT_S (a test's to replace)


class LeaseLost(LockTimeout):
    """The lease is not held any more (recalled, given back, or taken back by the adapter):
    nothing of this send was written. Retryable: the next try asks for the lease again."""


@dataclass
class HeldLease:
    """A lease on `dst_id` as the driver knows it; `mutex` keeps a commit and a give-back
    apart. `token` is the grant's (receive_area.next_grant_token) while `held`. The rest is
    what every commit under it uses, looked up once (a lone packet finds the interpreter's
    caches cold: each lookup saved is latency saved)."""

    dst_id: int
    dst: PartitionLayout
    ring: receive_area.RingWords
    seq_word: int  # the pair's (this partition -> dst) sequence word
    holder_word: int
    src_index: int
    bell: posix_ipc.Semaphore
    token: int = 0
    held: bool = False
    mutex: threading.Lock = field(default_factory=threading.Lock)
    lent: OpenLoan | None = None  # a loan under the lease, reserved and not yet ended
    fresh_until: float = 0.0  # granted, nothing committed yet: the keeper leaves a recall
    # to its first commit until then (each grant carries at least one packet)


class OpenLoan(NamedTuple):
    """A record reserved under a lease for the program to fill (Leasing.lease_loan)."""

    head: int  # the ring's head when reserved: nobody else may move it before the commit
    reservation: Reservation
    run: tuple[int, int] | None  # (packets, packet length) of a run, None for one record
    thread: int  # the thread it was lent to (threading.get_ident): LoanHeld for its waits


class Leasing(DriverParts):
    """Driver's methods for leases; the attributes and methods below come from Driver."""

    if TYPE_CHECKING:
        locks: dict[int, posix_ipc.Semaphore]
        bells: dict[int, posix_ipc.Semaphore]
        recall: posix_ipc.Semaphore | None
        _seq_words: dict[int, int]
        _closing: bool
        _leases: dict[int, HeldLease]
        _keeper: threading.Thread | None
        keeper_errors: int
        lent_leases: set[int]  # destinations with a loan open (lent_by's shortcut; a set's
        # add and discard are each one step under the GIL, where a shared counter's += is not)

        def _take_slot(self, wait: float) -> LockTimeout | None: ...

        @staticmethod
        def _slot_wait(reply_by: float | None) -> float: ...

    def take_lease(self, dst_id: int, reply_by: float | None = None) -> HeldLease | XpmoveError:
        """The lease on `dst_id`: the one held, or a LEASE request for it (parked by the
        adapter while the lock is busy, as any move is). Errors are returned, not raised."""
        lease = self._leases.get(dst_id)
        if lease is not None and lease.held:
            return lease
        busy = self._take_slot(self._slot_wait(reply_by))
        if busy is not None:
            return busy
        try:
            lease = self._leases.get(dst_id)
            if lease is not None and lease.held:  # another thread of ours took it meanwhile
                return lease
            return self._ask_lease(dst_id, reply_by)
        finally:
            self._mutex.release()

    def _ask_lease(self, dst_id: int, reply_by: float | None) -> HeldLease | XpmoveError:
        """The LEASE round trip, the driver's slot held (so the keeper cannot mistake the
        lease for one whose reply was lost while we mark it held)."""
        try:
            (r,) = self._survive_restart(Op.LEASE, (Move(self.network_id, dst_id, 0, 1),),
                                         reply_by)
        except XpmoveError as exc:
            return exc
        if r.status != Status.OK:
            return error_for(r.status, src_id=self.network_id, dst_id=dst_id, offset=0, count=1,
                             detail=r.detail)
        dst, ring = self.by_id[dst_id], self.rings[dst_id]
        token = r.commit_value  # a lease's reply carries its token there
        lease = self._lease_of(dst_id)
        if (r.dst_address != dst.receive_base or r.count != dst.receive_size
                or receive_area.lease_token(self.words, ring) != token
                or not self._still_ours(dst, ring, token)):
            with lease.mutex:
                if token == lease.token and not lease.held:
                    # the adapter confirmed the lease another thread of ours held, which
                    # gave it back (a recall answered) before we looked: nothing is wrong
                    return LeaseLost(f"the lease on network ID {dst_id} was given back as "
                                     f"it was confirmed; nothing was written")
            self._free_lease(dst_id, token)  # never write under what is not plainly our lease
            return RingCorrupt(f"the lease on network ID {dst_id} does not match its control "
                               f"block (receive area [{r.dst_address}, "
                               f"{r.dst_address + r.count}), token {token}, holder "
                               f"{receive_area.read_holder(self.words, dst)}); given back")
        self.start_keeper()  # (started at the partition's start; drivers made elsewhere too)
        with lease.mutex:  # recalled already? The send this is for commits first, then
            lease.token, lease.held = token, True  # gives it back (or the keeper, if idle)
            lease.fresh_until = monotonic() + FIRST_COMMIT_S  # (a renewal too: at most 1 ms)
        return lease

    def _lease_of(self, dst_id: int) -> HeldLease:
        """The driver's record of its lease on `dst_id` (held or not), made at first need."""
        lease = self._leases.get(dst_id)
        if lease is None:
            dst = self.by_id[dst_id]
            lease = self._leases[dst_id] = HeldLease(
                dst_id, dst, self.rings[dst_id], self._seq_words[dst_id],
                receive_area.holder_word(dst), self.by_id[self.network_id].index,
                self.bells[dst_id])
        return lease

    def lease_send(self, lease: HeldLease, data: memoryview) -> int | XpmoveError:
        """Commit `data` (the program's bytes, already bounds-checked) as ONE record under the
        lease: the one copy of the packet, no request. LeaseLost if the lease is not held any
        more (nothing written); DestinationFull (lease kept) if the ring has no room;
        RingCorrupt (lease given back, so the adapter finds the words too) if a word of the
        control block is impossible. The record's sequence number when sent."""
        words, me, ring, dst = self.words, self.network_id, lease.ring, lease.dst
        with lease.mutex:
            if lease.lent is not None:
                return _loan_open(lease)
            token = lease.token  # then _still_ours, inline: this is the lone packet's path
            if (not lease.held or words[ring.token] != token or words[ring.released] == token
                    or words[lease.holder_word] != me):
                lease.held = False
                return LeaseLost(f"the lease on network ID {lease.dst_id} is not held any "
                                 f"more; nothing was sent")
            try:
                seq = receive_area.commit_record(words, self.physical, dst, ring, me,
                                                 lease.src_index, lease.seq_word, data)
            except XpmoveError as exc:
                return self._refused(lease, exc)
            lease.fresh_until = 0.0
            if words[ring.recall] == token:  # another sender waits: after this packet, it
                self._give_back(lease)  # goes first (each grant carries at least one)
        receive_area.ring_doorbell(words, ring, lease.bell)
        return seq

    def lease_has_room(self, lease: HeldLease, count: int) -> bool:
        """Whether a record of `count` bytes would fit the leased ring now (`has_room`: a
        look, no lock, nothing checked; `lease_loan` decides)."""
        words, ring, dst = self.words, lease.ring, lease.dst
        return has_room(words[ring.head], words[ring.tail], dst.receive_size, count, dst.window)

    def lease_loan(self, lease: HeldLease, count: int, run: tuple[int, int] | None,
                   uninit: bool) -> Granted | XpmoveError:
        """Reserve ONE record of `count` bytes (a run's: descriptor included) under the lease
        for the program to fill in place; nothing is visible until `end_lease_loan` commits it.
        The lent bytes are zeroed unless `uninit` and the ring only ever held our records
        (as Lending.take_grant_uninit). Errors as `lease_send`'s, returned."""
        words, ring, dst = self.words, lease.ring, lease.dst
        with lease.mutex:
            if lease.lent is not None:
                return _loan_open(lease)
            if not (lease.held and self._still_ours(dst, ring, lease.token)):
                lease.held = False
                return LeaseLost(f"the lease on network ID {lease.dst_id} is not held any "
                                 f"more; nothing was lent")
            head, tail = words[ring.head], words[ring.tail]
            try:
                receive_area.check_commit_words(words, dst, ring, head, tail, lease.seq_word)
                r = reserve(head, tail, dst.receive_size, count, dst.window)
            except XpmoveError as exc:
                return self._refused(lease, exc)
            address = dst.receive_base + r.payload_position
            size, records = count, 1
            if run is not None:
                address, size, records = (address + RUN_DESCRIPTOR.size,
                                          count - RUN_DESCRIPTOR.size, run[0])
            if not uninit or not receive_area.only_written_by(words, ring, self.network_id):
                np.frombuffer(self.physical, np.uint8, size, address).fill(0)  # a memset
            lease.lent = OpenLoan(head, r, run, threading.get_ident())
            self.lent_leases.add(lease.dst_id)
            return Granted(lease.dst_id, words[lease.seq_word] + 1, count, records, address,
                           size, r.new_head, lease.token)

    def end_lease_loan(self, lease: HeldLease, opened: OpenLoan, granted: Granted,
                       commit: bool) -> XpmoveError | None:
        """End the loan `lease_loan` lent (`opened`, its `lease.lent` then): `commit`
        publishes it as one record (the header, a run's descriptor, `head`, the doorbell), else
        nothing is written. Either way the lease goes back now if it was recalled meanwhile.
        LeaseLost if the lease is not ours any more (nothing delivered), or if `opened` was
        ended already (then nothing is done: the loan open now, if any, is another one)."""
        words, ring, dst = self.words, lease.ring, lease.dst
        with lease.mutex:
            if lease.lent is not opened:  # ended already: never end the next loan instead
                return LeaseLost(f"the loan under the lease on network ID {lease.dst_id} was "
                                 f"already ended; nothing more was delivered")
            lent, lease.lent = opened, None
            self.lent_leases.discard(lease.dst_id)
            if not (lease.held and lease.token == granted.token
                    and self._still_ours(dst, ring, granted.token)):
                lease.held = False
                return LeaseLost(f"the lease on network ID {lease.dst_id} was lost while "
                                 f"its loan was open; nothing was delivered")
            if commit:
                if (words[ring.head] != lent.head or words[ring.pending] != lent.head
                        or words[lease.seq_word] + 1 != granted.seq):
                    self._give_back(lease)
                    return RingCorrupt(f"network ID {lease.dst_id}'s control block changed "
                                       f"under a loan of its lease (head {words[ring.head]}, "
                                       f"was {lent.head}); nothing was delivered, given back")
                first = receive_area.begin_commit(words, ring, lent.reservation.new_head,
                                                  lease.src_index, lease.seq_word,
                                                  granted.records)
                payload = receive_area.write_record_header(
                    self.physical, dst, lent.reservation, self.network_id, first,
                    KIND_RECORD if lent.run is None else KIND_RUN)
                if lent.run is not None:
                    receive_area.write_run_descriptor(self.physical, payload, *lent.run)
                lease.fresh_until = 0.0
                receive_area.publish_head(words, dst.control, lent.reservation.new_head)
            if words[ring.recall] == lease.token:
                self._give_back(lease)
        if commit:
            receive_area.ring_doorbell(words, ring, lease.bell)
        return None

    def lent_by(self, thread: int) -> HeldLease | None:
        """The lease with a loan open in `thread`, if any: that thread must not wait for the
        destination's lock (Port and Lease raise LoanHeld instead). A send's check: one
        read of an empty set while no lease loan is open."""
        for dst_id in tuple(self.lent_leases):
            lease = self._leases[dst_id]
            lent = lease.lent
            if lent is not None and lent.thread == thread:
                return lease
        return None

    def end_lease(self, lease: HeldLease) -> None:
        """Give the lease back if it is still held (nothing is in flight: commits are whole)."""
        with lease.mutex:
            if lease.lent is not None:
                return  # another Lease object's loan is open: its end or a recall gives it back
            if lease.held and self._still_ours(lease.dst, lease.ring, lease.token):
                self._give_back(lease)
            lease.held = False

    def _still_ours(self, dst: PartitionLayout, ring: receive_area.RingWords, token: int) -> bool:
        words = self.words
        return (words[ring.token] == token and words[ring.released] != token
                and receive_area.read_holder(words, dst) == self.network_id)

    def _refused(self, lease: HeldLease, exc: XpmoveError) -> XpmoveError:
        """lease.mutex held, a commit or loan refused by the words (nothing written): a
        corrupt word gives the lease back (the adapter then finds the words too); no room
        keeps it, the receiver drains, unless another sender waits."""
        if isinstance(exc, RingCorrupt) or self.words[lease.ring.recall] == lease.token:
            self._give_back(lease)
        return exc

    def _give_back(self, lease: HeldLease) -> None:
        """lease.mutex held: the holder's proof, then the post of the lock (Fig 12 1205)."""
        lease.held = False
        self._free_lease(lease.dst_id, lease.token)

    def _free_lease(self, dst_id: int, token: int) -> bool:
        """End the lease `token` on `dst_id`, if it is still ours and not ended yet: the proof
        (that very token as `released`), then the post of the lock. A give-back names its
        grant: one that came late (the lease was ended another way and the lock granted on)
        writes nothing and posts nothing, so it can never end someone else's grant."""
        dst, ring = self.by_id[dst_id], self.rings[dst_id]
        if not self._still_ours(dst, ring, token):
            return False
        self.words[ring.released] = token
        self.locks[dst_id].release()
        return True

    # -- the keeper: answers recalls -----------------------------------------------------
    def start_keeper(self) -> None:
        """Start the thread that answers recalls, unless it runs (the partition process starts
        it at once, so even a lease whose reply never reached us is given back when
        recalled)."""
        if self._keeper is None or not self._keeper.is_alive():
            self._keeper = threading.Thread(target=self._keep_leases, daemon=True,
                                            name=f"xpmove-lease-keeper-{self.network_id}")
            self._keeper.start()

    def _keep_leases(self) -> None:
        """Thread: wait for a recall (the adapter posts our recall semaphore), answer it. The
        wait is bounded so that a closing driver ends the thread, and a recall whose post was
        lost (or a driver without a recall semaphore) is still answered within a slice."""
        stopped = threading.Event()
        wait = KEEPER_SLICE_S
        while not self._closing:
            try:
                if self.recall is None:
                    stopped.wait(wait)
                else:
                    try:
                        self.recall.acquire(wait)
                    except posix_ipc.BusyError:
                        pass
                _, deferred = self.answer_recalls()
                wait = KEEPER_RETRY_S if deferred else KEEPER_SLICE_S
            except Exception:  # noqa: BLE001 (a signal, a closing segment): keep answering
                self.keeper_errors += 1
                stopped.wait(KEEPER_RETRY_S)

    def answer_recalls(self) -> tuple[int, int]:
        """Give back every lease the adapter recalled: (how many were given back, how many
        must be looked at again shortly: a request in flight, a lease still fresh)."""
        given = deferred = 0
        for dst_id, ring in self.rings.items():
            recalled = self.words[ring.recall]
            if recalled and dst_id != self.network_id:
                outcome = self._answer_recall(dst_id, recalled)
                given += outcome is True
                deferred += outcome is None
        return given, deferred

    def _answer_recall(self, dst_id: int, recalled: int) -> bool | None:
        """Give back the lease `recalled` on `dst_id` if it is ours: True if given back, False
        if it is not ours to give, None if a request is in flight (look again)."""
        lease = self._lease_of(dst_id)
        with lease.mutex:
            if lease.held:
                if lease.token != recalled:
                    return False
                if lease.lent is not None:  # the loan's end gives it back (it reads the
                    return False  # recall word, written before the post that woke us)
                if monotonic() < lease.fresh_until:  # its first commit gives it back
                    return None  # (or we do, when it stays unused: look again shortly)
                self._give_back(lease)
                return True
        # Not a lease we hold: if the segment names us its holder, its LEASE reply was lost
        # (adapter restart, request abandoned). Ours to give back once no request is in flight
        # (none can be marking it held then), under the lease's mutex, naming its token.
        if not self._mutex.acquire(blocking=False):
            return None
        try:
            with lease.mutex:
                if lease.held:  # its reply was read meanwhile: a held (maybe fresh) lease now
                    return None  # (False would wait KEEPER_SLICE_S: the recall's post is used)
                if receive_area.lease_token(self.words, lease.ring) != recalled:
                    return False
                return self._free_lease(dst_id, recalled)
        finally:
            self._mutex.release()


def _loan_open(lease: HeldLease) -> LockTimeout:
    """A send or loan under a lease whose loan is open (another thread's): retryable, it waits
    for that loan to end."""
    return LockTimeout(f"a loan under the lease on network ID {lease.dst_id} is open; "
                       f"nothing was sent")
