"""Pipeline: three partitions in a chain, stage 1 -> stage 2 -> stage 3.

The stages are the partitions in network-ID order. Stage 1 sends MESSAGES messages to stage 2
(Fig 11: the adapter moves them); stage 2 transforms each (upper case plus a CRC-32) and
forwards it to stage 3 (Fig 12: its driver moves them under the granted lock); stage 3 checks
that every message arrived exactly once, in order and transformed, and raises AssertionError
naming the first one that did not. A full receive area slows the stage before it down: its
send retries until there is room again (or `timeout` passes).

Run it from the repository root:

    xpmove run --config examples/pipeline.toml
"""

from __future__ import annotations

import zlib

from partitions import Flow, Packet, Port

MESSAGES = 500
TIMEOUT_S = 10.0  # no packet within this long: something is wrong, give up
EXTRA_WAIT_S = 0.2  # stage 3 waits this long for a (wrong) extra message at the end


def expect(port: Port, what: str) -> Packet:
    """The next packet, or an error saying what did not come."""
    packet = port.receive(timeout=TIMEOUT_S)
    if packet is None:
        raise TimeoutError(f"{port.name}: no {what} within {TIMEOUT_S} s")
    return packet


def original(i: int) -> bytes:
    return f"message {i:05d} of {MESSAGES}".encode()


def transform(data: bytes) -> bytes:
    """Stage 2's work: upper case, then the CRC-32 of the result."""
    upper = data.upper()
    return upper + f" crc32={zlib.crc32(upper):08x}".encode()


def main(port: Port) -> None:
    chain = sorted(port.names)  # network IDs of stage 1, 2, 3
    stage = chain.index(port.network_id) + 1
    if stage == 1:
        for i in range(MESSAGES):
            port.send(chain[1], original(i), Flow.FIG11, timeout=TIMEOUT_S)
    elif stage == 2:
        for i in range(MESSAGES):
            packet = expect(port, f"message {i} of {MESSAGES} from {port.names[chain[0]]}")
            port.send(chain[2], transform(packet.payload), Flow.FIG12, timeout=TIMEOUT_S)
    else:
        for i in range(MESSAGES):
            packet = expect(port, f"message {i} of {MESSAGES} from {port.names[chain[1]]}")
            want = transform(original(i))
            if packet.source_id != chain[1] or packet.payload != want:
                raise AssertionError(
                    f"message {i}: expected {want!r} from network ID {chain[1]}, got "
                    f"{packet.payload!r} from network ID {packet.source_id}")
        extra = port.receive(timeout=EXTRA_WAIT_S)
        if extra is not None:
            raise AssertionError(f"a message after the last one: {extra.payload!r}")
        print(f"{port.name}: all {MESSAGES} messages arrived once, in order, transformed")
