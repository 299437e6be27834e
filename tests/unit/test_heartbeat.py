"""Heartbeats between fabrics (cluster/heartbeat.py): states as their host says, a quiet host
down, and nothing changed by a datagram that is not a well-formed heartbeat of that host."""

from __future__ import annotations

import pytest

from cluster.heartbeat import DOORBELL, HOST_TIMEOUT_S, decode, encode, remote_states

HOST_OF = {1: 0, 2: 0, 3: 1, 4: 1}


def test_a_heartbeat_round_trips() -> None:
    assert decode(encode(1, {3: "dead", 4: "active"}), HOST_OF) == (1, {3: "dead", 4: "active"})


@pytest.mark.parametrize("datagram", [
    DOORBELL, b"", b"\2", b"\2not json", b"\2[]", b'\2{"host": 1}',
    b'\2{"host": "1", "states": {}}',
    b'\2{"host": 7, "states": {"3": "dead"}}', b'\2{"host": 1, "states": ["3"]}',
])
def test_what_is_not_a_heartbeat_is_ignored(datagram: bytes) -> None:
    assert decode(datagram, HOST_OF) is None


def test_a_host_speaks_only_for_its_own_partitions_and_known_states() -> None:
    beat = b'\2{"host": 1, "states": {"1": "gone", "3": "exploded", "4": "gone", "x": "dead"}}'
    assert decode(beat, HOST_OF) == (1, {4: "gone"})


def test_a_quiet_host_is_down_and_comes_back_when_heard() -> None:
    proxies = frozenset({3, 4})
    heard = {1: 100.0}
    assert remote_states(proxies, HOST_OF, heard, {4: "gone"}, 100.0 + HOST_TIMEOUT_S) == {
        3: "active", 4: "gone"}
    assert remote_states(proxies, HOST_OF, heard, {4: "gone"}, 100.1 + HOST_TIMEOUT_S) == {
        3: "dead", 4: "dead"}
