"""Landing rings: where one host's fabric puts records for another host's partitions (pure).

Every host exposes ONE MPI window, its landing area: one ring per (other host, partition of
this host). A landing ring mirrors the source host's *outbound ring* towards that partition
(the receive area of the partition's proxy there, hypervisor/gateway.py) byte for byte: same
capacity, same byte counters, so a record sits at the same ring offset in both and a run of
whole records is shipped with one put per contiguous span, headers, padding and all.

Each ring has one writer (the source host's fabric, over MPI) and one reader (this host's
fabric): its head word is written remotely, its tail word locally, in two cache lines.

Invariants:
* The landing head equals the outbound tail: the source publishes the outbound tail only after
  the records and then the landing head are in the destination host's memory (MPI flush), so
  a record is never in neither ring, and it is shipped once.
* Only whole records are shipped (`shippable`): the reader never sees a record cut at the head.
* A writer never passes the landing tail, exactly as in a receive ring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from adapter.ring import next_record
from hypervisor.config import MachineConfig
from hypervisor.layout import CACHE_LINE, page_align

WORDS_SIZE = 2 * CACHE_LINE  # head line (written by the source host), tail line (by the reader)


class LandingRing(NamedTuple):
    source_host: int
    dst_id: int
    words: int  # window offset of the head word; the tail word is CACHE_LINE after it
    data: int  # window offset of the ring's first byte
    capacity: int

    @property
    def tail_word(self) -> int:
        return self.words + CACHE_LINE


def plan_landing(config: MachineConfig, host: int) -> tuple[tuple[LandingRing, ...], int]:
    """`host`'s landing rings and its window's size: one ring per (other host, partition of
    `host`), in host then config order, of the destination's receive-area capacity. Every host
    computes every plan (pure), so a source knows where to put without asking."""
    host_of = config.host_of()
    local = [p for p in config.partitions if host_of[p.network_id] == host]
    sources = [h for h in range(len(config.hosts)) if h != host]
    pairs = [(h, p) for h in sources for p in local]
    cursor = page_align(len(pairs) * WORDS_SIZE)
    rings = []
    for i, (h, p) in enumerate(pairs):
        rings.append(LandingRing(h, p.network_id, i * WORDS_SIZE, cursor, p.receive_size))
        cursor += page_align(p.receive_size)
    return tuple(rings), max(cursor, page_align(1))


def shippable(tail: int, head: int, capacity: int, landing_tail: int,
              read_header: Callable[[int], tuple[int, int, int, int]]) -> int:
    """The counter up to which the outbound ring's committed bytes [tail, head) can be shipped
    now: whole records only, and no further than the landing ring's free space (its reader is
    at `landing_tail`). `tail` when nothing fits; RingCorrupt from a bad header."""
    limit = landing_tail + capacity
    end = tail
    while end < head:
        record = next_record(end, head, capacity, read_header)
        if record is None:  # only padding left before head
            return head if head <= limit else end
        if record.next_tail > limit:
            break
        end = record.next_tail
    return end


def spans(start: int, end: int, capacity: int) -> list[tuple[int, int]]:
    """The ring offsets and lengths of the counters [start, end): one span, or two when the
    range wraps the end of the ring."""
    if end <= start:
        return []
    pos = start % capacity
    first = min(end - start, capacity - pos)
    out = [(pos, first)]
    if first < end - start:
        out.append((0, end - start - first))
    return out
