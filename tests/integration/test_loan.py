"""Zero-copy loans (issue 14): the destination's receive space lent to the program under a Fig 12
grant, written in place, then committed or given back. Real partitions through the probe."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import TIMEOUT, small_config, wait_for
from tests.integration.test_faults import kill, restarted
from tests.integration.test_machine import receive, send


def loan(m, src: int, dst: int, **msg) -> dict:
    return m.call(src, {"cmd": "loan", "dst": dst, **msg})


def locks_free(m) -> bool:
    return set(m.adapter_stats()["locks"].values()) == {"free"}


def test_loan_commit_delivers_the_bytes_once_with_the_next_sequence_number(machine):
    m = machine
    assert send(m, 1, 2, b"first, by fig12", "fig12")["seq"] == 1
    data = bytes(range(256)) * 4 + b"tail"
    reply = loan(m, 1, 2, count=len(data), hex=data.hex())
    assert (reply["seq"], reply["size"]) == (2, len(data))
    assert receive(m, 2)["seq"] == 1
    packet = receive(m, 2)
    assert (packet["source_id"], packet["seq"], bytes.fromhex(packet["hex"])) == (1, 2, data)
    assert receive(m, 2, timeout=0) is None  # exactly once
    assert send(m, 1, 2, b"after", "fig11")["seq"] == 3
    assert locks_free(m)


def test_give_back_delivers_nothing_and_the_next_send_takes_its_place(machine):
    m = machine
    assert loan(m, 1, 2, count=100, hex=(b"x" * 100).hex(), end="give_back")["seq"] == 1
    assert loan(m, 1, 2, count=64, end="raise")["error"] == "ValueError"  # `with` gave it back
    assert locks_free(m)
    assert send(m, 1, 2, b"the real first", "fig12")["seq"] == 1  # its sequence number came back
    packet = receive(m, 2)
    assert (packet["seq"], bytes.fromhex(packet["hex"])) == (1, b"the real first")
    assert receive(m, 2, timeout=0) is None


def test_loan_run_delivers_every_packet(machine):
    m = machine
    payloads = [bytes([i]) * 1000 for i in range(1, 33)]
    reply = loan(m, 1, 2, packets=32, length=1000, payloads=[p.hex() for p in payloads])
    assert reply["ok"] and reply["seq"] == 1, reply
    got = [receive(m, 2) for _ in payloads]
    assert [(p["seq"], bytes.fromhex(p["hex"])) for p in got] == list(
        zip(range(1, 33), payloads, strict=True))
    assert receive(m, 2, timeout=0) is None
    assert loan(m, 1, 2, packets=1, length=5, payloads=[b"alone".hex()])["seq"] == 33
    assert bytes.fromhex(receive(m, 2)["hex"]) == b"alone"


def test_an_uninit_loan_finds_only_its_own_old_bytes(make_machine):
    """`uninit=True` skips the memset only while the destination's ring has held nothing but
    the borrower's own records: partition 1 then finds its own old packet; once partition 3
    has written there too, every loan (uninit or not) is zeroed again."""
    m = make_machine(small_config(receive=64 * 1024))
    mine = b"mine, old" * 3000  # 27 KiB: two of them and the third wraps onto the first
    for _ in range(2):
        assert send(m, 1, 2, mine, "fig11")["ok"]
        assert bytes.fromhex(receive(m, 2)["hex"]) == mine
    reply = loan(m, 1, 2, count=len(mine), uninit=True, end="give_back")
    assert reply["ok"] and not reply["zeroed"], reply
    assert bytes.fromhex(reply["found"]) in mine * 2  # its own bytes, shifted by the header
    assert loan(m, 1, 2, count=len(mine), end="give_back")["zeroed"]  # the default: zeros
    assert send(m, 3, 2, b"x" * 100, "fig11")["ok"]  # the ring now holds another's record
    assert bytes.fromhex(receive(m, 2)["hex"]) == b"x" * 100
    for _ in range(3):  # wherever the loan lands in the ring
        reply = loan(m, 1, 2, count=len(mine), uninit=True, hex=mine.hex())
        assert reply["ok"] and reply["zeroed"], reply
        assert bytes.fromhex(receive(m, 2)["hex"]) == mine


def test_loaned_space_is_zeroed_and_bounded(make_machine):
    """The space held another partition's records: the borrower finds zeros. Writes past the
    granted bytes raise (typed through Loan.write) and change nothing; the loan still works."""
    m = make_machine(small_config(receive=64 * 1024))
    secret = b"secret of three" * 2000
    for _ in range(2):  # 60 KiB of a 64 KiB ring: the next big record wraps onto the first
        assert send(m, 3, 2, secret, "fig11")["ok"]
        assert bytes.fromhex(receive(m, 2)["hex"]) == secret
    reply = loan(m, 1, 2, count=len(secret), end="hold")
    assert reply["ok"] and reply["zeroed"], reply
    assert m.call(1, {"cmd": "loan_write", "offset": 0, "hex": ""})["ok"]
    end = len(secret)
    for how, offset, data, error in (("write", end - 6, b"1234567", "OutOfBounds"),
                                     ("write", -1, b"1", "OutOfBounds"),
                                     ("index", end, b"1", "IndexError"),
                                     ("slice", end - 6, b"1234567", "ValueError")):
        reply = m.call(1, {"cmd": "loan_write", "how": how, "offset": offset, "hex": data.hex()})
        assert reply["error"] == error, (how, reply)
        if how == "write":
            assert f"[{offset}, {offset + len(data)})" in reply["message"], reply
    assert m.call(1, {"cmd": "loan_write", "how": "slice", "offset": end - 4,
                      "hex": b"done".hex()})["ok"]
    assert m.call(1, {"cmd": "loan_end"})["seq"] == 1
    assert bytes.fromhex(receive(m, 2)["hex"]) == bytes(end - 4) + b"done"


@pytest.mark.parametrize("msg, error, named", [
    ({"count": 0}, "BadCount", "loan of 0 bytes"),
    ({"count": -3}, "BadCount", "loan of -3 bytes"),
    ({"count": 200 * 1024}, "TooLarge", "count 204800"),
    ({"count": 2 << 20}, "TooLarge", "2097152 bytes"),
    ({"packets": 0, "length": 8}, "BadCount", "0 packets"),
    ({"packets": 40000, "length": 1}, "BadCount", "got 40000 packets"),  # > one request's
    ({"packets": 30000, "length": 1}, "TooLarge", "count 240008"),  # > one record's bytes
])
def test_bad_loans_are_typed_errors_and_leak_no_lock(machine, msg, error, named):
    m = machine
    reply = loan(m, 1, 2, **msg)
    assert reply["error"] == error and named in reply["message"], reply
    assert locks_free(m)
    assert loan(m, 1, 2, count=8, hex=b"loan ok!".hex())["seq"] == 1


@pytest.mark.parametrize("dst, error", [(99, "UnknownNetworkId"), (1, "OwnNetworkId")])
def test_loan_to_a_bad_destination(machine, dst, error):
    reply = loan(machine, 1, dst, count=8)
    assert reply["error"] == error and str(dst) in reply["message"], reply
    assert loan(machine, 1, 2, count=8, hex=b"loan ok!".hex())["seq"] == 1


def test_a_held_loan_blocks_its_own_thread_with_a_typed_error_and_other_senders(machine):
    """The thread holding a loan gets LoanHeld for a send, a second loan or a waiting receive
    (they would wait for the loan itself); another partition's send to the destination waits
    for the lock, and goes through once the loan is committed, after it."""
    m = machine
    assert loan(m, 1, 2, count=32, hex=(b"L" * 32).hex(), end="hold")["ok"]
    assert m.adapter_stats()["locks"]["2"] == "granted"
    for reply in (send(m, 1, 3, b"to three", "fig11"), loan(m, 1, 3, count=8),
                  m.call(1, {"cmd": "receive", "timeout": 1.0}), m.call(1, {"cmd": "flush"}),
                  m.call(1, {"cmd": "cork_send", "dsts": [3], "lengths": [8], "count": 1})):
        if reply.get("ok"):  # cork_send reports what its sends raised
            (reply,) = reply["raised"]
        assert reply["error"] == "LoanHeld" and "network ID 2" in reply["message"], reply
    assert send(m, 3, 2, b"waits", "fig11")["error"] == "LockTimeout"  # one try: lock held
    assert m.call(1, {"cmd": "loan_end"})["seq"] == 1
    assert send(m, 3, 2, b"waits", "fig11", timeout=TIMEOUT)["seq"] == 1
    assert bytes.fromhex(receive(m, 2)["hex"]) == b"L" * 32
    assert bytes.fromhex(receive(m, 2)["hex"]) == b"waits"
    assert m.call(1, {"cmd": "loan_end"})["error"] == "LoanEnded"
    assert locks_free(m)


def test_another_thread_waits_for_the_driver_no_longer_than_its_timeout(machine):
    """A second thread of the partition holding a loan waits for the driver's request slot
    only until its send's deadline: LockTimeout naming the busy driver, nothing sent (it used
    to wait for the loan to end, whatever its timeout)."""
    m = machine
    assert loan(m, 1, 2, count=8, hex=b"held one".hex(), end="hold")["ok"]
    started = time.monotonic()
    reply = send(m, 1, 3, b"to three", "fig11", timeout=1.0, thread=True)
    assert reply.get("error") == "LockTimeout" and "busy" in reply["message"], reply
    assert time.monotonic() - started < 1.0 + 4.0  # the deadline, plus a loaded machine
    assert m.call(1, {"cmd": "loan_end"})["seq"] == 1
    assert send(m, 1, 3, b"to three", "fig11", timeout=TIMEOUT, thread=True)["seq"] == 1
    assert locks_free(m)


def test_a_loan_goes_after_the_packets_queued_before_it(machine):
    """Per-packet sends are queued (the port's cork); a loan to the same destination is taken
    after they were moved, so the pair's order is program order."""
    m = machine
    for i in range(3):
        assert loan(m, 1, 2, count=5, hex=b"after".hex(), queue_first=50)["seq"] == 51 * i + 51
        got = m.call(2, {"cmd": "receive_all", "count": 51})["packets"]
        assert [p[1] for p in got] == list(range(51 * i + 1, 51 * i + 52)), got
        assert [p[2] for p in got] == [100] * 50 + [5]


def test_a_loan_with_a_live_slice_does_not_end(machine):
    """A slice of the view outlives commit(): LoanExported, nothing published, the loan still
    held; once the slice is gone the same commit delivers."""
    m = machine
    assert loan(m, 1, 2, count=8, hex=b"exported".hex(), end="hold")["ok"]
    reply = m.call(1, {"cmd": "loan_end", "keep_slice": True})
    assert reply["error"] == "LoanExported" and "still alive" in reply["message"], reply
    assert receive(m, 2, timeout=0) is None
    assert m.adapter_stats()["locks"]["2"] == "granted"
    assert m.call(1, {"cmd": "loan_end"})["seq"] == 1
    assert bytes.fromhex(receive(m, 2)["hex"]) == b"exported"


@pytest.mark.parametrize("packets", [None, 16])
def test_partition_killed_holding_a_loan(make_machine, packets):
    """kill -9 while a loan is held and written: nothing of it is delivered, the lock comes
    back, the destination takes other senders at once; the restarted partition's next loan
    reuses the sequence numbers."""
    m = make_machine(small_config(restart="always"))
    shape = {"count": 512} if packets is None else {"packets": packets, "length": 512}
    fill = ({"hex": (b"h" * 512).hex()} if packets is None
            else {"payloads": [(b"h" * 512).hex()] * packets})
    assert loan(m, 1, 2, end="hold", **shape, **fill)["ok"]
    kill(m.pid(1))
    assert send(m, 3, 2, b"from three", "fig12", timeout=TIMEOUT)["seq"] == 1
    packet = receive(m, 2)
    assert (packet["source_id"], bytes.fromhex(packet["hex"])) == (3, b"from three")
    assert receive(m, 2, timeout=0) is None
    wait_for(lambda: restarted(m, 1), what="partition 1 to restart")
    assert loan(m, 1, 2, count=6, hex=b"second".hex(), timeout=TIMEOUT)["seq"] == 1
    assert (receive(m, 2)["seq"], receive(m, 2, timeout=0)) == (1, None)
    assert locks_free(m)
