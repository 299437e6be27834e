"""Senders waiting for room sleep on the destination's room semaphore, and the receiver that
frees room wakes them (partitions/waiting.py, receive_area.ring_room_bell): real semaphores,
and a real machine whose receiver is told when to drain."""

from __future__ import annotations

import threading
import time
import uuid

import posix_ipc
import pytest

from adapter import receive_area
from hypervisor.machine import Machine
from partitions.waiting import RoomWait
from tests.integration.conftest import TIMEOUT, KiB, wait_for
from tests.integration.test_machine import payload, receive, send

RECORD = 60 * KiB  # a 256 KiB ring holds four


def test_a_waiting_sender_is_woken_by_the_receiver_long_before_its_bound():
    """The wake-up itself, over a real named semaphore: a sender waiting with a 10 s bound
    wakes as soon as the tail moves and the receiver rings."""
    bell = posix_ipc.Semaphore(f"/xpm-test-room-{uuid.uuid4().hex[:8]}", posix_ipc.O_CREX,
                               0o600, 0)
    try:
        words = memoryview(bytearray(8 * 10)).cast("Q")
        ring = receive_area.RingWords(*range(10))
        room = RoomWait(words, ring, bell)
        outcome: list[tuple[bool, float]] = []

        def sender() -> None:
            start = time.monotonic()
            outcome.append((room.wait(room.mark(), 10.0), time.monotonic() - start))

        thread = threading.Thread(target=sender)
        thread.start()
        wait_for(lambda: words[ring.wanting] == 1, what="the sender marked in `wanting`")
        words[ring.tail] = 4096  # the receiver frees room...
        assert receive_area.ring_room_bell(words, ring, bell, 8192)  # ...and rings
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        (woken, waited), = outcome
        assert woken and waited < 5.0, outcome
        assert words[ring.wanting] == 0 and bell.value == 0
    finally:
        bell.unlink()
        bell.close()


def fill(machine: Machine, how: str) -> list[bytes]:
    """Send 60 KiB records from 1 to 2 by `how` until the ring refuses one: those accepted."""
    accepted = []
    for i in range(10):
        data = payload(1, 2, RECORD, i)
        if how == "lease":
            reply = machine.call(1, {"cmd": "lease_send", "dst": 2, "payloads": [data.hex()],
                                     "timeout": 0})
        else:
            reply = send(machine, 1, 2, data, how)
        if not reply["ok"]:
            assert reply["error"] == "DestinationFull", reply
            return accepted
        accepted.append(data)
    raise AssertionError("the ring never filled")


@pytest.mark.parametrize("how", ["fig11", "fig12", "lease"])
def test_a_sender_refused_for_room_waits_marked_and_the_drain_lets_it_through(machine, how):
    """A send into a full ring waits marked in the ring's `wanting` word (the old back-off
    never wrote it); records taken out let it through, the mark is cleared, and every packet
    arrives once, in order."""
    if how == "lease":
        assert machine.call(1, {"cmd": "lease", "dst": 2})["ok"]
    accepted = fill(machine, how)
    assert len(accepted) >= 3
    assert machine.memory is not None
    words = receive_area.words(machine.memory.view)
    ring = receive_area.RingWords.of(machine.layout.by_id()[2])
    last = payload(1, 2, RECORD, 99)
    replies: list[dict] = []

    def blocked_send() -> None:
        if how == "lease":
            replies.append(machine.call(1, {"cmd": "lease_send", "dst": 2,
                                            "payloads": [last.hex()], "timeout": 30}))
        else:
            replies.append(send(machine, 1, 2, last, how, offset=512 * KiB, timeout=30))

    sender = threading.Thread(target=blocked_send)
    sender.start()
    try:
        wait_for(lambda: words[ring.wanting] == 1, what="the sender waiting for room, marked")
        assert not replies  # still waiting
        assert bytes.fromhex(receive(machine, 2)["hex"]) == accepted[0]
        sender.join(TIMEOUT)
        assert not sender.is_alive()
    finally:
        sender.join(TIMEOUT)
    assert replies and replies[0]["ok"], replies
    for data in [*accepted[1:], last]:
        assert bytes.fromhex(receive(machine, 2)["hex"]) == data
    assert receive(machine, 2, timeout=0) is None
    assert words[ring.wanting] == 0  # cleared by the tail moves that followed
