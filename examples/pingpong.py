"""Ping-pong: round-trip latency between two partitions, in both flows and under leases.

The partition with the lower network ID sends PINGS pings to the other in each flow (Fig 11:
the adapter moves the bytes, then Fig 12: the sender's driver moves them under the granted
lock), then under a lease (`port.lease`: the driver keeps the destination's lock and commits
each ping itself, no request to the adapter); the other answers every ping with a pong
carrying the same payload, the same way. The pinger checks every pong and prints p50 / p99 /
mean round-trip time for each.

Run it from the repository root:

    xpmove run --config examples/pingpong.toml
"""

from __future__ import annotations

import os
import statistics
import time

from partitions import Flow, Packet, Port

PINGS = 200  # round trips per flow
SIZE = 64  # bytes per ping
TIMEOUT_S = 10.0  # no packet within this long: something is wrong, give up


def expect(port: Port, what: str) -> Packet:
    """The next packet, or an error saying what did not come."""
    packet = port.receive(timeout=TIMEOUT_S)
    if packet is None:
        raise TimeoutError(f"{port.name}: no {what} within {TIMEOUT_S} s")
    return packet


LEASE = "lease"
WAYS = (*(f.value for f in Flow), LEASE)  # how a ping (and its pong) travels


def ping(port: Port, peer: int) -> None:
    for way in WAYS:
        lease = port.lease(peer, timeout=TIMEOUT_S) if way == LEASE else None
        rtts_us = []
        for i in range(PINGS):
            # "fig11:0007:" + random bytes: the way tells the ponger how to answer
            payload = f"{way}:{i:04d}:".encode()
            payload += os.urandom(SIZE - len(payload))
            start = time.perf_counter()
            if lease is None:
                port.send(peer, payload, way, timeout=TIMEOUT_S)
            else:
                lease.send(payload, timeout=TIMEOUT_S)
            pong = expect(port, f"pong {i} of {PINGS} ({way})")
            rtts_us.append((time.perf_counter() - start) * 1e6)
            if pong.payload != payload:
                raise AssertionError(f"{way} pong {i}: payload differs from the ping: "
                                     f"sent {payload!r}, got {pong.payload!r}")
        if lease is not None:
            lease.close()
        p99 = statistics.quantiles(rtts_us, n=100)[98]
        print(f"{way}: {PINGS} round trips of {SIZE} B: "
              f"p50 {statistics.median(rtts_us):.1f} us, p99 {p99:.1f} us, "
              f"mean {statistics.fmean(rtts_us):.1f} us")


def pong(port: Port) -> None:
    lease = None
    for n in range(PINGS * len(WAYS)):
        packet = expect(port, f"ping {n + 1} of {PINGS * len(WAYS)}")
        way = packet.payload.split(b":", 1)[0].decode()
        if way != LEASE:
            port.send(packet.source_id, packet.payload, Flow.parse(way), timeout=TIMEOUT_S)
            continue
        if lease is None:
            lease = port.lease(packet.source_id, timeout=TIMEOUT_S)
        lease.send(packet.payload, timeout=TIMEOUT_S)
    if lease is not None:
        lease.close()


def main(port: Port) -> None:
    first, second = sorted(port.names)[:2]
    if port.network_id == first:
        ping(port, second)
    else:
        pong(port)
