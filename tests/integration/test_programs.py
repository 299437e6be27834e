"""What a user's own program meets at its edges, through a real `xpmove run` (test_examples'
harness): a loan left open when it ends, a run too long for one request, a send the
machine's stop cuts short. Each must end promptly with a report that names the cause."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.test_examples import write_machine, xpmove_run

GRANT_TIMEOUT_S = 10.0  # the default grant_timeout_s: a lock held that long gets its holder killed

PROGRAMS = """
    import gc
    import os
    import time

    import numpy as np

    def _loaned():  # tell `sender` that the loan is taken (the run's cwd is tmp_path)
        open("loaned", "w").close()

    def plain(port):
        loan = port.loan(2, 16, timeout=5)
        loan.view[:] = b"x" * 16
        _loaned()
        raise ValueError("my bug")

    def exported(port):
        with port.loan(2, 64, timeout=5) as buf:
            arr = np.frombuffer(buf, np.uint8)
            arr[:] = 1
            _loaned()

    def leased(port):
        lease = port.lease(2, timeout=5)
        lease.loan(32, timeout=5)
        _loaned()

    def dropped(port):  # neither the lease nor its loan kept, and collected: still found
        port.lease(2, timeout=5).loan(48, timeout=5)
        gc.collect()
        _loaned()

    def receiver(port):
        packet = port.receive(timeout=20)
        print("two got", None if packet is None else packet.payload)

    def sender(port):
        deadline = time.monotonic() + 10
        while not os.path.exists("loaned"):
            assert time.monotonic() < deadline, "one never took its loan"
            time.sleep(0.01)
        port.send(2, b"after the loan", timeout=8, sync=True)
"""


def write_config(tmp_path: Path, leaver: str) -> Path:
    (tmp_path / "loaned").unlink(missing_ok=True)
    return write_machine(tmp_path, PROGRAMS, (("one", 1, leaver), ("two", 2, "receiver"),
                                              ("three", 3, "sender")))


@pytest.mark.parametrize("leaver, expect", [
    ("plain", r"raised ValueError: my bug; and the program ended with 1 loan\(s\) open: a loan "
              r"of 16 bytes to network ID 2: given back, nothing delivered"),
    ("exported", r"raised LoanExported: commit: a view made from the loan of 64 bytes .*; and "
                 r"the program ended with 1 loan\(s\) open: a loan of 64 bytes to network ID 2: "
                 r"given back, nothing delivered"),
    ("leased", r"raised LoanLeftOpen: the program ended with 1 loan\(s\) open: a loan of 32 "
               r"bytes to network ID 2: given back, nothing delivered"),
    ("dropped", r"raised LoanLeftOpen: the program ended with 1 loan\(s\) open: a loan of 48 "
                r"bytes to network ID 2: given back, nothing delivered"),
])
def test_a_loan_left_open_is_given_back_when_the_program_ends(tmp_path: Path, leaver: str,
                                                               expect: str) -> None:
    """The loan (a port's, one whose numpy view outlived its `with` block, one under a lease)
    is given back as the program ends, not held until the grant timeout kills the partition:
    the report names it after the program's own error, and another sender's packet reaches
    the destination at once, the only packet it gets."""
    started = time.monotonic()
    proc = xpmove_run(write_config(tmp_path, leaver), tmp_path, tmp_path, timeout=30)
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert re.search(r"one \(ID 1\): " + expect, proc.stdout), out
    assert "two got b'after the loan'" in proc.stdout, out
    assert "three (ID 3): returned" in proc.stdout, out
    assert "killed" not in proc.stdout and "held the lock" not in out, out
    assert took < GRANT_TIMEOUT_S, f"{took:.1f} s: the lock waited for the grant timeout"
    assert proc.returncode == 1, out


def two_partitions(tmp_path: Path, one: str, two: str) -> Path:
    """Partitions one and two running the functions `one` and `two` defined in the texts."""
    return write_machine(tmp_path, textwrap.dedent(one) + textwrap.dedent(two),
                         (("one", 1, "one"), ("two", 2, "two")))


def test_a_run_too_long_for_one_request_is_refused_naming_its_packets(tmp_path: Path) -> None:
    """Every way a program names a run of 40,000 packets (more than one request carries) is
    refused at once with BadCount naming the 40,000, not an adapter status code's 'count
    640008 must be > 0'; nothing is sent."""
    config = two_partitions(tmp_path, """
        from partitions import BadCount

        def one(port):
            attempts = {
                "send_batch": lambda: port.send_batch(2, [b"x" * 8] * 40000),
                "run_at": lambda: port.run_at(0, 40000, 10),
                "loan_run": lambda: port.loan_run(2, 40000, 1, timeout=5),
                "lease.loan_run": lambda: port.lease(2, timeout=5).loan_run(40000, 1),
            }
            for name, attempt in attempts.items():
                try:
                    attempt()
                except BadCount as exc:
                    print(f"{name} refused: {exc}")
    """, """
        def two(port):
            assert port.receive(timeout=0.5) is None, "a refused run delivered something"
    """)
    proc = xpmove_run(config, tmp_path, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for name in ("send_batch", "run_at", "loan_run", "lease.loan_run"):
        assert re.search(rf"^{re.escape(name)} refused: .*a run holds 1\.\.32768 packets .*got "
                         rf"40000 packets", proc.stdout, re.MULTILINE), out


@pytest.mark.parametrize("sync, expect", [
    (True, r"still running at the timeout: stopped \(its wait cut short: DestinationFull: "
           r"destination network ID 2 is full"),
    (False, r"raised QueuedSendFailed: \d+ queued packets were not moved: .* \(its wait was "
            r"cut short by the stop: QueueFull: send to network ID 2: the machine is stopping "
            r"while it waited for room in the submission buffers; the packet was not queued\)"),
])
def test_a_send_the_machines_stop_cuts_short(tmp_path: Path, sync: bool, expect: str) -> None:
    """A program blocked in a send (the destination never receives: its ring, then the
    port's queue, fill up) when the run's timeout stops the machine: the send raises, marked
    as cut short by the stop. A synchronous send leaves nothing behind: the program was
    stopped, not failed. Queued packets the stop kept from moving are a failure, naming
    them, with the cut-short send as the reason."""
    config = two_partitions(tmp_path, f"""
        def one(port):
            while True:  # ignores port.stop: the send itself must end
                port.send(2, b"x" * 1024, sync={sync})
    """, """
        def two(port):
            port.stop.wait()
    """)
    proc = xpmove_run(config, tmp_path, tmp_path, timeout=2)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert re.search(r"one \(ID 1\): " + expect, proc.stdout), out
    assert "two (ID 2): still running at the timeout: stopped" in proc.stdout, out


def test_values_that_only_look_like_integers_are_refused_and_the_port_keeps_working(
        tmp_path: Path) -> None:
    """2.0, True and "2" as a network ID, 8.0 as a count: each a typed error naming the value,
    at the call (2.0 used to be queued and kill the queue's thread: the port then hung), and
    the port still sends afterwards; numpy integers are integers."""
    config = two_partitions(tmp_path, """
        import numpy as np
        from partitions import XpmoveError

        def one(port):
            attempts = {
                "send 2.0": lambda: port.send(2.0, b"x"),
                "send True": lambda: port.send(True, b"x"),
                "send '2'": lambda: port.send("2", b"x"),
                "sync send 2.0": lambda: port.send(2.0, b"x", sync=True),
                "send_from 8.0": lambda: port.send_from(2, 0, 8.0, sync=True),
                "loan 8.0": lambda: port.loan(2, 8.0),
                "loan_run 2.0": lambda: port.loan_run(2, 2.0, 8),
                "lease 2.0": lambda: port.lease(2.0),
                "max_record own": lambda: port.max_record(1),
                "receive_many 0": lambda: port.receive_many(limit=0),
            }
            for name, attempt in attempts.items():
                try:
                    attempt()
                    print(f"{name} accepted")
                except XpmoveError as exc:
                    print(f"{name} refused: {type(exc).__name__}: {exc}")
            port.send(np.int64(2), b"after")
            print("flushed", port.flush(timeout=5))
    """, """
        def two(port):
            got = port.receive_many(timeout=10)
            got += port.receive_many(timeout=0.5)
            print("two got", [p.payload for p in got])
    """)
    proc = xpmove_run(config, tmp_path, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for line in ("send 2.0 refused: UnknownNetworkId: send: destination network ID 2.0 is not "
                 "an integer",
                 "send True refused: UnknownNetworkId: send: destination network ID True",
                 "send '2' refused: UnknownNetworkId: send: destination network ID '2'",
                 "sync send 2.0 refused: UnknownNetworkId",
                 "send_from 8.0 refused: BadCount: send_from: count 8.0 is not an integer",
                 "loan 8.0 refused: BadCount", "loan_run 2.0 refused: BadCount",
                 "lease 2.0 refused: UnknownNetworkId",
                 "max_record own refused: OwnNetworkId",
                 "receive_many 0 refused: BadCount: receive_many: limit 0 must be >= 1",
                 "flushed True", "two got [b'after']"):
        assert line in proc.stdout, out


def test_leaving_a_packets_loop_early_loses_nothing(tmp_path: Path) -> None:
    """A `for p in port.packets()` left after the first packet of a batch: the packets it had
    taken and not handed over come from the next receive, in order, once each."""
    config = two_partitions(tmp_path, """
        def one(port):
            port.send_batch(2, [bytes([i]) * 8 for i in range(10)], timeout=10)
    """, """
        def two(port):
            while port.pending_bytes() == 0:
                port.stop.wait(0.01)  # polling for the batch's arrival, not synchronisation
            for first in port.packets(timeout=5):
                break
            rest = port.receive_many(timeout=2)
            print("two got", [first.seq] + [p.seq for p in rest])
    """)
    proc = xpmove_run(config, tmp_path, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "two got [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in proc.stdout, out


def test_threads_receiving_at_once_get_every_packet_once(tmp_path: Path) -> None:
    """Three threads of one partition receiving at once (receive_many and a packets() loop)
    share the arrivals: each packet reaches exactly one of them, none corrupt (two drains
    at once used to hand packets out twice and corrupt the ring's tail)."""
    config = two_partitions(tmp_path, """
        def one(port):
            for i in range(0, 20000, 10):  # runs: a drain with a limit stops inside one
                port.send_batch(2, [(i + j).to_bytes(4, "little") * 16 for j in range(10)],
                                timeout=30)
    """, """
        import threading

        def two(port):
            got, lock = [], threading.Lock()

            def take(packets):
                with lock:
                    got.extend((p.seq, p.payload) for p in packets)
                    return len(got) >= 20000

            def many():
                while not take(port.receive_many(limit=3, timeout=0.2)):
                    pass

            def loop():
                for p in port.packets(timeout=1):
                    if take([p]):
                        return

            threads = [threading.Thread(target=f) for f in (many, many, loop)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            seqs = sorted(seq for seq, _ in got)
            bad = [s for s, payload in got
                   if payload != (s - 1).to_bytes(4, "little") * 16]
            print("two got", len(got), "distinct", len(set(seqs)), "in range",
                  seqs == list(range(1, 20001)), "bad", len(bad))
    """)
    proc = xpmove_run(config, tmp_path, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "two got 20000 distinct 20000 in range True bad 0" in proc.stdout, out


def test_a_sync_send_behind_a_stuck_queue_ends_at_its_timeout(tmp_path: Path) -> None:
    """The destination never receives: its ring, then the port's queue, fill up. A sync send
    waits for the queue before it, but only up to its own timeout (it waited for the queue
    for good), and a queued send from another thread meanwhile ends at ITS timeout (it waited
    for the sync send's hold on the send space's top): both QueueFull, nothing sent."""
    config = two_partitions(tmp_path, """
        import threading
        import time
        from partitions import QueueFull

        def one(port):
            for _ in range(300):  # fill the ring (~250 such packets), then part of the queue
                port.send(2, b"x" * 1024, timeout=6)  # (retried for 6 s: still queued below)
            ended = {}

            def sync_send():
                started = time.monotonic()
                try:
                    port.send(2, b"sync", sync=True, timeout=2.0)
                except QueueFull:
                    ended["sync"] = time.monotonic() - started

            thread = threading.Thread(target=sync_send)
            thread.start()
            time.sleep(0.3)  # let the sync send take the send space's top (not a sync point:
            started = time.monotonic()  # the check below holds either way)
            try:
                port.send(2, b"queued", timeout=0.5)
            except QueueFull:
                ended["queued"] = time.monotonic() - started
            thread.join()
            print("ended", {k: round(v) for k, v in sorted(ended.items())})
    """, """
        def two(port):
            port.stop.wait()
    """)
    proc = xpmove_run(config, tmp_path, tmp_path, timeout=15)
    out = proc.stdout + proc.stderr
    assert "ended {'queued': 0, 'sync': 2}" in proc.stdout or \
        "ended {'queued': 1, 'sync': 2}" in proc.stdout, out
