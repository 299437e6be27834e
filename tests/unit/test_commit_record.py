"""receive_area.commit_record (a lease's one-record commit, flat for a cold cache) against the
commit protocol's own helpers composed in their order: for any state of the ring's words, the
same record, the same words, the same sequence number, or the same error with nothing written.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapter import receive_area
from adapter.errors import XpmoveError
from adapter.ring import ALIGN, WINDOW, reserve
from hypervisor.config import PAGE_SIZE, MachineConfig, PartitionConfig
from hypervisor.layout import PartitionLayout, SegmentLayout, plan_segment


class Machine(NamedTuple):
    """Two partitions, p1 sending to p2, whose receive ring is `receive` bytes."""

    layout: SegmentLayout
    src: PartitionLayout
    dst: PartitionLayout
    ring: receive_area.RingWords
    seq_word: int

    @classmethod
    def of(cls, receive: int, window: int = WINDOW) -> Machine:
        layout = plan_segment(MachineConfig(partitions=tuple(
            PartitionConfig(f"p{i}", i, receive + PAGE_SIZE, receive, receive_window=window)
            for i in (1, 2))))
        src, dst = layout.by_id()[1], layout.by_id()[2]
        return cls(layout, src, dst, receive_area.RingWords.of(dst),
                   receive_area.seq_words(layout)[src.index][dst.index])


SMALL = Machine.of(PAGE_SIZE)
CAPACITY = SMALL.dst.receive_size


def by_the_helpers(m: Machine, words, memory, data) -> int:
    """What commit_record must equal: the protocol's steps, one helper each."""
    head, tail = words[m.ring.head], words[m.ring.tail]
    receive_area.check_commit_words(words, m.dst, m.ring, head, tail, m.seq_word)
    r = reserve(head, tail, m.dst.receive_size, len(data), m.dst.window)
    first = receive_area.begin_commit(words, m.ring, r.new_head, m.src.index, m.seq_word, 1)
    payload = receive_area.write_record_header(memory, m.dst, r, 1, first)
    memory[payload:payload + len(data)] = data
    receive_area.publish_head(words, m.dst.control, r.new_head)
    return first


def flat(m: Machine, words, memory, data) -> int:
    return receive_area.commit_record(words, memory, m.dst, m.ring, 1, m.src.index, m.seq_word,
                                      data)


def outcome(commit, head: int, tail: int, pending: int, seq: int, data: bytes,
            m: Machine = SMALL):
    memory = memoryview(bytearray(m.layout.total_size))
    words = receive_area.words(memory)
    words[m.ring.head], words[m.ring.tail], words[m.ring.pending], words[m.seq_word] = (
        head, tail, pending, seq)
    try:
        result: object = commit(m, words, memory, memoryview(data))
    except XpmoveError as exc:
        result = (type(exc).__name__, str(exc))
    return result, bytes(memory)


NEED_64 = 88  # a record of 64 bytes: header and payload, aligned


@settings(max_examples=600, deadline=None)
@given(tail=st.integers(0, 4 * CAPACITY // ALIGN).map(lambda n: n * ALIGN),
       used=st.integers(0, CAPACITY // ALIGN).map(lambda n: n * ALIGN),
       count=st.integers(0, CAPACITY // 2),
       seq=st.one_of(st.integers(0, 1000), st.just(receive_area.SEQ_LIMIT)),
       forged=st.sampled_from(["none", "pending", "tail past head", "head",
                               "head and pending", "tail"]))
@example(tail=0, used=CAPACITY - NEED_64, count=64, seq=0, forged="none")  # exactly full
@example(tail=CAPACITY - NEED_64, used=0, count=64, seq=0, forged="none")  # ends at the end
@example(tail=CAPACITY - NEED_64 + ALIGN, used=0, count=64, seq=0, forged="none")  # a wrap
@example(tail=0, used=0, count=0, seq=0, forged="none")  # nothing to send
def test_commit_record_equals_the_protocols_helpers(tail, used, count, seq, forged):
    head = tail + used
    pending = head + ALIGN if forged == "pending" else head
    if forged == "tail past head":
        tail = head + ALIGN
    elif forged == "head":
        head += 1  # unaligned (and no longer the pending head)
    elif forged == "head and pending":
        head += 4  # unaligned, as the last commit left it
        pending = head
    elif forged == "tail":
        tail = max(0, tail - 4)  # unaligned
    data = bytes((i * 7 + 3) % 256 for i in range(count))
    assert outcome(flat, head, tail, pending, seq, data) == outcome(
        by_the_helpers, head, tail, pending, seq, data)


def test_the_flat_path_is_the_usual_case():
    """With the words as a commit left them and room before the ring's end, the record is
    where the helpers put it (the property above covers every other state)."""
    result, memory = outcome(flat, 64, 0, 64, 4, b"lone")
    assert result == 5
    words = memoryview(bytearray(memory)).cast("Q")
    assert words[SMALL.ring.head] == 64 + 32 and words[SMALL.seq_word] == 5



@pytest.mark.parametrize("window", [WINDOW, WINDOW // 4])  # the default, a partition's own
@pytest.mark.parametrize("head,tail", [  # as offsets from the window
    (-64, -64),  # empty, would end past the window: starts over
    (-88, -88),  # empty, ends exactly at the window: stays
    (-64, -72),  # not empty: stays
    (8 * WINDOW, 8 * WINDOW),  # empty, past the window: starts over
])
def test_commit_record_starts_over_as_reserve_does(window, head, tail):
    """A ring bigger than its window (ring.starts_over, PartitionLayout.window): the flat
    path must not place a record where reserve would not."""
    big = Machine.of(4 * WINDOW, window)
    data = b"x" * 64
    head, tail = window + head, window + tail
    assert outcome(flat, head, tail, head, 0, data, big) == outcome(
        by_the_helpers, head, tail, head, 0, data, big)
