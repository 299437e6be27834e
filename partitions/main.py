"""A partition process: maps the segment, runs its device driver and a user workload.

Started by the hypervisor with a JSON boot block; obeys JSON commands on its control channel
(see `Partition.COMMANDS`). The command set doubles as the integration tests' hands: every
driver call a test makes runs here, in a real partition process, over real pipes.
Exits when told to stop or when the hypervisor's end of the channel closes.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import queue
import signal
import socket
import sys
import threading
import zlib

import posix_ipc

from adapter.errors import XpmoveError
from adapter.ring import RUN_DESCRIPTOR, align
from hypervisor.boot import PartitionBoot
from hypervisor.control import Channel, ControlError
from hypervisor.memory import PhysicalMemory
from partitions.driver import Driver
from partitions.memory import PartitionView
from partitions.receiver import Receiver
from scripts.workload.traffic import PlanError, Traffic, TrafficPlan
from scripts.workload.transports import (
    AdapterFlow,
    AdapterRing,
    SwitchPort,
    TcpLinks,
    TcpListener,
    TransportError,
)

ADAPTER_FLOWS = ("fig11", "fig12")
TRANSPORTS = (*ADAPTER_FLOWS, "tcp", "vswitch")


def error_reply(exc: BaseException) -> dict:
    return {"ok": False, "error": type(exc).__name__, "message": str(exc),
            "retryable": bool(getattr(exc, "retryable", False))}


class Partition:
    def __init__(self, boot: PartitionBoot):
        self.network_id = boot.network_id
        self.layout = boot.layout
        self.own = self.layout.by_id()[self.network_id]
        self.memory = PhysicalMemory.attach(boot.segment)
        locks = {k: posix_ipc.Semaphore(v) for k, v in boot.locks.items()}
        bells = {k: posix_ipc.Semaphore(v) for k, v in boot.bells.items()}
        self.view = PartitionView(self.memory.view, self.own)
        self.driver = Driver(self.network_id, self.memory.view, self.layout,
                             boot.request_fd, boot.reply_fd, locks, bells)
        self.receiver = Receiver(self.memory.view, self.layout, self.network_id,
                                 bells[self.network_id])
        self.traffic = Traffic(self.network_id, self.view, self.own.receive_offset)
        # Every transport this partition can send or receive with (partitions/transports.py).
        self.ring = AdapterRing(self.receiver)
        for peer in self.layout.partitions:  # a restarted partition continues its sequences
            if peer.network_id != self.network_id:
                self.traffic.expect_after(self.ring.channel, peer.network_id,
                                          self.receiver.delivered(peer.network_id))
        self.tcp_in = TcpListener()
        self.tcp_out = TcpLinks(self.network_id)
        self.switch = SwitchPort(self.network_id)
        self.senders = {"fig11": AdapterFlow(self.driver, "fig11"),
                        "fig12": AdapterFlow(self.driver, "fig12"),
                        "tcp": self.tcp_out, "vswitch": self.switch}
        self.control = Channel(socket.socket(fileno=boot.control_fd))

    # -- commands (each returns the reply dict) -------------------------------------------
    def cmd_ping(self, msg: dict) -> dict:
        return {"ok": True, "pid": os.getpid()}

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

    # -- TEST/DIAGNOSTIC HOOK (tests/integration/test_fuzz_protocol.py) -------------------
    def cmd_raw(self, msg: dict) -> dict:
        """Write `hex` to the adapter's request pipe AS IS (no driver, no framing) while reading
        up to `replies` whole reply frames (-1: until the adapter closes the pipe), until done
        or `timeout` s pass. Returns bytes written, reply bytes, and `closed` if the adapter
        closed a pipe. Only the protocol fuzzer uses it; the driver's stream is then the
        caller's problem."""
        import select
        import time

        from adapter.protocol import REPLY_HEADER, RESULT

        data, want = bytes.fromhex(msg.get("hex", "")), int(msg.get("replies", 0))
        deadline = time.monotonic() + float(msg.get("timeout", 5.0))
        written, got, start, frames, epipe, eof = 0, bytearray(), 0, 0, False, False
        with self.driver._mutex:
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
                r, w, _ = select.select([rep] if reading else [], [req] if writing else [], [],
                                        left)
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

    def cmd_send(self, msg: dict) -> dict:
        sent = self.driver.send(int(msg["dst"]), int(msg["offset"]), int(msg["count"]),
                                msg.get("flow", "fig11"), msg.get("timeout"))
        return {"ok": True, "seq": sent.seq}

    def cmd_send_many(self, msg: dict) -> dict:
        outcomes = self.driver.send_many([tuple(m) for m in msg["moves"]],
                                         msg.get("flow", "fig11"))
        return {"ok": True, "outcomes": [
            {"ok": True, "seq": o.seq} if not isinstance(o, XpmoveError) else error_reply(o)
            for o in outcomes]}

    def cmd_send_run(self, msg: dict) -> dict:
        """Lay out `payloads` (hex, all one length) as a multiple-write run at `offset` (the
        descriptor, then each payload padded to 8) and send it in one request of `flow`
        (fig11 or fig12, default fig11). `descriptor`
        (optional: [packets, packet length]) overrides the true one, so tests can hand the
        adapter a run that lies about itself."""
        payloads = [bytes.fromhex(h) for h in msg["payloads"]]
        packets, length = msg.get("descriptor") or (len(payloads), len(payloads[0]))
        offset = int(msg["offset"])
        run = RUN_DESCRIPTOR.pack(packets & 0xFFFF_FFFF, length & 0xFFFF_FFFF)  # lies wrap
        run += b"".join(p + bytes(align(len(p)) - len(p)) for p in payloads)
        self.view.write(offset, run)
        outcome = self.driver.send_one(int(msg["dst"]), offset, len(run), msg.get("flow", "fig11"),
                                       run=True)
        if isinstance(outcome, XpmoveError):
            return error_reply(outcome)
        return {"ok": True, "seq": outcome.seq, "records": outcome.records}

    def cmd_receive(self, msg: dict) -> dict:
        packet = self.receiver.receive(float(msg.get("timeout", 0.0)))
        if packet is None:
            return {"ok": True, "packet": None}
        return {"ok": True, "packet": {"source_id": packet.source_id, "seq": packet.seq,
                                       "hex": packet.payload.hex()}}

    def cmd_traffic(self, msg: dict) -> dict:
        plan = TrafficPlan.from_message(msg, self.own.receive_offset, ADAPTER_FLOWS)
        self.traffic.start_receiving(self.ring)
        self.traffic.start_sending(plan, {f: self.senders[f] for f in plan.flows})
        return {"ok": True}

    def cmd_receive_on(self, msg: dict) -> dict:
        self.traffic.start_receiving(self.ring)
        return {"ok": True}

    # -- load generator (hypervisor/bench.py): one transport per run ----------------------
    def cmd_bench_open(self, msg: dict) -> dict:
        """Start a run: zero the counters and get ready to receive on `transport`.

        tcp: listen on a fresh loopback port (returned); vswitch: connect to the switch on
        `vswitch_port` and wait for its acknowledgement; fig11/fig12: the receive ring.
        """
        transport = msg.get("transport")
        if transport not in TRANSPORTS:
            raise PlanError(f"transport: unknown {transport!r} (known: {list(TRANSPORTS)})")
        self._close_sockets()
        self.traffic.reset()
        reply: dict = {"ok": True, "pid": os.getpid()}
        try:
            if transport in ADAPTER_FLOWS:
                self.traffic.start_receiving(self.ring)
            elif transport == "tcp":
                reply["port"] = self.tcp_in.open()
                self.traffic.start_receiving(self.tcp_in)
            else:
                self.switch.connect(int(msg["vswitch_port"]))
                self.traffic.start_receiving(self.switch)
        except (TransportError, OSError) as exc:
            self._close_sockets()
            return error_reply(exc)
        return reply

    def cmd_bench_send(self, msg: dict) -> dict:
        """Send to `peers` on `transport` (tcp: connect to `ports` first), in a thread."""
        transport = msg.get("transport")
        plan = TrafficPlan.from_message({**msg, "flows": [transport]}, self.own.receive_offset,
                                        TRANSPORTS)
        try:
            if transport == "tcp":
                self.tcp_out.connect({int(k): int(v) for k, v in msg["ports"].items()})
        except (TransportError, OSError) as exc:
            return error_reply(exc)
        self.traffic.start_sending(plan, {transport: self.senders[transport]})
        return {"ok": True, "batch_used": self.traffic.batch_used}

    def cmd_bench_count(self, msg: dict) -> dict:
        return {"ok": True, **self.traffic.counts()}

    def cmd_bench_close(self, msg: dict) -> dict:
        """End a run: stop sending, close the run's sockets, report (with latency samples)."""
        stopped = self.traffic.stop_sending()
        self._close_sockets()
        stats = self.traffic.snapshot(int(msg.get("latency_samples", 0)))
        return {"ok": True, "stopped": stopped, "stats": stats}

    def _close_sockets(self) -> None:
        self.tcp_out.close()
        for channel, endpoint in (("tcp", self.tcp_in), ("vswitch", self.switch)):
            self.traffic.stop_receiving(channel)
            endpoint.close()

    def cmd_hold_grant(self, msg: dict) -> dict:
        """Fault-test hook: take a Fig 12 grant, copy half the bytes, never commit or free the
        lock - the state a driver killed in the middle of its move leaves behind. With
        `packets`, the grant is for a multiple-write run of that many `count`-byte packets."""
        count, packets = int(msg["count"]), msg.get("packets")
        if packets is not None:
            run = RUN_DESCRIPTOR.pack(int(packets), count) + bytes(int(packets) * align(count))
            self.view.write(0, run)
            count = len(run)
        result = self.driver.grant(int(msg["dst"]), 0, count, run=packets is not None)
        half = result.count // 2
        self.memory.view[result.dst_address:result.dst_address + half] = (
            self.memory.view[result.src_address:result.src_address + half])
        return {"ok": True, "seq": result.seq}

    def cmd_reconnect(self, msg: dict) -> dict:
        """The adapter was restarted: take the fresh pipes the hypervisor passed along."""
        request_fd, reply_fd = msg["fds"]
        self.driver.reconnect(request_fd, reply_fd)
        return {"ok": True}

    def cmd_stats(self, msg: dict) -> dict:
        return {"ok": True, "stats": self.traffic.snapshot(),
                "pending_bytes": self.receiver.pending_bytes(),
                # packets this incarnation found already handed over by a killed one, and so
                # did not hand over again (the exactly-once rule of partitions/receiver.py)
                "redelivered": self.receiver.redelivered}

    def cmd_stop(self, msg: dict) -> dict:
        """Quiesce: end the workload and report. The process exits when the channel closes."""
        self.traffic.stop()
        return {"ok": True, "stats": self.traffic.snapshot()}

    def dispatch(self, msg: dict) -> dict:
        handler = getattr(self, f"cmd_{msg.get('cmd')}", None)
        if handler is None:
            return {"ok": False, "error": "UnknownCommand", "message": f"cmd {msg.get('cmd')!r}"}
        try:
            return handler(msg)
        except Exception as exc:  # a bad command is answered, never the end of the worker
            return error_reply(exc)

    def run(self) -> None:
        """Read commands; run them in order on a worker thread, except `reconnect`, which is
        handled at once: a command blocked on a dead adapter is waiting for exactly that."""
        commands: queue.Queue[dict | None] = queue.Queue()
        worker = threading.Thread(target=self._work, args=(commands,), daemon=True)
        worker.start()
        self.control.send({"event": "ready", "pid": os.getpid()})
        try:
            while True:
                msg = self.control.receive()
                if msg.get("cmd") == "reconnect":
                    self._reply(msg)
                else:
                    commands.put(msg)
        except ControlError:
            pass  # the hypervisor is gone: so are we
        finally:
            commands.put(None)
            self.driver.close()
            self.traffic.stop()
            self._close_sockets()

    def _work(self, commands: queue.Queue) -> None:
        while (msg := commands.get()) is not None:
            self._reply(msg)

    def _reply(self, msg: dict) -> None:
        try:
            self.control.send({**self.dispatch(msg), "id": msg.get("id")})
        except ControlError:
            pass


def set_affinity(cpus: tuple[int, ...] | None) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xpmove partition (started by the hypervisor)")
    parser.add_argument("--boot", required=True, help="JSON boot block from the hypervisor")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hypervisor coordinates shutdown
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 pid` dumps every thread's stack
    boot = PartitionBoot.from_json(args.boot)
    set_affinity(boot.cpus)
    Partition(boot).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
