"""The probe's per-packet sends through the port's submission queue (partitions/cork.py):
queued sends by the thousand, the queue's state, lone sends from an idle port, flush; and
`cork_payload`, the packet they send, which the tests check byte for byte.

`ProbeCork` is a part of `Probe` (probe.py), whose `dispatch` finds its `cmd_*` methods;
tests/integration/test_cork.py drives it.
"""

from __future__ import annotations

import threading

from adapter.errors import XpmoveError
from partitions import requesting as requesting_module
from partitions.cork import QueuedSendFailed, QueueFull
from partitions.port import Port


class ProbeCork:
    """Probe's commands for queued per-packet sends; the attributes below come from Probe."""

    port: Port
    returning: threading.Event
    cork_result: dict | None

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


def cork_payload(i: int, n: int) -> bytes:
    """Packet i of `cmd_cork_send`, `n` bytes (at least 1)."""
    body = bytes((i + j) % 251 for j in range(n))
    return (i.to_bytes(4, "little") + body[4:])[:n] if n >= 4 else body


def failures_json(exc: QueuedSendFailed) -> dict:
    return {"error": type(exc).__name__, "message": str(exc),
            "failures": [{"dst": f.dst, "flow": f.flow.value, "first": f.first, "last": f.last,
                          "after_seq": f.after_seq, "error": type(f.error).__name__}
                         for f in exc.failures]}
