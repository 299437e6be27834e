"""Ping-pong: round-trip latency between two partitions, in both flows.

The partition with the lower network ID sends PINGS pings to the other in each flow (Fig 11:
the adapter moves the bytes, then Fig 12: the sender's driver moves them under the granted
lock); the other answers every ping with a pong carrying the same payload, in the same flow.
The pinger checks every pong and prints p50 / p99 / mean round-trip time per flow.

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


def ping(port: Port, peer: int) -> None:
    for flow in Flow:
        rtts_us = []
        for i in range(PINGS):
            # "fig11:0007:" + random bytes: the flow tells the ponger how to answer
            payload = f"{flow.value}:{i:04d}:".encode()
            payload += os.urandom(SIZE - len(payload))
            start = time.perf_counter()
            port.send(peer, payload, flow, timeout=TIMEOUT_S)
            pong = expect(port, f"pong {i} of {PINGS} ({flow.value})")
            rtts_us.append((time.perf_counter() - start) * 1e6)
            if pong.payload != payload:
                raise AssertionError(f"{flow.value} pong {i}: payload differs from the ping: "
                                     f"sent {payload!r}, got {pong.payload!r}")
        p99 = statistics.quantiles(rtts_us, n=100)[98]
        print(f"{flow.value}: {PINGS} round trips of {SIZE} B: "
              f"p50 {statistics.median(rtts_us):.1f} us, p99 {p99:.1f} us, "
              f"mean {statistics.fmean(rtts_us):.1f} us")


def pong(port: Port) -> None:
    for n in range(PINGS * len(Flow)):
        packet = expect(port, f"ping {n + 1} of {PINGS * len(Flow)}")
        flow = Flow.parse(packet.payload.split(b":", 1)[0].decode())
        port.send(packet.source_id, packet.payload, flow, timeout=TIMEOUT_S)


def main(port: Port) -> None:
    first, second = sorted(port.names)[:2]
    if port.network_id == first:
        ping(port, second)
    else:
        pong(port)
