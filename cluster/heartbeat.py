"""Heartbeats between fabrics (pure): which host is up, and its partitions' states.

Every HEARTBEAT_S each fabric sends every other host one datagram, HEARTBEAT then JSON
{"host": h, "states": {network ID: "active" | "dead" | "gone"}}. A host not heard from for
HOST_TIMEOUT_S is down: its partitions count as "dead" everywhere else (DestinationDown,
retryable: it may come back). The datagrams come from anyone who can reach the port, so a
malformed one, or one naming a partition its host does not have, changes nothing.
"""

from __future__ import annotations

import json

HEARTBEAT_S = 0.25
HOST_TIMEOUT_S = 3.0
DOORBELL, HEARTBEAT = b"\1", b"\2"  # the first byte of a fabric's datagram
STATES = ("active", "dead", "gone")


def encode(host: int, states: dict[int, str]) -> bytes:
    return HEARTBEAT + json.dumps({"host": host, "states": states}).encode()


def decode(datagram: bytes, host_of: dict[int, int]) -> tuple[int, dict[int, str]] | None:
    """(host, its partitions' states) from a heartbeat datagram; None if it is not one, or
    names a host that has no partition; states of partitions not on that host are left out."""
    if datagram[:1] != HEARTBEAT:
        return None
    try:
        beat = json.loads(datagram[1:])
        host, states = beat["host"], beat["states"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(host, int) or host not in host_of.values() or not isinstance(states, dict):
        return None
    return host, {int(k): v for k, v in states.items()
                  if isinstance(k, str) and k.isdigit() and host_of.get(int(k)) == host
                  and v in STATES}


def remote_states(proxies: frozenset[int], host_of: dict[int, int], heard: dict[int, float],
                  states: dict[int, str], now: float) -> dict[int, str]:
    """Each proxy's state: its host's last word, or "dead" when its host went quiet."""
    return {nid: "dead" if now - heard[host_of[nid]] > HOST_TIMEOUT_S
            else states.get(nid, "active") for nid in proxies}
