"""The iceoryx2 peer between two real processes: nothing is dropped before the subscriber
attaches its end of the connection (iceoryx2 attaches it lazily, in its next receive())."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter

import pytest

from scripts.workload.frames import FRAME
from scripts.workload.transports import BatchLayout, make_batch
from tests.integration.conftest import TIMEOUT

pytest.importorskip("iceoryx2")

from scripts.workload.iceoryx2_peer import (  # noqa: E402
    ICEORYX_BUFFER,
    Iceoryx2Home,
    Iceoryx2Node,
    Iceoryx2Publisher,
)

SAMPLES = 3 * ICEORYX_BUFFER  # more than the subscriber's buffer holds
PAYLOAD = 64


def subscriber(conn, home: Iceoryx2Home) -> None:
    """Open the receiving endpoint in `home`, say its name, poll only when told, report the
    count."""
    from scripts.workload.iceoryx2_peer import Iceoryx2Subscriber

    Iceoryx2Node.use_home(home)
    endpoint = Iceoryx2Subscriber()
    try:
        conn.send(endpoint.open(2))
        conn.recv()  # 'poll': until then nothing calls receive(), so nothing is attached
        got, deadline = 0, time.monotonic() + TIMEOUT
        while got < SAMPLES and time.monotonic() < deadline:
            got += endpoint.poll(lambda src, seq, rows: None, 0.05)
        conn.send(got)
    finally:
        endpoint.close()


def test_a_publisher_drops_nothing_before_the_subscriber_attaches():
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    home = Iceoryx2Home.create()  # both ends' files there, removed at the end
    child = ctx.Process(target=subscriber, args=(there, home), daemon=True)
    publisher = Iceoryx2Publisher(1)
    errors: Counter = Counter()
    sent: list[int] = []
    try:
        Iceoryx2Node.use_home(home)
        child.start()
        assert here.poll(TIMEOUT), "the subscriber did not open"
        publisher.connect({2: here.recv()})
        region = bytearray(FRAME.size + PAYLOAD)
        batch = make_batch(memoryview(region), PAYLOAD, BatchLayout(FRAME.size), 1)
        stop = threading.Event()

        def publish() -> None:
            for _ in range(SAMPLES):
                loaned = publisher.loan(2, batch)
                loaned.payloads[:] = 7
                sent.append(publisher.send(2, loaned, errors, TIMEOUT, stop))

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        # Before the fix the publisher filled the buffer and dropped the rest within this
        # second; with it, it waits for the subscriber to take its hello.
        thread.join(1.0)
        here.send("poll")
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the publisher is stuck"
        assert here.poll(TIMEOUT), "the subscriber did not report"
        received = here.recv()
        assert not errors, errors
        assert sum(sent) == SAMPLES and received == SAMPLES
    finally:
        publisher.close()
        Iceoryx2Node.drop()
        Iceoryx2Node.use_home(None)  # this process's next node, if any, where it was
        if child.pid is not None:
            child.join(TIMEOUT)
            if child.is_alive():
                child.kill()
                child.join(TIMEOUT)
        home.remove()
    assert child.exitcode == 0
