"""The cork's pure core (partitions.submissions), without processes or threads: where each
queued packet goes, when a run is sealed, which buffer the flusher gets, the count of packets
still queued, and how a buffer's runs become adapter requests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import DestinationFull, XpmoveError
from adapter.protocol import Flow
from adapter.ring import ALIGN, MAX_RUN_RECORDS, RUN_DESCRIPTOR, align, check_run
from partitions.cork import QueuedFailure, QueuedSendFailed
from partitions.submissions import BufferState, SubmissionBook, requests_of

D = RUN_DESCRIPTOR.size
BIG = 1 << 30  # a destination whose largest record is no limit here
F11, F12 = Flow.FIG11, Flow.FIG12


def place(book: SubmissionBook, dst: int = 2, length: int = 100, flow: Flow = F11,
          limit: int = BIG, timeout: float | None = None) -> int | None:
    return book.place(dst, flow, length, 0.0, (dst, flow, length, timeout, None), limit)


def test_packets_of_one_key_fill_one_run_laid_out_as_the_ring_holds_it():
    book = SubmissionBook(4096, 2 * 1024)
    offsets = [place(book) for _ in range(5)]
    assert offsets == [4096 + D + i * align(100) for i in range(5)]
    buf = book.take()
    assert buf is not None and len(buf.runs) == 1
    run = buf.runs[0]
    assert (run.dst, run.packets, run.length, run.first, run.last) == (2, 5, 100, 1, 5)
    assert check_run(run.size, run.packets, run.length) == align(100)
    assert run.offset == buf.offset == 4096


@pytest.mark.parametrize("change", [dict(dst=3), dict(flow=F12), dict(length=101),
                                    dict(timeout=1.0)])
def test_a_change_of_destination_flow_length_or_timeout_starts_a_new_run(change):
    book = SubmissionBook(0, 4096)
    place(book)
    second = place(book, **change)
    buf = book.take()
    assert buf is not None and [r.packets for r in buf.runs] == [1, 1]
    assert second == buf.runs[1].offset + D  # the new run starts after the first, aligned
    assert buf.runs[1].offset == D + align(100)
    assert buf.runs[1].first == 2


def test_a_run_is_sealed_at_the_destinations_largest_record():
    limit = D + 3 * align(100)  # three packets fit one record of this destination
    book = SubmissionBook(0, 8192)
    for _ in range(7):
        place(book, limit=limit)
    buf = book.take()
    assert buf is not None and [r.packets for r in buf.runs] == [3, 3, 1]
    assert all(r.size <= limit for r in buf.runs)


def test_a_run_never_exceeds_the_most_packets_a_request_carries():
    book = SubmissionBook(0, 2 * (2 * D + (MAX_RUN_RECORDS + 1) * ALIGN))
    for _ in range(MAX_RUN_RECORDS + 1):
        place(book, length=1)
    buf = book.take()
    assert buf is not None and [r.packets for r in buf.runs] == [MAX_RUN_RECORDS, 1]


def test_a_full_buffer_is_sealed_and_the_next_fills_then_back_pressure():
    book = SubmissionBook(0, 2 * (D + 4 * 104))  # each buffer holds one run of 4
    assert book.capacity == D + 4 * 104
    first = [place(book) for _ in range(4)]
    fifth = place(book)  # buffer 0 is full: sealed, buffer 1 fills
    assert fifth == book.capacity + D
    assert [b.state for b in book.buffers] == [BufferState.SEALED, BufferState.FILLING]
    for _ in range(3):
        assert place(book) is not None
    assert place(book) is None  # both full, none in flight yet: wait
    assert book.queued == 8 and book.submitted == 8
    a = book.take()
    assert a is not None and a.offset == 0 and a.packets == 4 and first[0] == D
    assert book.take() is None  # one buffer in flight at a time
    assert place(book) is None  # still nothing free
    assert book.release(a) == 4 and book.queued == 4
    assert place(book) == D  # the freed buffer fills again
    b = book.take()
    assert b is not None and b.offset == book.capacity and b.packets == 4  # oldest first
    book.release(b)
    c = book.take()
    assert c is not None and c.offset == 0 and c.runs[0].first == 9
    book.release(c)
    assert book.queued == 0 and book.take() is None
    assert all(x.state is BufferState.FREE for x in book.buffers)


def test_the_flusher_takes_a_partly_filled_buffer_and_filling_goes_on_in_the_other():
    book = SubmissionBook(0, 4096)
    place(book)
    a = book.take()  # the autocork: nothing in flight, so the first packet goes at once
    assert a is not None and a.packets == 1
    assert place(book) == 2048 + D  # meanwhile the next packets gather in the other buffer
    assert place(book) == 2048 + D + align(100)
    assert book.take() is None
    book.release(a)
    b = book.take()
    assert b is not None and b.packets == 2 and b.runs[0].first == 2


def test_take_lone_takes_only_the_one_packet_queued_and_hand_back_requeues_it_first():
    book = SubmissionBook(4096, 2 * 1024)
    assert book.take_lone() is None  # nothing queued
    place(book)
    place(book)
    assert book.take_lone() is None  # two packets: the flusher's run, not a lone one
    buf = book.take()
    assert buf is not None
    book.release(buf)
    place(book)
    lone = book.take_lone()
    assert lone is not None and lone.state is BufferState.IN_FLIGHT
    assert [(r.packets, r.first) for r in lone.runs] == [(1, 3)]
    place(book, dst=3)
    assert book.take_lone() is None  # one in flight already
    book.hand_back(lone)  # not sent after all: the flusher takes it first, then the next
    assert lone.state is BufferState.SEALED and book.queued == 2
    first = book.take()
    assert first is lone
    book.release(first)
    with pytest.raises(ValueError, match="hand_back of a buffer at 4096 that is free"):
        book.hand_back(first)
    second = book.take()
    assert second is not None and [r.dst for r in second.runs] == [3]


def test_fits_and_release_of_a_buffer_not_in_flight():
    book = SubmissionBook(0, 2 * 256)
    assert book.fits(256 - D, BIG) and not book.fits(256 - D + 1, BIG)
    assert not book.fits(0, BIG) and not book.fits(100, D + 99)
    assert not SubmissionBook(0, 0).fits(1, BIG)  # an area too small queues nothing
    with pytest.raises(ValueError, match="free"):
        book.release(book.buffers[0])


def test_pending_runs_lists_in_flight_then_queued_in_order():
    book = SubmissionBook(0, 2 * (D + 2 * 104))
    for dst in (2, 2, 3):
        place(book, dst=dst)
    assert book.take() is not None
    assert [(r.dst, r.first, f) for r, f in book.pending_runs()] == [(2, 1, True), (3, 3, False)]


@given(st.lists(st.tuples(st.integers(2, 4), st.sampled_from([1, 8, 100, 300]),
                          st.booleans()), min_size=1, max_size=200))
def test_every_packet_is_placed_once_in_order_without_overlap(ops):
    """Random destinations, lengths and flusher steps: every placed packet appears in exactly
    one run, runs keep submission order, nothing overlaps, each run tiles its bytes."""
    book = SubmissionBook(64, 2 * 1024)
    flown: list = []
    in_flight = None
    placed = 0
    for dst, length, step in ops:
        if step:
            if in_flight is not None:
                book.release(in_flight)
            in_flight = book.take()
            if in_flight is not None:
                flown.append([(r.first, r.packets, r.dst, r.length, r.offset, r.size)
                              for r in in_flight.runs])
        if place(book, dst=dst, length=length) is not None:
            placed += 1
    while True:
        if in_flight is not None:
            book.release(in_flight)
        in_flight = book.take()
        if in_flight is None:
            break
        flown.append([(r.first, r.packets, r.dst, r.length, r.offset, r.size)
                      for r in in_flight.runs])
    runs = [r for buf in flown for r in buf]
    assert sum(r[1] for r in runs) == placed == book.submitted and book.queued == 0
    assert [r[0] for r in runs] == [1 + sum(x[1] for x in runs[:i]) for i in range(len(runs))]
    for buf in flown:
        spans = sorted((r[4], r[4] + r[5]) for r in buf)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert all(64 <= s and e <= 64 + 2048 for s, e in spans)
    for _, packets, _, length, offset, size in runs:
        assert offset % ALIGN == 0 and check_run(size, packets, length) == align(length)


def test_the_failure_error_names_destination_flow_and_packets():
    failures = [QueuedFailure(2, F11, 17, 49, 1024, 16, DestinationFull("need 1048 bytes")),
                QueuedFailure(3, F12, 50, 50, 64, 0, XpmoveError("x"))]
    exc = QueuedSendFailed(failures)
    assert exc.packets == 34 and exc.error is failures[0].error and not exc.retryable
    assert str(exc) == ("34 queued packets were not moved: packets #17-#49 (33 of 1024 B) to "
                        "network ID 2 by fig11, after its seq 16: DestinationFull: need 1048 "
                        "bytes (and 1 more runs)")


def test_append_continues_only_the_open_run_of_the_same_key():
    """The fast path: a packet of the open run's key goes right after it; any other key, a
    run at its limit, or a buffer taken by the flusher needs `place` (append changes
    nothing then)."""
    book = SubmissionBook(0, 2 * (D + 3 * 104))
    key = (2, F11, 100, None, None)
    assert book.append(key) is None and book.submitted == 0  # nothing open yet
    assert place(book) == D
    assert book.append(key) == D + 104
    assert book.append((3, F11, 100, None, None)) is None
    assert book.append(key) == D + 2 * 104
    assert book.append(key) is None  # the buffer is full: place seals it
    assert book.submitted == book.queued == 3
    assert place(book) == book.capacity + D
    a = book.take()
    assert a is not None and a.packets == 3
    b = book.take()
    assert b is None  # one in flight at a time
    book.release(a)
    b = book.take()
    assert b is not None and b.packets == 1
    assert book.append(key) is None  # the taken buffer's run is closed
    assert place(book) == D


def runs_of(book: SubmissionBook) -> list:
    buf = book.take()
    assert buf is not None
    return buf.runs


def test_lone_packets_to_alternating_destinations_share_requests_in_pair_order():
    """Launch's pattern: each peer in turn, both flows. Requests take lone packets of one flow
    to distinct destinations; per destination the submission order stays."""
    book = SubmissionBook(0, 1 << 16)
    pattern = [(d, f) for _ in range(3) for d in (2, 3, 4) for f in (F11, F12)]
    for dst, flow in pattern:
        place(book, dst=dst, flow=flow)
    requests = requests_of(runs_of(book))
    assert [[(r.dst, r.flow) for r in q] for q in requests[:2]] == [
        [(2, F11), (3, F11), (4, F11)], [(2, F12), (3, F12), (4, F12)]]
    assert len(requests) == 6
    for q in requests:
        assert len({r.dst for r in q}) == len(q) and len({r.flow for r in q}) == 1
    order = [r.first for q in requests for r in q]
    assert sorted(order) == list(range(1, len(pattern) + 1))
    for dst in (2, 3, 4):  # per destination, in submission order
        mine = [r.first for q in requests for r in q if r.dst == dst]
        assert mine == sorted(mine)


def test_a_multi_packet_run_goes_alone_and_blocks_its_destination():
    book = SubmissionBook(0, 1 << 16)
    place(book, dst=2)
    place(book, dst=3)
    place(book, dst=3)  # joins: a run of two to 3
    place(book, dst=4, length=50)
    place(book, dst=3, length=50)
    requests = requests_of(runs_of(book))
    assert [[(r.dst, r.packets) for r in q] for q in requests] == [
        [(2, 1), (4, 1)], [(3, 2)], [(3, 1)]]


@given(st.lists(st.tuples(st.integers(2, 5), st.booleans(), st.integers(1, 3)), max_size=120),
       st.integers(1, 4), st.integers(1, 8))
def test_requests_keep_every_run_once_and_each_destinations_order(ops, most, lookahead):
    book = SubmissionBook(0, 1 << 20)
    for dst, fig12, n in ops:
        for _ in range(n):
            place(book, dst=dst, flow=F12 if fig12 else F11)
    buf = book.take()
    runs = buf.runs if buf is not None else []
    requests = requests_of(runs, most, lookahead)
    flat = [r for q in requests for r in q]
    assert sorted(r.first for r in flat) == [r.first for r in runs]
    for q in requests:
        assert len(q) <= most
        assert len(q) == 1 or (all(r.packets == 1 for r in q)
                               and len({r.dst for r in q}) == len(q)
                               and len({r.flow for r in q}) == 1)
    for dst in range(2, 6):
        mine = [r.first for r in flat if r.dst == dst]
        assert mine == sorted(mine)
