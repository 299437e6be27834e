"""Leases (standing grants): a destination's lock kept by the sender's driver, which commits
each packet there itself with no request; given back when another sender waits. Real
partitions, adapter and semaphores, through the probe."""

from __future__ import annotations

import pytest

from tests.integration.conftest import TIMEOUT, small_config, wait_for
from tests.integration.test_faults import kill, restarted
from tests.integration.test_loan import loan, locks_free
from tests.integration.test_machine import receive, send
from tests.integration.test_supervision import sent_while_supervised


def lease(m, src: int, dst: int, **msg) -> dict:
    return m.call(src, {"cmd": "lease", "dst": dst, **msg})


def lease_send(m, src: int, dst: int, payloads: list[bytes], **msg) -> dict:
    return m.call(src, {"cmd": "lease_send", "dst": dst, "payloads": [p.hex() for p in payloads],
                        **msg})


def received(m, nid: int, n: int) -> list[tuple[int, int, bytes]]:
    """The next `n` packets at `nid` as (source, seq, bytes); then nothing more."""
    got = [receive(m, nid) for _ in range(n)]
    assert receive(m, nid, timeout=0) is None
    return [(p["source_id"], p["seq"], bytes.fromhex(p["hex"])) for p in got]


def test_lease_sends_arrive_in_order_once_with_no_request_per_packet(machine):
    m = machine
    assert send(m, 1, 2, b"before the lease", "fig11")["seq"] == 1
    assert lease(m, 1, 2)["held"]
    requests = m.adapter_stats()["counters"]["requests"]
    payloads = [b"leased %d " % i * (i + 1) for i in range(50)]
    reply = lease_send(m, 1, 2, payloads)
    assert reply["seqs"] == list(range(2, 52)) and reply["held"]
    assert m.adapter_stats()["counters"]["requests"] == requests  # not one per packet
    assert received(m, 2, 51) == [(1, 1, b"before the lease")] + [
        (1, i + 2, p) for i, p in enumerate(payloads)]
    assert m.call(1, {"cmd": "lease_close", "dst": 2})["ok"]
    assert locks_free(m)  # the adapter settles the given-back lease
    assert send(m, 1, 2, b"after", "fig12")["seq"] == 52


def test_another_sender_is_served_at_once_the_holder_moves_then_leases_again(make_machine):
    """A sender that finds the lock leased makes the adapter recall the lease; the holder's
    driver gives it back on its own thread at the recall's post, so the other send succeeds
    in ONE attempt although the adapter parks it at most lock_timeout_s = 0.3 s (shorter than
    the keeper's 0.5 s look without a post). The holder's next sends go as Fig 11 moves for
    CONTENDED_S (a lease handed back and forth costs more than a move), then it leases again;
    every packet arrives once, in order."""
    m = make_machine(small_config(lock_timeout_s=0.3))
    assert lease(m, 1, 2)["held"]
    assert lease_send(m, 1, 2, [b"one"])["seqs"] == [1]
    assert send(m, 3, 2, b"from three", "fig11")["seq"] == 1  # one attempt
    requests = m.adapter_stats()["counters"]["requests"]
    reply = lease_send(m, 1, 2, [b"two"])
    assert reply["seqs"] == [2] and not reply["held"]  # a move, not a lease
    counters = m.adapter_stats()["counters"]
    assert counters["requests"] == requests + 1 and counters["leases"] == 1
    seqs = [2]

    def leased_again() -> bool:
        reply = lease_send(m, 1, 2, [b"%d" % (seqs[-1] + 1)])
        seqs.extend(reply["seqs"])
        return reply["held"]

    wait_for(leased_again, what="the lease asked for again once no longer contended")
    counters = m.adapter_stats()["counters"]
    assert counters["leases"] == 2 and counters["leases_recalled"] == 1
    assert seqs == list(range(2, seqs[-1] + 1))
    got = received(m, 2, seqs[-1] + 1)
    assert [r for r in got if r[0] == 1] == [(1, 1, b"one"), (1, 2, b"two")] + [
        (1, s, b"%d" % s) for s in seqs[1:]]  # in order, once
    assert (3, 1, b"from three") in got


def test_a_partition_killed_holding_a_lease_gives_the_lock_back(make_machine):
    """kill -9 the holder: what it committed stays delivered once, the lock comes back (the
    other sender gets it), and the restarted partition leases again after its last number."""
    m = make_machine(small_config(restart="always"))
    assert lease(m, 1, 2)["held"]
    assert lease_send(m, 1, 2, [b"a", b"b", b"c"])["seqs"] == [1, 2, 3]
    kill(m.pid(1))
    assert send(m, 3, 2, b"from three", "fig12", timeout=TIMEOUT)["seq"] == 1
    assert sorted(received(m, 2, 4)) == [(1, 1, b"a"), (1, 2, b"b"), (1, 3, b"c"),
                                         (3, 1, b"from three")]
    wait_for(lambda: restarted(m, 1), what="partition 1 to restart")
    assert lease(m, 1, 2, timeout=TIMEOUT)["held"]
    assert lease_send(m, 1, 2, [b"again"])["seqs"] == [4]
    assert received(m, 2, 1) == [(1, 4, b"again")]


def test_a_lease_outlives_an_adapter_restart_and_is_recalled_by_the_new_adapter(make_machine):
    m = make_machine(small_config())
    assert lease(m, 1, 2)["held"]
    assert lease_send(m, 1, 2, [b"before"])["seqs"] == [1]
    old = m.pid()
    kill(old)
    wait_for(lambda: restarted(m, "adapter"), what="adapter restart")
    assert m.adapter_stats()["locks"]["2"] == "granted"  # recovered as its holder's lease
    assert send(m, 1, 3, b"to three", "fig11", timeout=TIMEOUT)["seq"] == 1
    assert m.adapter_stats()["locks"]["2"] == "granted"  # that request proved nothing of it
    assert received(m, 3, 1) == [(1, 1, b"to three")]
    reply = lease_send(m, 1, 2, [b"during"])  # no request: the lease is still ours
    assert reply["seqs"] == [2] and reply["held"]
    assert send(m, 3, 2, b"from three", "fig11", timeout=TIMEOUT)["seq"] == 1
    assert lease_send(m, 1, 2, [b"after"])["seqs"] == [3]
    assert sorted(received(m, 2, 4)) == [(1, 1, b"before"), (1, 2, b"during"), (1, 3, b"after"),
                                         (3, 1, b"from three")]
    assert m.adapter_stats()["counters"]["leases_recalled"] == 1


@pytest.mark.parametrize("dst, error", [(99, "UnknownNetworkId"), (1, "OwnNetworkId")])
def test_a_lease_on_a_bad_destination_is_a_typed_error(machine, dst, error):
    reply = lease(machine, 1, dst)
    assert reply["error"] == error and str(dst) in reply["message"]
    assert locks_free(machine)


@pytest.mark.parametrize("msg, error, named", [
    ({"payloads": [""]}, "BadCount", "0 bytes"),
    ({"sizes": [200 * 1024]}, "TooLarge", str(200 * 1024)),
])
def test_bad_lease_sends_are_typed_errors_and_send_nothing(machine, msg, error, named):
    m = machine
    assert lease(m, 1, 2)["held"]
    reply = m.call(1, {"cmd": "lease_send", "dst": 2, **msg})
    assert reply["error"] == error and named in reply["message"]
    assert lease_send(m, 1, 2, [b"good"])["seqs"] == [1]  # the lease is unharmed
    assert received(m, 2, 1) == [(1, 1, b"good")]


def test_a_send_on_a_closed_lease_is_refused(machine):
    m = machine
    assert lease(m, 1, 2)["held"]
    assert m.call(1, {"cmd": "lease_close", "dst": 2})["ok"]
    reply = lease_send(m, 1, 2, [b"late"])
    assert reply["error"] == "LeaseClosed" and "2" in reply["message"]
    assert receive(m, 2, timeout=0) is None
    assert locks_free(m)


def test_a_holder_that_keeps_a_recalled_lease_is_killed_at_the_grant_timeout(make_machine):
    """A holder whose driver stops answering recalls keeps the destination from everyone:
    grant_timeout_s = 1 after the recall, supervision kills it, the adapter takes the lock
    back, and the waiting sender gets through; what the holder committed stays delivered."""
    m = make_machine(small_config(n=3, grant_timeout_s=1.0, restart="always"))
    assert lease(m, 1, 2)["held"]
    assert lease_send(m, 1, 2, [b"committed"])["seqs"] == [1]
    assert m.call(1, {"cmd": "stall_keeper"})["ok"]
    assert m.adapter_stats()["grants"] == {}  # nobody waits: the lease may be kept
    outcome = sent_while_supervised(m, 3, 2, b"from three")
    assert outcome.get("seq") == 1, outcome
    assert any("p1 kept its lease on network ID 2" in e and "killed" in e
               for e in m.events), m.events
    assert sorted(received(m, 2, 2)) == [(1, 1, b"committed"), (3, 1, b"from three")]


def lease_loan(m, src: int, dst: int, payloads: list[bytes], **msg) -> dict:
    return m.call(src, {"cmd": "lease_loan", "dst": dst, "payloads": [p.hex() for p in payloads],
                        **msg})


def test_loans_under_a_lease_are_filled_in_place_with_no_request(machine):
    """A run and a lone packet filled in the destination's ring and committed, one given
    back: in order, once, the given-back one's numbers unused, and not one request."""
    m = machine
    assert lease(m, 1, 2)["held"]
    requests = m.adapter_stats()["counters"]["requests"]
    run = [b"run %d" % i for i in range(3)]
    assert lease_loan(m, 1, 2, run, length=5)["seq"] == 1
    assert lease_loan(m, 1, 2, [b"given back"], end="give_back")["seq"] == 4
    assert lease_loan(m, 1, 2, [b"lone"])["seq"] == 4
    assert lease_send(m, 1, 2, [b"sent"])["seqs"] == [5]
    assert m.adapter_stats()["counters"]["requests"] == requests
    assert received(m, 2, 5) == [(1, 1, b"run 0"), (1, 2, b"run 1"), (1, 3, b"run 2"),
                                 (1, 4, b"lone"), (1, 5, b"sent")]


def test_a_lease_with_an_open_loan_is_given_back_only_after_the_loan(make_machine):
    """Another sender waits (the adapter recalls the lease) while the holder's program fills
    a loan under it: the lease stays until the loan commits (so nobody writes where the
    program writes), then goes back at once and the other sender gets through."""
    m = make_machine(small_config(lock_timeout_s=0.3))
    assert lease(m, 1, 2)["held"]
    assert lease_loan(m, 1, 2, [b"held open"], end="hold")["seq"] == 1
    reply = send(m, 3, 2, b"too soon", "fig11", timeout=0.5)
    assert reply["error"] == "LockTimeout", reply  # recalled, but the loan is open
    assert m.call(1, {"cmd": "lease_loan_end", "dst": 2})["held"] is False  # given back
    assert send(m, 3, 2, b"from three", "fig11", timeout=TIMEOUT)["seq"] == 1
    assert sorted(received(m, 2, 2)) == [(1, 1, b"held open"), (3, 1, b"from three")]


def test_the_thread_holding_a_lease_loan_gets_loan_held_instead_of_waiting_for_itself(machine):
    """Each call that would wait for the leased destination (a send, a port loan, a flush, a
    waiting receive, a send under the same lease) raises LoanHeld at once from the thread
    holding a loan under the lease; the loan then commits as if nothing happened."""
    m = machine
    assert lease(m, 1, 2)["held"]
    assert lease_loan(m, 1, 2, [b"held"], end="hold")["seq"] == 1
    for reply in (send(m, 1, 2, b"sync", "fig11", sync=True), loan(m, 1, 2, count=8),
                  m.call(1, {"cmd": "receive", "timeout": 1.0}), m.call(1, {"cmd": "flush"}),
                  lease_send(m, 1, 2, [b"same lease"]),
                  m.call(1, {"cmd": "cork_send", "dsts": [2], "lengths": [8], "count": 1})):
        if reply.get("ok"):  # cork_send (a queued send) reports what its sends raised
            (reply,) = reply["raised"]
        assert reply["error"] == "LoanHeld" and "network ID 2" in reply["message"], reply
    assert m.call(1, {"cmd": "lease_loan_end", "dst": 2})["ok"]
    assert received(m, 2, 1) == [(1, 1, b"held")]


def test_a_bench_run_refused_at_its_start_keeps_no_lease(make_machine):
    """The bench's fig12-lease takes its leases when a run starts: one it cannot take (the lock
    is held by another partition's grant) refuses the run, and the leases it did take are
    given back at once (before, they stayed with the partition until someone recalled them)."""
    m = make_machine(small_config(3))
    assert m.call(2, {"cmd": "hold_grant", "dst": 3, "count": 100})["ok"]
    assert m.call(1, {"cmd": "bench_open", "transport": "fig12-lease"})["ok"]
    reply = m.call(1, {"cmd": "bench_send", "transport": "fig12-lease", "peers": [2, 3],
                       "size": 64, "packets": 10, "send_timeout": 0.5})
    assert reply["ok"] is False and reply["error"] == "LockTimeout", reply
    wait_for(lambda: m.adapter_stats()["locks"]["2"] == "free",  # the lease on 2 given back
             what="the lease on network ID 2 given back")
