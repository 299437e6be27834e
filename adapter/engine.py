"""The adapter's request engine: a sans-I/O core (no pipes, no selector, no semaphores, no clock).

It works over the segment as a `memoryview` (the physical memory), the `SegmentLayout`, one
`Lock` and one `Bell` per destination network ID (any objects with the small interfaces
below: POSIX semaphores in the adapter process, counters in the unit tests) and the lock
timeout. Time is an argument (`now`, monotonic seconds) wherever it matters.

For each request it validates every move once (translation and bounds, run descriptors), takes
every destination lock in order (all or none), reserves ring space, begins the commit and then
moves (Fig 11: header, MVXL, head published, lock freed, doorbell) or grants (Fig 12: header
written, the lock and the physical addresses returned to the driver). A request whose lock is
busy is parked, not waited on: `retry_parked` tries again and answers LOCK_TIMEOUT at the
deadline. Each partition has at most one request in the engine at a time.

The commit protocol's steps are adapter/receive_area.py's functions; the lock bookkeeping (who
holds what) is adapter/locks.py's LockBook; the translation table is adapter/translation.py's.
Three parts of Engine live apart, one idea each: its locks, grants and recovery (`Grants`,
adapter/grants.py), the commit of a request whose locks are held (`Commits`,
adapter/commits.py) and leases (`Leases`, adapter/leases.py).

    engine = Engine(memory, layout, locks, bells, lock_timeout)
    engine.recover(now)                        # at start: locks to a known state
    engine.attach(2)                           # a partition's pipes are up
    frame = engine.submit(2, request, now)     # the reply, or None: parked
    for network_id, frame in engine.retry_parked(now): ...
    engine.detach(2)                           # its pipes closed: grants it holds come back
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from adapter import receive_area
from adapter.commits import Commits
from adapter.errors import RingCorrupt, Status, XpmoveError
from adapter.grants import Grants
from adapter.leases import Leases
from adapter.locks import LockBook, LockState
from adapter.protocol import Op, Request, Result, encode_reply, malformed_reply
from adapter.ring import MAX_RUN_RECORDS, MIN_RUN, RUN_DESCRIPTOR, check_run, max_payload
from adapter.translation import PartitionState, Translation, TranslationTable
from hypervisor.layout import SegmentLayout

# Module aliases for the per-request path: an Enum class attribute lookup costs ~0.2 us here.
MOVE, GRANT, MOVE_RUN, GRANT_RUN, LEASE = Op.MOVE, Op.GRANT, Op.MOVE_RUN, Op.GRANT_RUN, Op.LEASE
SERVED_OPS = frozenset((MOVE, GRANT, MOVE_RUN, GRANT_RUN, LEASE))
RUN_OPS = frozenset((MOVE_RUN, GRANT_RUN))
OK = Status.OK
HELD = LockState.HELD


class Lock(Protocol):
    """A destination lock as the engine uses it: a binary semaphore it can try without
    waiting. Another party (a Fig 12 driver) may release it; `value` > 0 while the engine holds
    it means someone released it who did not hold it."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free: True, else False at once (never blocks)."""
        ...

    def release(self) -> None: ...

    @property
    def value(self) -> int: ...


class Bell(Protocol):
    """A destination's doorbell (receive_area.ring_doorbell releases it to wake the receiver)."""

    def release(self) -> None: ...


class EngineError(RuntimeError):
    """The shell broke the engine's contract (a bug in the adapter, never a partition's fault)."""


@dataclass(slots=True)
class Work:
    """A validated request: per-move results so far, the checked moves, its lock deadline."""

    request: Request
    results: list[Result | None]
    checked: list[tuple[int, Translation]]
    deadline: float
    runs: dict[int, tuple[int, int]] = field(default_factory=dict)  # move -> (packets, length)


class Engine(Grants, Commits, Leases):
    """The request engine of one adapter over one segment. See the module docstring.

    `counters` and `errors` are the adapter's statistics (stats()); the shell bumps them too
    for the faults only it sees (frames rejected by the decoder, internal errors).

    Every word read from the segment is checked before use (the control block's head, tail,
    pending commit, holder; the pair's sequence word). A word no correct party could have
    written fails THAT destination: `corrupt` names it and why, every later move to it gets
    RING_CORRUPT (a typed result, the sender's pipe stays open), and nothing raises out of the
    engine; every other destination keeps working. A failed destination stays refused until
    an operator (or the hypervisor, once its receiver drained what was valid) repairs its words
    and calls `clear_corrupt`, or restarts the adapter: `recover` checks the words again.
    """

    def __init__(self, memory: memoryview, layout: SegmentLayout, locks: Mapping[int, Lock],
                 bells: Mapping[int, Bell], lock_timeout: float,
                 recalls: Mapping[int, Bell] | None = None):
        self.layout = layout
        self.by_id = layout.by_id()
        self.table = TranslationTable(layout.partitions)
        self.mem = memory
        self.words = receive_area.words(memory)
        self.rings = {p.network_id: receive_area.RingWords.of(p) for p in layout.partitions}
        self.seq_words = receive_area.seq_words(layout)
        self.locks = dict(locks)
        self.bells = dict(bells)
        self.recalls = dict(recalls or {})  # per partition: wakes its driver to give a lease back
        self.lock_timeout = lock_timeout
        self.book = LockBook()
        for network_id in self.by_id:  # every lock is in the book (and in stats) from the start
            self.book.record(network_id)
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        # per partition: bytes it moved out / received, and the errors of its requests by kind
        self.bytes_out: Counter[int] = Counter()
        self.bytes_in: Counter[int] = Counter()
        self.sender_errors: dict[int, Counter[str]] = {}
        self._parked: dict[int, Work] = {}
        self._recovered_holders: set[int] = set()
        self.corrupt: dict[int, str] = {}  # destination -> why its words cannot be trusted

    # -- partitions coming and going (recover, at start: adapter/grants.py) ------------
    def attach(self, network_id: int) -> None:
        """`network_id` is up (again): a destination, and may submit requests."""
        self._parked.pop(network_id, None)
        self.table.set_state(network_id, PartitionState.ACTIVE)

    def detach(self, network_id: int) -> None:
        """`network_id` died or broke the protocol: its parked request is dropped, it is no
        destination any more, and every lock granted to it comes back (Invariant 5)."""
        self.counters["connections_closed"] += 1
        self._parked.pop(network_id, None)
        if self.table.entry(network_id).state is not PartitionState.GONE:
            self.table.set_state(network_id, PartitionState.DEAD)
        for dst in self.book.granted_to(network_id):
            self._take_back(dst)
        self._recall(network_id, None)  # a lease on it: its holder must learn it is down

    def set_remote_state(self, network_id: int, state: PartitionState) -> None:
        """A partition living on another host (its proxy's connection here stays up) is
        active, down (DestinationDown: its host restarts it, or stopped answering) or gone,
        as that host's fabric says (cluster/fabric.py)."""
        if state is PartitionState.ACTIVE:
            self.attach(network_id)
        else:
            self.table.set_state(network_id, state)
            self._recall(network_id, None)

    def retire(self, network_id: int) -> None:
        """The hypervisor will not restart `network_id`: moves to it fail with the
        non-retryable DestinationGone instead of DestinationDown (senders stop retrying). A
        later `attach` (a restart after all) makes it a destination again."""
        self.table.set_state(network_id, PartitionState.GONE)
        self._recall(network_id, None)  # a lease's holder learns it at its next LEASE

    # -- destinations refused as corrupt -----------------------------------------------
    def _fail(self, dst: int, exc: RingCorrupt) -> RingCorrupt:
        """A word of `dst` is impossible: refuse it (RING_CORRUPT) until clear_corrupt."""
        if dst not in self.corrupt:
            self.corrupt[dst] = str(exc)
            self.counters["destinations_corrupt"] += 1
        return exc

    def clear_corrupt(self, dst: int) -> None:
        """The operator (or the hypervisor) repaired `dst`'s words: serve it again. The words
        are checked again on the next move, as always."""
        self.corrupt.pop(dst, None)

    # -- requests ----------------------------------------------------------------------
    def has_parked(self) -> bool:
        return bool(self._parked)

    def is_parked(self, network_id: int) -> bool:
        return network_id in self._parked

    def submit(self, network_id: int, request: Request, now: float) -> bytes | None:
        """Serve one request of `network_id`: validate it once, then move or grant. Returns the
        reply frame, or None if a destination lock is busy and the request is parked (its reply
        comes from retry_parked). A partition has at most one request here at a time."""
        op, moves, me = request.op, request.moves, network_id
        if me in self._parked:
            raise EngineError(f"network ID {me} submitted request {request.request_id} while "
                              f"request {self._parked[me].request.request_id} is parked")
        if op not in SERVED_OPS or (op == LEASE and len(moves) != 1):
            self._count_error(me, "malformed")
            return malformed_reply(op, request.request_id)
        self.counters["requests"] += 1
        self._take_back_recovered(me)
        work = Work(request, [None] * len(moves), [], now + self.lock_timeout)
        translate, checked, budget = self.table.translate, work.checked, MAX_RUN_RECORDS
        corrupt = self.corrupt
        for i, move in enumerate(moves):
            try:
                if move.src_id != me:
                    self._count_error(me, "source_mismatch")
                    work.results[i] = Result(Status.SOURCE_MISMATCH, me)
                    continue
                t = translate(me, move.dst_id, move.offset, move.count)
                if corrupt and move.dst_id in corrupt:
                    raise RingCorrupt(corrupt[move.dst_id])
                if op in RUN_OPS:
                    work.runs[i] = self._run_shape(t, budget)
                    budget -= work.runs[i][0]
                checked.append((i, t))
            except XpmoveError as exc:
                work.results[i] = self._failure(exc, move.src_id, move.dst_id, me)
        frame = self._attempt(me, work, now, first=True)
        if frame is None:
            self._parked[me] = work
        return frame

    def retry_parked(self, now: float) -> list[tuple[int, bytes]]:
        """Retry the locks of parked requests: (network ID, reply) for each that got its locks
        or reached its deadline. Past the deadline the moves still waiting fail with
        LOCK_TIMEOUT (moves that already failed their checks keep their own error)."""
        replies: list[tuple[int, bytes]] = []
        for network_id, work in list(self._parked.items()):
            frame = self._attempt(network_id, work, now, first=False)
            if frame is None and now >= work.deadline:
                ms = int(self.lock_timeout * 1000)
                waiting = [i for i, r in enumerate(work.results) if r is None]
                self._count_error(network_id, "lock_timeout", len(waiting))
                for i in waiting:
                    work.results[i] = Result(Status.LOCK_TIMEOUT, ms)
                frame = encode_reply(work.request.op, work.request.request_id, OK,
                                     work.results)  # type: ignore[arg-type]  # all filled
            if frame is not None:
                del self._parked[network_id]
                replies.append((network_id, frame))
        return replies

    def _attempt(self, me: int, work: Work, now: float, first: bool) -> bytes | None:
        """Take every destination lock of `work` (all or none, in order) and execute it; the
        reply, or None if a lock is busy (a wait is counted on the first attempt only)."""
        taken: list[int] = []
        checked = work.checked
        dsts = ((checked[0][1].dst.network_id,) if len(checked) == 1
                else sorted({t.dst.network_id for _, t in checked}))
        if work.request.op == LEASE and dsts:
            if self._holds_lease(me, dsts[0]):
                return self._renew_lease(me, work, now)
            if self._waited_for(me, dsts[0]):
                return None
        for dst in dsts:
            if not self._try_lock(dst):
                for d in taken:
                    self._unlock(d)
                self._recall(dst, now)
                if first:
                    self.book.record(dst).waits += 1
                    self.counters["lock_waits"] += 1
                return None
            taken.append(dst)
        try:
            self._execute(me, work.request.op, checked, work.results, work.runs, now)
        except Exception:
            for dst in taken:  # a bug, not a partition's fault: never leave a lock behind
                if self.book.state(dst) is HELD:
                    self._settle(dst)
                    self._unlock(dst)
            raise
        # every result is filled now: a failed check's, or _execute's
        return encode_reply(work.request.op, work.request.request_id, OK,
                            work.results)  # type: ignore[arg-type]

    def _count_error(self, sender: int, kind: str, n: int = 1) -> None:
        self.errors[kind] += n
        counter = self.sender_errors.get(sender)
        if counter is None:
            counter = self.sender_errors[sender] = Counter()
        counter[kind] += n

    def _failure(self, exc: XpmoveError, src_id: int, dst_id: int, sender: int) -> Result:
        """The wire form of a failed check (counted for `sender`, the partition whose request
        it was): status plus the limit that explains it."""
        self._count_error(sender, exc.status.name.lower())
        detail = 0
        if exc.status is Status.OUT_OF_BOUNDS and src_id in self.table:
            detail = self.table.entry(src_id).layout.size
        elif exc.status is Status.TOO_LARGE and dst_id in self.table:
            detail = max_payload(self.table.entry(dst_id).layout.receive_size)
        return Result(exc.status, detail)

    def _run_shape(self, t: Translation, budget: int) -> tuple[int, int]:
        """(packets, packet length) of a run, from its descriptor in sender memory (untrusted:
        read once, checked, and written again by us in the ring). Nothing is read before the
        run is known to be big enough to hold a descriptor."""
        if t.count < MIN_RUN:
            check_run(t.count, 0, 0)  # raises BadCount naming the size
        packets, length = RUN_DESCRIPTOR.unpack_from(self.mem, t.src_address)
        check_run(t.count, packets, length, budget)
        return packets, length

    # -- statistics --------------------------------------------------------------------
    def stats(self, now: float | None = None) -> dict:
        """Counters, errors, each lock's state and how often a request found it busy, the
        destinations refused as corrupt with why, and (given the clock `now`) every Fig 12
        grant still held: its holder and age, so the hypervisor can end one held too long (the
        shape the hypervisor's `stats` control message returns)."""
        self.settle_finished_grants()
        return {
            "grants": {} if now is None else self.held_grants(now),
            "counters": dict(self.counters),
            "errors": dict(self.errors),
            "partitions": {str(nid): {"bytes_out": self.bytes_out[nid],
                                      "bytes_in": self.bytes_in[nid],
                                      "errors": dict(self.sender_errors.get(nid, {}))}
                           for nid in self.by_id},
            "locks": {str(dst): rec.state.value for dst, rec in self.book.records.items()},
            "lock_waits": {str(dst): rec.waits for dst, rec in self.book.records.items()},
            "corrupt": {str(dst): why for dst, why in self.corrupt.items()},
        }
