"""The probe's zero-copy commands: loans (`port.loan`, `port.loan_run`, partitions/loan.py)
and leases (`port.lease`, partitions/lease.py), held between commands so that a test can
write into them, commit them, give them back or stall the driver that keeps them.

`ProbeLoans` is a part of `Probe` (probe.py), whose `dispatch` finds its `cmd_*` methods;
tests/integration/test_loan.py and test_lease.py drive it.
"""

from __future__ import annotations

from partitions.driver import Driver
from partitions.lease import Lease
from partitions.loan import Loan, LoanRun
from partitions.port import Port
from tests.integration.probe_cork import cork_payload


class ProbeLoans:
    """Probe's commands for loans and leases; the attributes below come from Probe."""

    port: Port
    driver: Driver
    loan: Loan
    leases: dict[int, Lease]

    # -- loans (partitions/loan.py) ----------------------------------------------------------
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
