"""The adapter process: a thin I/O shell around translation, ring and lock bookkeeping.

One single-threaded select loop serves every partition's request pipe. A request whose
destination lock is busy (granted to a Fig 12 driver) is parked, never waited on, so one busy
destination cannot stall the others; parked requests are retried each turn and fail with
LOCK_TIMEOUT at their deadline. Each partition has at most one request in flight at the adapter
(the pipe is not read while one is parked or a reply is unsent), which bounds memory whatever
a partition floods us with.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import os
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import posix_ipc

from adapter import receive_area
from adapter.errors import Status, XpmoveError
from adapter.locks import Grant, LockBook, LockState
from adapter.moves import mvxl
from adapter.protocol import (
    GRANT_OPS,
    MAX_REQUEST_SIZE,
    Op,
    ProtocolViolation,
    Request,
    RequestDecoder,
    Result,
    encode_reply,
    malformed_reply,
)
from adapter.ring import (
    KIND_PAD,
    KIND_RUN,
    MAX_RUN_RECORDS,
    MIN_RUN,
    RECORD_HEADER,
    RUN_DESCRIPTOR,
    Reservation,
    check_run,
    max_payload,
    reserve,
)
from adapter.translation import PartitionState, Translation, TranslationTable
from hypervisor.boot import AdapterBoot
from hypervisor.control import Channel
from hypervisor.memory import PhysicalMemory

PARKED_POLL_S = 0.0002  # how often parked requests retry a busy lock
READ_CHUNK = 65536
# Module aliases for the per-request path: an Enum class attribute lookup costs ~0.2 us here.
MOVE, GRANT, MOVE_RUN, GRANT_RUN = Op.MOVE, Op.GRANT, Op.MOVE_RUN, Op.GRANT_RUN
SERVED_OPS = frozenset((MOVE, GRANT, MOVE_RUN, GRANT_RUN))
RUN_OPS = frozenset((MOVE_RUN, GRANT_RUN))
OK = Status.OK
GRANTED, HELD = LockState.GRANTED, LockState.HELD


@dataclass
class Work:
    """A validated request: per-move results so far, the checked moves, its lock deadline."""

    request: Request
    results: list[Result | None]
    checked: list[tuple[int, Translation]]
    deadline: float
    runs: dict[int, tuple[int, int]] = field(default_factory=dict)  # move -> (packets, length)


@dataclass
class Connection:
    """One partition's pair of pipes, as seen by the adapter."""

    network_id: int
    request_fd: int
    reply_fd: int
    decoder: RequestDecoder = field(default_factory=RequestDecoder)
    outbox: bytearray = field(default_factory=bytearray)
    parked: Work | None = None
    open: bool = True

    def ready_for_request(self) -> bool:
        return self.open and self.parked is None and not self.outbox


class Adapter:
    def __init__(self, boot: AdapterBoot):
        self.layout = boot.layout
        self.by_id = self.layout.by_id()
        self.table = TranslationTable(self.layout.partitions)
        self.memory = PhysicalMemory.attach(boot.segment)
        self.mem = self.memory.view
        self.words = receive_area.words(self.mem)
        self.rings = {p.network_id: receive_area.RingWords.of(p) for p in self.layout.partitions}
        n, first = len(self.layout.partitions), self.layout.seq_address(0, 0) >> 3
        # seq_words[src index][dst index]: the word of the pair's last committed sequence number
        self.seq_words = [[first + s * n + d for d in range(n)] for s in range(n)]
        self.locks = {k: posix_ipc.Semaphore(v) for k, v in boot.locks.items()}
        self.bells = {k: posix_ipc.Semaphore(v) for k, v in boot.bells.items()}
        self.lock_timeout = boot.lock_timeout_s
        self.book = LockBook()
        for network_id in self.by_id:  # every lock is in the book (and in stats) from the start
            self.book.record(network_id)
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.control = Channel(socket.socket(fileno=boot.control_fd))
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.control.sock, selectors.EVENT_READ, None)
        self.connections: dict[int, Connection] = {}
        self._watched: set[int] = set()
        self._recovered_holders: set[int] = set()
        self.recover_locks()
        for c in boot.connections:
            self.attach(c.network_id, c.request_fd, c.reply_fd)
        for network_id in self.by_id:
            if network_id not in self.connections:  # dead when we started: not a destination
                self.table.set_state(network_id, PartitionState.DEAD)
                self.take_back_recovered(network_id)
        self.running = True

    def recover_locks(self) -> None:
        """Bring every destination lock to a known state from what the segment says.

        On a first start every lock is free and this changes nothing. After an adapter crash a
        lock may still be taken by the dead adapter (taken back here, its half-done commit
        settled) or granted to a driver (kept as a grant until its holder frees it or proves it
        is not moving: take_back_recovered; the grant reply may have died with the old adapter).
        """
        for dst_id, dst in self.by_id.items():
            holder = receive_area.read_holder(self.words, dst)
            if holder and holder in self.by_id:
                self.book.acquired(dst_id)
                self.book.granted(Grant(holder, dst_id, 0, time.monotonic(), recovered=True))
                self._recovered_holders.add(holder)
                continue
            try:
                self.locks[dst_id].acquire(0)
            except posix_ipc.BusyError:
                self.counters["locks_reclaimed"] += 1  # held by the adapter that died
            self.book.acquired(dst_id)
            self._settle(dst_id)
            self._unlock(dst_id)

    def take_back_recovered(self, holder: int) -> None:
        """Recovered grants of `holder` end when it proves it is not mid-move: it is not
        connected, its pipe closed, or it sent a new request (its driver sends one at a time
        and finishes a grant before asking again)."""
        if holder not in self._recovered_holders:  # the common case, on every request: O(1)
            return
        self._recovered_holders.discard(holder)
        for dst in self.book.granted_to(holder):
            grant = self.book.record(dst).grant
            if grant is not None and grant.recovered:
                self._take_back(dst)

    # -- connections -------------------------------------------------------------------
    def attach(self, network_id: int, request_fd: int, reply_fd: int) -> None:
        old = self.connections.get(network_id)
        if old is not None and old.open:
            self.close_connection(old, "replaced by a new incarnation")
        os.set_blocking(reply_fd, False)
        conn = Connection(network_id, request_fd, reply_fd)
        self.connections[network_id] = conn
        self.table.set_state(network_id, PartitionState.ACTIVE)
        self.watch(conn)

    def watch(self, conn: Connection) -> None:
        """Read requests only while ready for one; watch the reply pipe while a reply waits.

        Not reading is the back-pressure: a partition that floods us fills its own pipe.
        """
        if not conn.open:
            return
        want_read = conn.ready_for_request() and conn.decoder.buffered < MAX_REQUEST_SIZE
        want_write = bool(conn.outbox)
        watched = self._watched
        if want_read != (conn.request_fd in watched):  # the common case: nothing changes
            self._set_watch(conn.request_fd, selectors.EVENT_READ, want_read, ("request", conn))
        if want_write != (conn.reply_fd in watched):
            self._set_watch(conn.reply_fd, selectors.EVENT_WRITE, want_write, ("reply", conn))

    def _set_watch(self, fd: int, events: int, wanted: bool, data: tuple) -> None:
        registered = fd in self._watched
        if wanted and not registered:
            self.selector.register(fd, events, data)
            self._watched.add(fd)
        elif not wanted and registered:
            self.selector.unregister(fd)
            self._watched.discard(fd)

    def close_connection(self, conn: Connection, why: str) -> None:
        """The partition died or broke the protocol: free what it holds, stop serving it."""
        if not conn.open:
            return
        conn.open = False
        self.counters["connections_closed"] += 1
        for fd in (conn.request_fd, conn.reply_fd):
            if fd in self._watched:
                self.selector.unregister(fd)
                self._watched.discard(fd)
            try:
                os.close(fd)
            except OSError:
                pass
        conn.parked = None
        self.table.set_state(conn.network_id, PartitionState.DEAD)
        for dst in self.book.granted_to(conn.network_id):
            self._take_back(dst)
        if self.running:
            self._log(f"closed connection of network ID {conn.network_id}: {why}")

    # -- locks -------------------------------------------------------------------------
    def _try_lock(self, dst: int) -> bool:
        lock = self.locks[dst]
        try:
            lock.acquire(0)
        except posix_ipc.BusyError:
            return False
        if lock.value:
            self._absorb_stray_releases(dst)
        if self.book.state(dst) is GRANTED:
            self.book.settled(dst)
            self._settle(dst)
        else:
            self.book.acquired(dst)
        return True

    def _absorb_stray_releases(self, dst: int) -> None:
        """We hold the lock, so its value must be 0. Any partition can open the semaphore by
        name; an extra release would let two writers in. Take the surplus back, count it."""
        sem = self.locks[dst]
        while sem.value > 0:
            try:
                sem.acquire(0)
            except posix_ipc.BusyError:
                break
            self.errors["stray_lock_release"] += 1

    def _settle(self, dst: int) -> None:
        """A grant ended (or a restarted adapter found one): undo it if never committed."""
        if not receive_area.settle_commit(self.words, self.layout, self.by_id[dst]):
            self.counters["grants_abandoned"] += 1

    def _take_back(self, dst: int) -> None:
        """The holder of a granted lock died: the lock comes back (Invariant 5)."""
        try:
            self.locks[dst].acquire(0)
            self.book.settled(dst)  # it had freed the lock before dying
        except posix_ipc.BusyError:
            self.book.reclaimed(dst)
            self.counters["locks_reclaimed"] += 1
        self._settle(dst)
        self._unlock(dst)

    def _unlock(self, dst: int) -> None:
        self.book.released(dst)
        self.locks[dst].release()

    # -- requests ----------------------------------------------------------------------
    def handle(self, conn: Connection, request: Request, now: float) -> None:
        """Serve one request: validate it once, then move or grant, or park it on a busy lock."""
        op, moves, me = request.op, request.moves, conn.network_id
        if op not in SERVED_OPS:
            self.errors["malformed"] += 1
            self._reply(conn, malformed_reply(op, request.request_id))
            return
        self.counters["requests"] += 1
        self.take_back_recovered(me)
        work = Work(request, [None] * len(moves), [], now + self.lock_timeout)
        translate, checked, budget = self.table.translate, work.checked, MAX_RUN_RECORDS
        for i, move in enumerate(moves):
            try:
                if move.src_id != me:
                    self.errors["source_mismatch"] += 1
                    work.results[i] = Result(Status.SOURCE_MISMATCH, me)
                    continue
                t = translate(me, move.dst_id, move.offset, move.count)
                if op in RUN_OPS:
                    work.runs[i] = self._run_shape(t, budget)
                    budget -= work.runs[i][0]
                checked.append((i, t))
            except XpmoveError as exc:
                work.results[i] = self._failure(exc, move.src_id, move.dst_id)
        if not self.attempt(conn, work):
            conn.parked = work

    def attempt(self, conn: Connection, work: Work) -> bool:
        """Take every destination lock of `work` (all or none, in order) and execute it."""
        taken: list[int] = []
        checked = work.checked
        dsts = ((checked[0][1].dst.network_id,) if len(checked) == 1
                else sorted({t.dst.network_id for _, t in checked}))
        for dst in dsts:
            if not self._try_lock(dst):
                for d in taken:
                    self._unlock(d)
                if conn.parked is None:  # count a wait once, not once per retry
                    self.book.record(dst).waits += 1
                    self.counters["lock_waits"] += 1
                return False
            taken.append(dst)
        try:
            self._execute(conn, work.request.op, work.checked, work.results, work.runs)
        except Exception:
            for dst in taken:  # a bug, not a partition's fault: never leave a lock behind
                if self.book.state(dst) is HELD:
                    self._settle(dst)
                    self._unlock(dst)
            raise
        self._reply(conn, encode_reply(work.request.op, work.request.request_id, OK, work.results))
        return True

    def _failure(self, exc: XpmoveError, src_id: int, dst_id: int = 0) -> Result:
        """The wire form of a failed check: status plus the limit that explains it."""
        self.errors[exc.status.name.lower()] += 1
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

    def _execute(self, conn: Connection, op: int, checked: list[tuple[int, Translation]],
                 results: list[Result | None], runs: dict[int, tuple[int, int]]) -> None:
        """All destination locks are held: reserve, record the commit, move (Fig 11) or grant.

        Per destination the order is what makes a crash at any point recoverable: pending
        commit first, then sequence numbers, headers and payload, and `head` last.
        """
        if len(checked) == 1:  # every lone move and every run: nothing to group
            by_dst = {checked[0][1].dst.network_id: checked}
        else:
            by_dst = {}
            for i, t in checked:
                by_dst.setdefault(t.dst.network_id, []).append((i, t))
        words, mem, counters = self.words, self.mem, self.counters
        for dst_id, moves in by_dst.items():
            dst, ring = self.by_id[dst_id], self.rings[dst_id]
            head, tail = words[ring.head], words[ring.tail]
            placed: list[tuple[int, Translation, Reservation]] = []
            for i, t in moves:
                try:  # a run is one record too: contiguous, never wrapped
                    r = reserve(head, tail, dst.receive_size, t.count)
                except XpmoveError as exc:
                    results[i] = self._failure(exc, t.src.network_id, dst_id)
                    if exc.status is Status.DESTINATION_FULL:
                        results[i] = Result(Status.DESTINATION_FULL,
                                            dst.receive_size - (head - tail))
                    continue
                placed.append((i, t, r))
                head = r.new_head
            if not placed:
                self._unlock(dst_id)
                continue
            src = placed[0][1].src
            records = (sum(runs[i][0] if i in runs else 1 for i, _, _ in placed) if runs
                       else len(placed))
            seq_word = self.seq_words[src.index][dst.index]
            seq = words[seq_word] + 1
            receive_area.begin_commit(words, ring, head, src.index, seq)
            words[seq_word] = seq + records - 1
            moved = 0
            for i, t, r in placed:
                if i in runs:
                    packets, length = runs[i]
                    payload = self._place_run(dst, r, t, src.network_id, seq, packets, length,
                                              move=op == MOVE_RUN)
                    if op == MOVE_RUN:
                        results[i] = Result(OK, packets, seq, t.src_address, payload, t.count,
                                            head)
                    else:  # the driver moves the packets; the descriptor is ours
                        skip = RUN_DESCRIPTOR.size
                        results[i] = Result(OK, packets, seq, t.src_address + skip,
                                            payload + skip, t.count - skip, head)
                    seq += packets
                else:
                    payload = receive_area.write_record_header(mem, dst, r, src.network_id, seq)
                    if op == MOVE:
                        mvxl(mem, payload, t.src_address, t.count)
                    results[i] = Result(OK, 0, seq, t.src_address, payload, t.count, head)
                    seq += 1
                moved += t.count
            counters["moves"] += records
            counters["bytes"] += moved
            if op not in GRANT_OPS:
                words[ring.head] = head  # publish: the commit (receive_area.publish_head)
                self._unlock(dst_id)
                receive_area.ring_doorbell(words, ring, self.bells[dst_id])
            else:
                receive_area.set_holder(self.words, dst, conn.network_id)
                self.book.granted(Grant(conn.network_id, dst_id, head, time.monotonic()))
                self.counters["grants"] += 1

    def _place_run(self, dst, r: Reservation, t: Translation, src_id: int, seq: int,
                   packets: int, length: int, move: bool) -> int:
        """Multiple-write: ONE record for the whole run, and with `move` (Fig 11) ONE MVXL;
        then the descriptor is written from the values checked at request time, so whatever
        the sender changed since, the receiver finds exactly what was validated. Returns the
        record's payload address."""
        header = dst.receive_base + r.position
        if r.pad_position is not None:
            RECORD_HEADER.pack_into(self.mem, dst.receive_base + r.pad_position, KIND_PAD, 0, 0, 0)
        RECORD_HEADER.pack_into(self.mem, header, KIND_RUN, src_id, seq, t.count)
        payload = header + RECORD_HEADER.size
        if move:
            mvxl(self.mem, payload, t.src_address, t.count)
        RUN_DESCRIPTOR.pack_into(self.mem, payload, packets, length)
        return payload

    def _reply(self, conn: Connection, frame: bytes) -> None:
        conn.outbox += frame
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        while conn.outbox and conn.open:
            try:
                n = os.write(conn.reply_fd, conn.outbox)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EBADF):
                    self.close_connection(conn, "reply pipe closed")
                    return
                raise
            del conn.outbox[:n]

    # -- loop --------------------------------------------------------------------------
    def serve(self, conn: Connection, now: float) -> None:
        """Process as many buffered requests of `conn` as it may have in flight."""
        while conn.ready_for_request():
            try:
                request = conn.decoder.next_request()
            except ProtocolViolation as exc:
                self.errors["malformed"] += 1
                self.counters["frames_rejected"] += 1
                self._reply(conn, malformed_reply(0, 0))
                self.close_connection(conn, str(exc))
                return
            if request is None:
                return
            try:
                self.handle(conn, request, now)
            except Exception as exc:  # the adapter outlives any one request, whatever it was
                self.errors["internal"] += 1
                self._log(f"request {request.request_id} of network ID {conn.network_id} "
                          f"failed: {type(exc).__name__}: {exc}")
                self._reply(conn, malformed_reply(request.op, request.request_id))
                self.close_connection(conn, "internal error")
                return

    def retry_parked(self, now: float) -> None:
        """Retry the locks of parked requests; past the deadline, answer LOCK_TIMEOUT for the
        moves still waiting (moves that already failed their checks keep their own error)."""
        for conn in list(self.connections.values()):
            work = conn.parked
            if work is None or not conn.open:
                continue
            if self.attempt(conn, work):
                conn.parked = None
                self.serve(conn, now)
            elif now >= work.deadline:
                conn.parked = None
                ms = int(self.lock_timeout * 1000)
                waiting = [i for i, r in enumerate(work.results) if r is None]
                self.errors["lock_timeout"] += len(waiting)
                for i in waiting:
                    work.results[i] = Result(Status.LOCK_TIMEOUT, ms)
                self._reply(conn, encode_reply(work.request.op, work.request.request_id,
                                               Status.OK, work.results))
                self.serve(conn, now)
            self.watch(conn)

    def read_from(self, conn: Connection, now: float) -> None:
        try:
            data = os.read(conn.request_fd, READ_CHUNK)
        except OSError as exc:
            self.close_connection(conn, f"read failed: {exc}")
            return
        if not data:
            self.close_connection(conn, "request pipe EOF (partition gone)")
            return
        conn.decoder.feed(data)
        self.serve(conn, now)

    def on_control(self, message: dict) -> None:
        cmd = message.get("cmd")
        if cmd == "stats":
            self.control.send({"id": message.get("id"), "stats": self.stats()})
        elif cmd == "stop":
            self.running = False
        elif cmd == "attach":  # a (re)started partition's fresh pipes
            request_fd, reply_fd = message["fds"]
            self.attach(int(message["network_id"]), request_fd, reply_fd)
            self.control.send({"id": message.get("id"), "ok": True})

    def settle_finished_grants(self) -> None:
        """Settle every grant whose holder already freed the lock, so states are current."""
        for dst, rec in list(self.book.records.items()):
            if rec.state is LockState.GRANTED and self._try_lock(dst):
                self._unlock(dst)

    def stats(self) -> dict:
        self.settle_finished_grants()
        return {
            "counters": dict(self.counters),
            "errors": dict(self.errors),
            "locks": {str(dst): rec.state.value for dst, rec in self.book.records.items()},
            "lock_waits": {str(dst): rec.waits for dst, rec in self.book.records.items()},
        }

    def run(self) -> None:
        self.control.send({"event": "ready", "pid": os.getpid()})
        while self.running:
            parked = any(c.parked for c in self.connections.values())
            for key, _ in self.selector.select(PARKED_POLL_S if parked else None):
                now = time.monotonic()
                if key.data is None:
                    self.on_control_readable()
                    continue
                kind, conn = key.data
                if kind == "request":
                    self.read_from(conn, now)
                else:
                    self._flush(conn)
                    self.serve(conn, now)
                self.watch(conn)
            if parked:
                self.retry_parked(time.monotonic())
        self.shutdown()

    def on_control_readable(self) -> None:
        if not self.control.feed_available():
            self.running = False  # the hypervisor is gone: so are we
            return
        while (message := self.control.pending()) is not None:
            self.on_control(message)

    def shutdown(self) -> None:
        self.running = False
        for conn in list(self.connections.values()):
            self.close_connection(conn, "adapter stopping")
        self.memory.close()

    @staticmethod
    def _log(text: str) -> None:
        print(f"adapter: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xpmove adapter (started by the hypervisor)")
    parser.add_argument("--boot", required=True, help="JSON boot block from the hypervisor")
    args = parser.parse_args(argv)
    adapter = Adapter(AdapterBoot.from_json(args.boot))
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 pid` dumps every thread's stack
    try:
        adapter.run()
    except KeyboardInterrupt:
        adapter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
