"""receive_area.commit_record (a lease's one-record commit, flat for a cold cache) against the
commit protocol's own helpers composed in their order: for any state of the ring's words, the
same record, the same words, the same sequence number, or the same error with nothing written.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapter import receive_area
from adapter.errors import XpmoveError
from adapter.ring import ALIGN, reserve
from hypervisor.config import PAGE_SIZE, MachineConfig, PartitionConfig
from hypervisor.layout import plan_segment

LAYOUT = plan_segment(MachineConfig(partitions=tuple(
    PartitionConfig(f"p{i}", i, 4 * PAGE_SIZE, PAGE_SIZE) for i in (1, 2))))
SRC, DST = LAYOUT.by_id()[1], LAYOUT.by_id()[2]
RING = receive_area.RingWords.of(DST)
SEQ_WORD = receive_area.seq_words(LAYOUT)[SRC.index][DST.index]
CAPACITY = DST.receive_size


def by_the_helpers(words, memory, data) -> int:
    """What commit_record must equal: the protocol's steps, one helper each."""
    head, tail = words[RING.head], words[RING.tail]
    receive_area.check_commit_words(words, DST, RING, head, tail, SEQ_WORD)
    r = reserve(head, tail, CAPACITY, len(data))
    first = receive_area.begin_commit(words, RING, r.new_head, SRC.index, SEQ_WORD, 1)
    payload = receive_area.write_record_header(memory, DST, r, 1, first)
    memory[payload:payload + len(data)] = data
    receive_area.publish_head(words, DST.control, r.new_head)
    return first


def outcome(commit, head: int, tail: int, pending: int, seq: int, data: bytes):
    memory = memoryview(bytearray(LAYOUT.total_size))
    words = receive_area.words(memory)
    words[RING.head], words[RING.tail], words[RING.pending], words[SEQ_WORD] = (
        head, tail, pending, seq)
    try:
        result: object = commit(words, memory, memoryview(data))
    except XpmoveError as exc:
        result = (type(exc).__name__, str(exc))
    return result, bytes(memory)


def flat(words, memory, data) -> int:
    return receive_area.commit_record(words, memory, DST, RING, 1, SRC.index, SEQ_WORD, data)


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
    assert words[RING.head] == 64 + 32 and words[SEQ_WORD] == 5
