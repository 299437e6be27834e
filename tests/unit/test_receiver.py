"""The receiver (partitions/receiver.py) over a bytearray segment that the unit-test engine
(tests/unit/test_engine.py's Machine) fills: what it trusts of the delivered words."""

from __future__ import annotations

import pytest

from adapter.errors import RingCorrupt
from adapter.protocol import Op
from partitions.receiver import Receiver
from tests.unit.test_engine import Machine, ok, run_bytes


@pytest.fixture
def m() -> Machine:
    return Machine()


def receiver(m: Machine, network_id: int = 2) -> Receiver:
    return Receiver(m.mem, m.layout, network_id, None)  # type: ignore[arg-type]  # no wait()


def delivered_word(m: Machine, src: int, dst: int) -> int:
    return m.layout.delivered_address(m.p(src).index, m.p(dst).index) >> 3


def collect(r: Receiver) -> list[tuple[int, int]]:
    got: list[tuple[int, int]] = []
    r.drain(lambda source, seq, rows: got.extend((source, seq + k) for k in range(len(rows))))
    return got


def send_three(m: Machine, run: bool) -> None:
    if run:
        data = run_bytes([b"p" * 8] * 3)
        m.put(1, 0, data)
        ok(m.submit(1, Op.MOVE_RUN, [(2, 0, len(data))]))
    else:
        m.put(1, 0, b"x" * 8)
        for _ in range(3):
            ok(m.submit(1, Op.MOVE, [(2, 0, 8)]))


@pytest.mark.parametrize("run", [False, True])
def test_a_legitimate_delivered_word_skips_what_was_handed_over(m, run):
    send_three(m, run)
    m.words[delivered_word(m, 1, 2)] = 2  # a killed incarnation handed over 1..2
    r = receiver(m)
    assert collect(r) == [(1, 3)]
    assert r.redelivered == 2


@pytest.mark.parametrize("run", [False, True])
@pytest.mark.parametrize("forged", [4, 2**64 - 1])
def test_a_delivered_word_past_the_committed_sequence_is_forged(m, run, forged):
    """Issue 12 item 4: a forged delivered word used to drop accepted packets silently (as
    `redelivered`); now the source's records are reported corrupt, nothing is dropped."""
    send_three(m, run)
    m.words[delivered_word(m, 1, 2)] = forged
    r = receiver(m)
    with pytest.raises(RingCorrupt, match=f"source network ID 1 is {forged}, past the pair's "
                                          f"committed sequence word 3"):
        collect(r)
    assert r.redelivered == 0
    assert r.pending_bytes() > 0  # still there, not dropped
    m.words[delivered_word(m, 1, 2)] = 0  # repaired: everything arrives
    assert collect(receiver(m)) == [(1, 1), (1, 2), (1, 3)]


@pytest.mark.parametrize("word", ["head", "tail"])
def test_counters_that_cross_are_corrupt_not_an_empty_ring(m, word):
    """A head forged below the tail (or a tail past the head) used to read as an empty ring,
    silently; now the receiver raises RingCorrupt naming both counters."""
    from adapter import receive_area

    send_three(m, run=False)
    assert len(collect(receiver(m))) == 3  # consumed: tail == head
    ring = receive_area.RingWords.of(m.p(2))
    head = m.words[ring.head]
    if word == "head":
        m.words[ring.head] = head - 8
    else:
        m.words[ring.tail] = head + 8
    with pytest.raises(RingCorrupt, match=r"ring counters head \d+ tail \d+ invalid"):
        collect(receiver(m))
