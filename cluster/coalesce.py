"""Which records of a proxy ring one grant commits (pure; cluster/fabric.py).

Each grant costs the fabric a round trip with its adapter (~50 us of CPU measured), and a
per-packet sender leaves about one packet per record. Consecutive single-packet records of one
source with one length are therefore committed together, as one multiple-write run: the
destination sees the same packets, in the same order, each with its own pair sequence number
(the grant numbers them), exactly as if the source had sent the run itself.
"""

from __future__ import annotations

from collections.abc import Callable

from adapter.ring import KIND_RECORD, MAX_RUN_RECORDS, RUN_DESCRIPTOR, RecordView, align


def run_size(packets: int, length: int) -> int:
    """Bytes of a run of `packets` packets of `length` bytes (descriptor, padded packets)."""
    return RUN_DESCRIPTOR.size + packets * align(length)


def coalesce(first: RecordView, following: Callable[[RecordView], RecordView | None],
             largest: int) -> list[RecordView]:
    """`first` and the records after it that may share its grant: single-packet records of
    the same source and length, while the run stays within `largest` bytes (the destination
    ring's largest record) and MAX_RUN_RECORDS packets. `following(r)` is the record after r,
    or None. A run record is committed alone."""
    group = [first]
    if first.kind != KIND_RECORD:
        return group
    while (len(group) < MAX_RUN_RECORDS
           and run_size(len(group) + 1, first.length) <= largest):
        nxt = following(group[-1])
        if (nxt is None or nxt.kind != KIND_RECORD or nxt.source_id != first.source_id
                or nxt.length != first.length):
            break
        group.append(nxt)
    return group
