"""One pass of the fabric's pull over a proxy ring (cluster/pull.py), with the ring, the
gets, the puts and the commits played by this test: which records are committed, in which
order, how often, and where the tail goes. No MPI, no processes: the pass's own logic."""

from __future__ import annotations

import threading

import pytest

from adapter import receive_area
from adapter.ring import HEADER_SIZE, KIND_RECORD, align

pytest.importorskip("mpi4py", reason="cluster/pull.py imports MPI (the .[cluster] extra)")

from cluster.pull import Inbox, Puller  # noqa: E402

CAPACITY = 1 << 16


class FakeRing(Puller):
    """A proxy ring of single-packet records, laid one after the other from counter 0;
    `_commit` says no (None: try later) to the sources in `full`."""

    def __init__(self, sources: list[int], length: int = 100) -> None:
        self.box = Inbox(1, 9, receive_area.RingWords(0, 1, 2, 3, 4, 5, 6, 7, 8, 9), 0, CAPACITY)
        self.headers, tail, seqs = {}, 0, {}
        for source in sources:
            seqs[source] = seqs.get(source, 0) + 1
            self.headers[tail] = (KIND_RECORD, source, seqs[source], length)
            tail += align(HEADER_SIZE + length)
        self.head = tail
        self.full: set[int] = set()
        self.committed: list[tuple[int, int]] = []  # (source, seq), in commit order
        self.tail_puts: list[int] = []
        self.stats = {"retries": 0}
        self._tails, self._heads, self._ahead = {self.box: 0}, {}, {}
        self._stop = threading.Event()

    def _remote_word(self, host: int, index: int) -> int:
        assert index == self.box.ring.head
        return self.head

    def _read_header(self, box: Inbox, pos: int) -> tuple[int, int, int, int]:
        return self.headers[pos]

    def _put_word(self, host: int, index: int, value: int) -> None:
        assert index == self.box.ring.tail
        self.tail_puts.append(value)

    def _commit(self, box: Inbox, group: list) -> bool | None:
        if group[0].source_id in self.full:
            return None
        self.committed += [(r.source_id, r.seq) for r in group]
        return True


def test_interleaved_sources_are_committed_one_grant_each_in_their_order() -> None:
    ring = FakeRing([1, 2, 1, 2, 1])
    assert ring._pull(ring.box) == (True, False)
    assert ring.committed == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    assert ring.tail_puts == [ring.head] and ring._ahead[ring.box] == set()


def test_a_record_committed_past_one_that_waits_is_committed_once() -> None:
    ring = FakeRing([1, 2, 1, 2, 1])
    ring.full = {2}  # source 2's destination ring has no room yet
    assert ring._pull(ring.box) == (True, True)
    assert ring.committed == [(1, 1), (1, 2), (1, 3)]
    first = align(HEADER_SIZE + 100)
    assert ring.tail_puts == [first]  # past source 1's first record only: 2's waits next
    ring.full = set()
    assert ring._pull(ring.box) == (True, False)
    assert ring.committed == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]  # 1's not again
    assert ring.tail_puts == [first, ring.head] and ring._ahead[ring.box] == set()


def test_nothing_done_moves_no_tail() -> None:
    ring = FakeRing([2, 1])
    ring.full = {2}
    assert ring._pull(ring.box) == (False, True)
    assert ring.committed == [] and ring.tail_puts == []  # 1's group comes after 2's
