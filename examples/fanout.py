"""Fan-out: one sender, every other partition a receiver.

The partition with the lowest network ID sends PACKETS packets of SIZE bytes to every peer:
full batches of BATCH with `send_batch` (each batch is one multiple-write run: one request,
one record in the receiver's area, one move) and the remainder one by one with `send`. Peers
alternate between the flows (Fig 11, Fig 12, Fig 11, ...). Each receiver takes what arrives
with `receive_many`, checks that exactly PACKETS came, in order and intact, and returns.

Run it from the repository root:

    xpmove run --config examples/fanout.toml
"""

from __future__ import annotations

from partitions import Flow, Port

PACKETS = 1000  # per receiver
BATCH = 64  # packets per send_batch
SIZE = 64  # bytes per packet (a run's packets all have one length)
TIMEOUT_S = 10.0  # no packet within this long: something is wrong, give up


def packet(dst: int, i: int) -> bytes:
    """Packet `i` for network ID `dst`: its header, padded to SIZE bytes."""
    return f"to {dst} #{i:06d} ".encode().ljust(SIZE, b".")


def send_all(port: Port) -> None:
    for n, dst in enumerate(port.peers):
        flow = (Flow.FIG11, Flow.FIG12)[n % 2]
        full = PACKETS - PACKETS % BATCH
        for first in range(0, full, BATCH):
            batch = [packet(dst, i) for i in range(first, first + BATCH)]
            port.send_batch(dst, batch, flow, timeout=TIMEOUT_S)
        for i in range(full, PACKETS):
            port.send(dst, packet(dst, i), flow, timeout=TIMEOUT_S)
        print(f"{port.name}: sent {PACKETS} packets to {port.names[dst]} ({flow.value}): "
              f"{full // BATCH} batches of {BATCH}, {PACKETS - full} single")


def receive_all(port: Port, sender: int) -> None:
    got = 0
    while got < PACKETS:
        batch = port.receive_many(PACKETS - got, timeout=TIMEOUT_S)
        if not batch:
            raise TimeoutError(f"{port.name}: got {got} of {PACKETS} packets, then nothing "
                               f"for {TIMEOUT_S} s")
        for p in batch:
            want = packet(port.network_id, got)
            if p.source_id != sender or p.payload != want:
                raise AssertionError(f"{port.name}: packet {got}: expected {want!r} from "
                                     f"network ID {sender}, got {p.payload!r} from "
                                     f"network ID {p.source_id}")
            got += 1


def main(port: Port) -> None:
    sender = min(port.names)
    if port.network_id == sender:
        send_all(port)
    else:
        receive_all(port, sender)
