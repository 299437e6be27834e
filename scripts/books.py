"""The run's books, read from the segment: per ordered pair of partitions, what the adapter
accepted and what the destination's receiver consumed.

For every ordered pair (source, destination) the segment holds two words: the pair's sequence
word, the last sequence number the adapter committed (rolled back for every abandoned commit),
and the delivered word, the last one the destination's receiver consumed (written after its
handler returned). Both outlive any partition: a killed partition's own counters die with its
process, its books do not. `xpmove launch` and `xpmove soak` count from them.

On a cluster each host's segment holds the books of its own side of every pair: the sequence
word of a local source (for a remote destination, that of its proxy ring here: what was
accepted) and the delivered word of a local destination (what arrived). Summed over the hosts,
each pair is counted once on each side.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from adapter import receive_area
from hypervisor.layout import SegmentLayout

Pair = tuple[int, int]  # (source network ID, destination network ID)


def pair_books(memory: memoryview, layout: SegmentLayout) -> dict[Pair, tuple[int, int]]:
    """(committed, delivered) of every ordered pair of distinct partitions."""
    words = receive_area.words(memory)
    return {(src.network_id, dst.network_id):
            (words[layout.seq_address(src.index, dst.index) >> 3],
             words[layout.delivered_address(src.index, dst.index) >> 3])
            for src in layout.partitions for dst in layout.partitions if src.index != dst.index}


def destination_books(pairs: Mapping[Pair, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Per destination, (committed, delivered) summed over every source (pure)."""
    books: dict[int, tuple[int, int]] = {}
    for (_, dst), (committed, delivered) in pairs.items():
        c, d = books.get(dst, (0, 0))
        books[dst] = (c + committed, d + delivered)
    return books


def partition_counts(pairs: Mapping[Pair, tuple[int, int]], local: Iterable[int]
                     ) -> dict[int, dict[str, dict[str, int]]]:
    """For each partition in `local`, its packets out by destination (what the adapter
    accepted from it) and in by source (what its receiver consumed), in the shape of the
    workload's `sent` and `received` counters (pure)."""
    counts = {nid: {"sent": {}, "received": {}} for nid in local}
    for (src, dst), (committed, delivered) in pairs.items():
        if src in counts and committed:
            counts[src]["sent"][str(dst)] = committed
        if dst in counts and delivered:
            counts[dst]["received"][str(src)] = delivered
    return counts


def accepted_from(pairs: Mapping[Pair, tuple[int, int]], source: int,
                  destinations: Collection[int]) -> dict[int, int]:
    """What the adapter has accepted from `source` for each of `destinations` (pure)."""
    return {dst: pairs.get((source, dst), (0, 0))[0] for dst in destinations}
