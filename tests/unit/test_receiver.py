"""The receiver (partitions/receiver.py) over a bytearray segment that the unit-test engine
(tests/unit/engine_machine.py's Machine) fills: what it trusts of the delivered words."""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from adapter.errors import RingCorrupt
from adapter.protocol import Op
from partitions.receiver import Receiver
from tests.unit.engine_machine import Machine, ok, run_bytes


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


# -- the lone record's short path --------------------------------------------------------------
def drained(m: Machine, general: bool, limit: int | None = None) -> tuple:
    """What one drain of partition 2's ring does, through the short path for a lone record or
    (`general`) the general walk alone: its outcome, the handler's calls, tail, delivered."""
    r = receiver(m)
    if general:
        r._lone_record = lambda *args: None  # type: ignore[method-assign]
    calls: list = []
    try:
        outcome: object = r.drain(lambda source, seq, rows: calls.append(
            (source, seq, [bytes(row) for row in rows])), limit)
    except (RingCorrupt, struct.error) as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    dst = m.p(2)
    return (outcome, calls, m.words[dst.control // 8 + 8], m.words[delivered_word(m, 1, 2)],
            r.redelivered)


@settings(max_examples=400, deadline=None)
@given(length=st.integers(1, 600), at=st.integers(0, 4 * 16384 // 8).map(lambda n: n * 8),
       forge=st.sampled_from(["none", "delivered", "kind", "length", "head", "tail", "source",
                              "length and head", "unaligned tail", "shifted"]),
       value=st.integers(0, 1 << 20), limit=st.sampled_from([None, None, 1, 0, -1]))
@example(length=8, at=16384 - 32, forge="none", value=0, limit=None)  # ends at the ring end
@example(length=8, at=16384 - 16, forge="none", value=0, limit=None)  # a PAD, then at 0
@example(length=8, at=16384 - 40, forge="unaligned tail", value=0, limit=None)
@example(length=8, at=64, forge="shifted", value=0, limit=None)
def test_the_lone_record_path_equals_the_general_walk(length, at, forge, value, limit):
    """One record committed by the adapter at ring position `at` (any counter value, so
    anywhere in the ring, a PAD before it where it does not fit), its words forged or not,
    drained with any limit: the short path and the general walk do exactly the same."""
    outcomes = []
    for general in (False, True):
        m = Machine()
        dst = m.p(2)
        control = dst.control // 8
        m.words[control] = m.words[control + 1] = m.words[control + 8] = at  # head, pending, tail
        m.put(1, 0, bytes([value % 251 + 1]) * length)
        ok(m.submit(1, Op.MOVE, [(2, 0, length)]))
        tail = m.words[control + 8]
        pos = dst.receive_base + tail % dst.receive_size
        if forge == "delivered":
            m.words[delivered_word(m, 1, 2)] = value % 3
        elif forge == "kind":
            struct.pack_into("<I", m.mem, pos, value)
        elif forge == "length":
            struct.pack_into("<Q", m.mem, pos + 16, value)
        elif forge == "head":
            m.words[control] += 8 * (value % 4)
        elif forge == "tail":
            m.words[control + 8] += 8 * (value % 3)
        elif forge == "source":
            struct.pack_into("<I", m.mem, pos + 4, value % 6)
        elif forge == "length and head":  # a record that would run past the ring's end
            # (from a tail with room for a header: else the record went to 0 and no header
            # stands at the tail to forge)
            assume(dst.receive_size - tail % dst.receive_size >= 24)
            forged = dst.receive_size - tail % dst.receive_size - 24 + 1 + value % 64
            struct.pack_into("<Q", m.mem, pos + 16, forged)
            m.words[control] = tail + -(-(24 + forged) // 8) * 8
        elif forge == "unaligned tail":
            m.words[control + 8] += 4
        elif forge == "shifted":  # the whole record 4 bytes on, tail and head with it
            record = bytes(m.mem[pos:pos + 24 + length])
            m.mem[pos + 4:pos + 28 + length] = record
            m.words[control + 8] += 4
            m.words[control] += 4
        outcomes.append(drained(m, general, limit))
    assert outcomes[0] == outcomes[1]
