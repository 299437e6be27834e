"""The integration tests' partition program: the tests' hands inside a real partition.

Loaded with `program = "tests.integration.probe:main"`. Every command a test sends with
`Machine.call(network_id, {"cmd": ...})` runs here, in a real partition process, over real
pipes: the public `Port` for what a program may do, and, for what only a hostile or broken
partition would do (raw bytes on the adapter's pipe, a grant never finished), the driver's
pipes and memory directly. Commands the probe does not know go to the built-in workload
(traffic, stats, ...), so one machine can do both.

Byte strings travel as hex in the JSON commands.

Its commands for loans and leases are the part `ProbeLoans` (probe_loans.py), those for
queued per-packet sends the part `ProbeCork` (probe_cork.py); `main` here is the one
entry point that configs name.
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
from partitions.lease import Lease
from partitions.loan import Loan
from partitions.port import Port
from scripts.workload.program import Workload
from tests.integration.probe_cork import ProbeCork
from tests.integration.probe_loans import ProbeLoans


class Probe(ProbeLoans, ProbeCork):
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


def main(port: Port) -> None:
    probe = Probe(port)
    port.on_command(probe.dispatch)
    try:
        while not (port.stop.is_set() or probe.returning.is_set()):
            port.stop.wait(0.05)
    finally:
        probe.workload.close()
