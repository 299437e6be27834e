"""Which records of a proxy ring one grant commits (pure; cluster/pull.py).

Each grant costs the fabric a round trip with its adapter (~50 us of CPU measured), and a
per-packet sender leaves about one packet per record; the senders of one host interleave
theirs in the proxy ring of a destination (counted in launch traffic: 15 to 80 records a pass,
3 to 5 of one source in a row). The records a pass finds are therefore grouped per source:
that source's single-packet records of one length, in their order, are committed together as
one multiple-write run. The destination sees each source's packets in the same order, each
with its own pair sequence number (the grant numbers them), exactly as if the source had sent
the run itself; only how two sources' packets interleave changes, which no pair's order
depends on.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapter.ring import KIND_RECORD, MAX_RUN_RECORDS, RecordView, run_size


def groups(records: Sequence[RecordView], largest: int) -> list[list[RecordView]]:
    """`records` (in ring order) as the groups that share a grant, in the order to commit
    them: each group holds one source's records, consecutive among that source's; a group of
    more than one holds single-packet records of one length, within `largest` bytes as a run
    (the destination ring's largest record) and MAX_RUN_RECORDS packets; a run record goes
    alone. Groups are ordered by their first record, so each source's stay in its order."""
    out: list[list[RecordView]] = []
    open_group: dict[int, list[RecordView]] = {}  # source -> its group still taking records
    for record in records:
        group = open_group.get(record.source_id)
        if (group is not None and record.kind == KIND_RECORD and group[0].kind == KIND_RECORD
                and record.length == group[0].length and len(group) < MAX_RUN_RECORDS
                and run_size(len(group) + 1, record.length) <= largest):
            group.append(record)
            continue
        group = [record]
        out.append(group)
        open_group[record.source_id] = group
    return out
