"""The integration tests' partition program: the tests' hands inside a real partition.

Loaded with `program = "tests.integration.probe:main"`. Every command a test sends with
`Machine.call(network_id, {"cmd": ...})` runs here, in a real partition process, over real
pipes: the public `Port` for what a program may do, and, for what only a hostile or broken
partition would do (raw bytes on the adapter's pipe, a grant never finished), the driver's
pipes and memory directly. Commands the probe does not know go to the built-in workload
(traffic, stats, ...), so one machine can do both.

Byte strings travel as hex in the JSON commands.
"""

from __future__ import annotations

import os
import resource
import select
import threading
import time
import zlib

from adapter.errors import XpmoveError
from adapter.protocol import (
    REPLY_HEADER,
    RESULT,
    Flow,
    Move,
    decode_reply_header,
    decode_results,
    encode_request,
)
from adapter.ring import RUN_DESCRIPTOR, align
from partitions import requesting as requesting_module
from partitions.cork import QueuedSendFailed, QueueFull
from partitions.lease import Lease
from partitions.loan import Loan, LoanRun
from partitions.port import Port
from scripts.workload.program import Workload


class Probe:
    def __init__(self, port: Port):
        self.port = port
        self.view = port.memory
        self.driver = port._driver  # the trusted code, reached only by this test program
        self.workload = Workload(port)
        self.loan: Loan  # the loan `loan` was told to hold
        self.leases: dict[int, Lease] = {}  # by destination: what `lease` took
        self.returning = threading.Event()  # set: the program returns (as a user's would)
        self.cork_result: dict | None = None  # of the last cork_send, once it is done

    def dispatch(self, msg: dict) -> dict:
        handler = getattr(self, f"cmd_{msg.get('cmd')}", None)
        if handler is None:
            return self.workload.dispatch(msg)
        return handler(msg)

    # -- own memory ------------------------------------------------------------------------
    def cmd_write(self, msg: dict) -> dict:
        self.view.write(int(msg["offset"]), bytes.fromhex(msg["hex"]))
        return {"ok": True}

    def cmd_read(self, msg: dict) -> dict:
        return {"ok": True, "hex": self.view.read(int(msg["offset"]), int(msg["count"])).hex()}

    def cmd_checksum(self, msg: dict) -> dict:
        return {"ok": True, "crc32": zlib.crc32(self.view.buffer(0, self.view.size))}

    def cmd_mvcl(self, msg: dict) -> dict:
        self.view.mvcl(int(msg["destination"]), int(msg["source"]), int(msg["count"]))
        return {"ok": True}

    # -- the public Port --------------------------------------------------------------------
    def cmd_send(self, msg: dict) -> dict:
        """One move of the bytes at `offset`; one attempt unless `timeout` is given. With
        `thread`, sent from a fresh thread of this partition (joined), not the command thread."""
        if msg.get("thread"):
            outcome: list = []

            def send() -> None:
                try:
                    outcome.append(self.cmd_send({**msg, "thread": False}))
                except XpmoveError as exc:
                    outcome.append({"ok": False, "error": type(exc).__name__,
                                    "message": str(exc)})

            worker = threading.Thread(target=send)
            worker.start()
            worker.join()
            return outcome[0]
        sent = self.port.send_from(int(msg["dst"]), int(msg["offset"]), int(msg["count"]),
                                   msg.get("flow", "fig11"), msg.get("timeout") or 0.0,
                                   sync=True)
        return {"ok": True, "seq": sent.seq}

    def cmd_send_run(self, msg: dict) -> dict:
        """Lay out `payloads` (hex, all one length) as a multiple-write run at `offset` (the
        descriptor, then each payload padded to 8) and send it in one request of `flow`.
        `descriptor` (optional: [packets, packet length]) overrides the true one, so tests can
        hand the adapter a run that lies about itself."""
        payloads = [bytes.fromhex(h) for h in msg["payloads"]]
        packets, length = msg.get("descriptor") or (len(payloads), len(payloads[0]))
        offset = int(msg["offset"])
        run = RUN_DESCRIPTOR.pack(packets & 0xFFFF_FFFF, length & 0xFFFF_FFFF)  # lies wrap
        run += b"".join(p + bytes(align(len(p)) - len(p)) for p in payloads)
        self.view.write(offset, run)
        outcome = self.driver.send_one(int(msg["dst"]), offset, len(run),
                                       Flow.parse(msg.get("flow", "fig11")), run=True)
        if isinstance(outcome, Exception):
            raise outcome
        return {"ok": True, "seq": outcome.seq, "records": outcome.records}

    def cmd_send_many(self, msg: dict) -> dict:
        """One request of several moves (the protocol's vector form)."""
        outcomes = self.driver.send_many([tuple(m) for m in msg["moves"]],
                                         Flow.parse(msg.get("flow", "fig11")))
        return {"ok": True, "outcomes": [
            {"ok": True, "seq": o.seq} if not isinstance(o, Exception) else
            {"ok": False, "error": type(o).__name__, "message": str(o),
             "retryable": bool(getattr(o, "retryable", False))} for o in outcomes]}

    def cmd_loan(self, msg: dict) -> dict:
        """`port.loan(dst, count)` (or, with `packets`, `port.loan_run(dst, packets, length)`)
        right after `queue_first` per-packet (queued) sends of 100 bytes to `dst`,
        filled with `hex` (or each packet with `payloads`), then per `end`: "commit" (the
        `with` block's normal exit), "raise" (the block raises: given back), "give_back", or
        "hold" (kept for loan_end / loan_write, the thread still holding it); `uninit` as
        the port's. The reply's `found` is what the program found in the loan, in hex."""
        dst, end, timeout = int(msg["dst"]), msg.get("end", "commit"), msg.get("timeout", 0.0)
        uninit = bool(msg.get("uninit", False))
        for i in range(int(msg.get("queue_first", 0))):  # per-packet sends queued just before
            self.port.send(dst, cork_payload(i, 100), timeout=10.0)
        if "packets" in msg:
            loan: Loan = self.port.loan_run(dst, int(msg["packets"]), int(msg["length"]),
                                            timeout, uninit=uninit)
        else:
            loan = self.port.loan(dst, int(msg["count"]), timeout, uninit=uninit)
        found = loan.view.tobytes()  # what the program finds there
        zeroed = found == bytes(loan.size)
        if isinstance(loan, LoanRun):
            for i, h in enumerate(msg.get("payloads", ())):
                loan.packet(i)[:] = bytes.fromhex(h)
        elif "hex" in msg:
            loan.view[:] = bytes.fromhex(msg["hex"])
        reply = {"ok": True, "seq": loan.seq, "size": loan.size, "zeroed": zeroed,
                 "found": found.hex()}
        if end == "hold":
            self.loan = loan
        elif end == "give_back":
            loan.give_back()
        else:
            with loan:
                if end == "raise":
                    raise ValueError("the program failed while writing its loan")
        return reply

    def cmd_loan_write(self, msg: dict) -> dict:
        """Write into the held loan: `how` "write" (Loan.write at `offset`), "index" (one byte
        at view[offset]) or "slice" (view[offset:offset + len] = bytes)."""
        data, offset, view = bytes.fromhex(msg["hex"]), int(msg["offset"]), self.loan.view
        how = msg.get("how", "write")
        if how == "write":
            self.loan.write(offset, data)
        elif how == "index":
            view[offset] = data[0]
        else:
            view[offset:offset + len(data)] = data
        return {"ok": True}

    def cmd_loan_end(self, msg: dict) -> dict:
        """Commit (or `give_back`) the held loan; with `keep_slice`, a slice of its view is
        still alive when it ends (then dropped, so the loan can end later)."""
        kept = self.loan.view[:1] if msg.get("keep_slice") else None
        try:
            if msg.get("give_back"):
                self.loan.give_back()
                return {"ok": True}
            sent = self.loan.commit()
        finally:
            del kept
        return {"ok": True, "seq": sent.seq, "records": sent.records}
    # -- leases (partitions/lease.py) ---------------------------------------------------------
    def cmd_lease(self, msg: dict) -> dict:
        """`port.lease(dst, timeout)`, kept for lease_send / lease_close."""
        dst = int(msg["dst"])
        self.leases[dst] = self.port.lease(dst, msg.get("timeout", 10.0))
        return {"ok": True, "held": self.leases[dst].held}

    def cmd_lease_send(self, msg: dict) -> dict:
        """Send each of `payloads` (hex), then `sizes` packets of zeros, through the lease on
        `dst`, `timeout` each: their sequence numbers, and whether the lease is still held
        after the last."""
        lease = self.leases[int(msg["dst"])]
        packets = ([bytes.fromhex(h) for h in msg.get("payloads", ())]
                   + [bytes(int(n)) for n in msg.get("sizes", ())])
        seqs = [lease.send(p, msg.get("timeout", 10.0)).seq for p in packets]
        return {"ok": True, "seqs": seqs, "held": lease.held}

    def cmd_lease_loan(self, msg: dict) -> dict:
        """Under the lease on `dst`: `lease.loan_run(len(payloads), length)` (or with one
        payload and no `length`, `lease.loan(len)`), filled with `payloads` (hex), then per
        `end`: "commit", "give_back" or "hold" (kept for lease_loan_end). Its seq and size."""
        lease = self.leases[int(msg["dst"])]
        payloads = [bytes.fromhex(h) for h in msg["payloads"]]
        timeout = msg.get("timeout", 10.0)
        if "length" in msg:
            loan: Loan = lease.loan_run(len(payloads), int(msg["length"]), timeout)
            assert isinstance(loan, LoanRun)
            for i, p in enumerate(payloads):
                loan.packet(i)[:] = p
        else:
            loan = lease.loan(len(payloads[0]), timeout)
            loan.view[:] = payloads[0]
        reply = {"ok": True, "seq": loan.seq, "size": loan.size}
        if msg.get("end", "commit") == "hold":
            self.loan = loan
        elif msg.get("end", "commit") == "commit":
            loan.commit()
        else:
            loan.give_back()
        return reply

    def cmd_lease_loan_end(self, msg: dict) -> dict:
        self.loan.commit() if msg.get("end", "commit") == "commit" else self.loan.give_back()
        return {"ok": True, "held": self.leases[int(msg["dst"])].held}

    def cmd_stall_keeper(self, msg: dict) -> dict:
        """A driver that no longer answers recalls (a stuck holder): its keeper finds nothing
        to give back from now on."""
        self.driver.answer_recalls = lambda: (0, 0)
        return {"ok": True}

    def cmd_lease_close(self, msg: dict) -> dict:
        self.leases[int(msg["dst"])].close()
        return {"ok": True}

    # -- per-packet sends, queued (partitions/cork.py) ---------------------------------------
    def cmd_cork_send(self, msg: dict) -> dict:
        """`count` per-packet `port.send` calls (queued), packet i to `dsts[i % len]` with
        `lengths[i % len]` bytes by `flows[i % len]`; each payload starts with i (u32) then
        bytes (i + j) % 251. `background`: in a thread (the reply comes at once; `cork_state`
        tells how far it got) and then the program returns if `then_return`. Reports which i
        were queued (their submission numbers) and what the sends raised."""
        if msg.get("background"):
            threading.Thread(target=self._cork_send, args=(msg,), daemon=True).start()
            return {"ok": True}
        return {"ok": True, **self._cork_send(msg)}

    def _cork_send(self, msg: dict) -> dict:
        dsts, lengths = msg["dsts"], msg["lengths"]
        flows = msg.get("flows", ["fig11"])
        queued, raised = [], []
        for i in range(int(msg["count"])):
            if self.port.stop.is_set():  # as a program should: stop sending
                break
            n = lengths[i % len(lengths)]
            try:
                self.port.send(dsts[i % len(dsts)], cork_payload(i, n), flows[i % len(flows)],
                               msg.get("timeout"))
                queued.append([i, self.port._cork.book.submitted])
            except QueuedSendFailed as exc:
                raised.append(failures_json(exc))
            except QueueFull as exc:  # the rest would not fit either
                raised.append({"error": type(exc).__name__, "message": str(exc)})
                break
            except XpmoveError as exc:
                raised.append({"error": type(exc).__name__, "message": str(exc)})
        if msg.get("then_return"):
            self.returning.set()
        self.cork_result = {"queued": queued, "raised": raised}
        return self.cork_result

    def cmd_cork_state(self, msg: dict) -> dict:
        book = self.port._cork.book
        return {"ok": True, "submitted": book.submitted, "queued": book.queued,
                "waiting": self.port._cork._waiters,  # sends waiting for room, flushes
                "result": self.cork_result,
                "requests": self.port._cork.requests,
                "last_seq": {str(k): v for k, v in self.port._cork._last_seq.items()}}

    def cmd_lone_sends(self, msg: dict) -> dict:
        """`count` per-packet (queued) `port.send`s of `length` bytes to `dst` by `flow`, each
        from an idle port (flushed before the next); reports which thread wrote each adapter
        request (the driver's encode_request, watched for the duration) and this thread's
        name. With `thread`, sent from a fresh thread of this partition (joined)."""
        if msg.get("thread"):
            out: list[dict] = []
            sender = threading.Thread(target=lambda: out.append(self.cmd_lone_sends(
                {**msg, "thread": False})), name="probe-lone-sender")
            sender.start()
            sender.join(float(msg.get("join", 30.0)))
            return out[0] if out else {"ok": False, "error": "the sending thread hung"}
        writers: list[str] = []
        encode = requesting_module.encode_request

        def watched(*args, **kwargs):
            writers.append(threading.current_thread().name)
            return encode(*args, **kwargs)

        requesting_module.encode_request = watched
        try:
            for i in range(int(msg["count"])):
                self.port.send(int(msg["dst"]), cork_payload(i, int(msg["length"])),
                               msg.get("flow", "fig11"), timeout=10.0)
                if not self.port.flush(10.0):
                    return {"ok": False, "error": f"send {i} not flushed in 10 s"}
        finally:
            requesting_module.encode_request = encode
        return {"ok": True, "writers": writers, "me": threading.current_thread().name}

    def cmd_flush(self, msg: dict) -> dict:
        try:
            done = self.port.flush(msg.get("timeout"))
        except QueuedSendFailed as exc:
            return {"ok": True, "done": False, "failed": failures_json(exc)}
        return {"ok": True, "done": done, "failed": None}

    def cmd_receive_all(self, msg: dict) -> dict:
        """Every packet that arrives until `count` did or `timeout` passes: source, seq,
        length and crc32 of each."""
        got: list = []
        deadline = time.monotonic() + float(msg.get("timeout", 10.0))
        while len(got) < int(msg["count"]) and time.monotonic() < deadline:
            for p in self.port.receive_many(timeout=0.05):
                got.append([p.source_id, p.seq, len(p.payload), zlib.crc32(p.payload)])
        return {"ok": True, "packets": got}

    def cmd_receive(self, msg: dict) -> dict:
        packet = self.port.receive(float(msg.get("timeout", 0.0)))
        if packet is None:
            return {"ok": True, "packet": None}
        return {"ok": True, "packet": {"source_id": packet.source_id, "seq": packet.seq,
                                       "hex": packet.payload.hex()}}

    def cmd_stats(self, msg: dict) -> dict:
        return {**self.workload.cmd_stats(msg),
                # packets this incarnation found already handed over by a killed one, and so
                # did not hand over again (the exactly-once rule of partitions/receiver.py)
                "redelivered": self.port._receiver.redelivered}

    # -- what only a broken or hostile partition does ---------------------------------------
    def cmd_peek(self, msg: dict) -> dict:
        """Read `count` bytes at segment address `address` through the driver's mapping of the
        segment: what a program digging into its driver's objects reaches. A page the partition
        does not map (partitions/mapping.py) ends the process with SIGSEGV (no core file)."""
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        address, count = int(msg["address"]), int(msg["count"])
        return {"ok": True, "hex": bytes(self.driver.physical[address:address + count]).hex()}

    def cmd_raw(self, msg: dict) -> dict:
        """Write `hex` to the adapter's request pipe AS IS (no driver, no framing) while reading
        up to `replies` whole reply frames (-1: until the adapter closes the pipe), until done
        or `timeout` s pass. Returns bytes written, reply bytes, and `closed` if the adapter
        closed a pipe. The driver's stream is then the test's problem."""
        data, want = bytes.fromhex(msg.get("hex", "")), int(msg.get("replies", 0))
        deadline = time.monotonic() + float(msg.get("timeout", 5.0))
        written, got, start, frames, epipe, eof = 0, bytearray(), 0, 0, False, False
        req, rep = self.driver.request_fd, self.driver.reply_fd
        while True:
            need = REPLY_HEADER.size
            if len(got) - start >= need:
                need += REPLY_HEADER.unpack_from(got, start)[-1] * RESULT.size
            if len(got) - start >= need:
                start, frames = start + need, frames + 1
                continue
            reading = not eof and (want < 0 or frames < want)
            writing = not epipe and written < len(data)
            if not (reading or writing):
                break
            left = max(0.0, deadline - time.monotonic())
            r, w, _ = select.select([rep] if reading else [], [req] if writing else [], [], left)
            if not (r or w):
                break  # out of time: back-pressure, or no (more) reply
            if w:
                os.set_blocking(req, False)
                try:
                    written += os.write(req, data[written:])
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    epipe = True
                finally:
                    os.set_blocking(req, True)
            if r:
                chunk = os.read(rep, need - (len(got) - start))
                eof = not chunk
                got += chunk
        return {"ok": True, "written": written, "hex": bytes(got).hex(), "frames": frames,
                "closed": epipe or eof}

    def cmd_hold_grant(self, msg: dict) -> dict:
        """Take a Fig 12 grant, copy half the bytes, never commit or free the lock: the state a
        driver killed in the middle of its move leaves behind. With `packets`, the grant is for
        a multiple-write run of that many `count`-byte packets."""
        dst, count, packets = int(msg["dst"]), int(msg["count"]), msg.get("packets")
        flow = Flow.FIG12
        op = flow.op
        if packets is not None:
            run = RUN_DESCRIPTOR.pack(int(packets), count) + bytes(int(packets) * align(count))
            self.view.write(0, run)
            count, op = len(run), flow.run_op
        os.write(self.driver.request_fd,
                 encode_request(op, 0xFFFF, [Move(self.port.network_id, dst, 0, count)]))
        reply = b""
        while len(reply) < REPLY_HEADER.size + RESULT.size:
            reply += os.read(self.driver.reply_fd, 4096)
        _, _, status, n = decode_reply_header(reply[:REPLY_HEADER.size])
        (result,) = decode_results(reply, n, REPLY_HEADER.size)
        if status or result.status:
            return {"ok": False, "error": "GrantRefused", "message": f"status {result.status}"}
        half = result.count // 2
        physical = self.driver.physical
        physical[result.dst_address:result.dst_address + half] = (
            physical[result.src_address:result.src_address + half])
        return {"ok": True, "seq": result.seq}


def cork_payload(i: int, n: int) -> bytes:
    """Packet i of `cmd_cork_send`, `n` bytes (at least 1)."""
    body = bytes((i + j) % 251 for j in range(n))
    return (i.to_bytes(4, "little") + body[4:])[:n] if n >= 4 else body


def failures_json(exc: QueuedSendFailed) -> dict:
    return {"error": type(exc).__name__, "message": str(exc),
            "failures": [{"dst": f.dst, "flow": f.flow.value, "first": f.first, "last": f.last,
                          "after_seq": f.after_seq, "error": type(f.error).__name__}
                         for f in exc.failures]}


def main(port: Port) -> None:
    probe = Probe(port)
    port.on_command(probe.dispatch)
    try:
        while not (port.stop.is_set() or probe.returning.is_set()):
            port.stop.wait(0.05)
    finally:
        probe.workload.close()
