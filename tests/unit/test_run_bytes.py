"""How many packets the adapter paths put in one run (scripts/workload/adapter_flows.py,
`batch_limit`): what the smallest ring holds, and at most RUN_BYTES. Pure: the port is a stub
that answers `max_record` only."""

from __future__ import annotations

from adapter.protocol import Flow
from adapter.ring import MAX_RUN_RECORDS, RUN_DESCRIPTOR, max_payload
from scripts.workload.adapter_flows import RUN_BYTES, AdapterFlow

KiB, MiB = 1024, 1024 * 1024


class RingsOf:
    """A port whose smallest receive ring is `ring` bytes."""

    def __init__(self, ring: int):
        self.ring = ring

    def max_record(self) -> int:
        return max_payload(self.ring)


def test_a_run_is_capped_at_run_bytes_in_big_rings():
    flow = AdapterFlow(RingsOf(32 * MiB), Flow.FIG12)  # type: ignore[arg-type]
    assert RUN_BYTES == 8 * MiB
    assert flow.batch_limit(KiB) == (RUN_BYTES - RUN_DESCRIPTOR.size) // KiB == 8191
    assert flow.batch_limit(64 * KiB) == 127
    assert flow.batch_limit(MiB) == 7
    assert flow.batch_limit(64) == MAX_RUN_RECORDS  # 64 B packets: the request's own cap


def test_a_small_ring_caps_a_run_below_run_bytes():
    flow = AdapterFlow(RingsOf(4 * MiB), Flow.FIG11)  # type: ignore[arg-type]
    assert flow.batch_limit(64 * KiB) == 31  # half the ring, less the header and descriptor
    assert flow.batch_limit(MiB) == 1
