"""The bench's lone-packet phase in rounds (scripts/loadgen/options.py: latency_shares)."""

from __future__ import annotations

import pytest

from scripts.loadgen.options import LATENCY_ROUNDS, latency_shares


@pytest.mark.parametrize("packets, shares", [
    (200, [50, 50, 50, 50]), (15, [4, 4, 4, 3]), (5, [2, 1, 1, 1]), (3, [1, 1, 1]), (1, [1]),
    (0, []),
])
def test_every_packet_is_in_one_round_and_the_rounds_are_even(packets, shares):
    assert latency_shares(packets) == shares
    assert sum(shares) == packets and len(shares) <= LATENCY_ROUNDS
