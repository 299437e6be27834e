"""Zero-copy loans: the producer computes each frame straight into the consumer's receive area.

The producer (network ID 1) makes FRAMES frames of SAMPLES float64 values with numpy IN the
space the adapter reserved for them in the consumer's ring: a run of BATCH frames per loan
(`port.loan_run`), committed as one record. It has no buffer of its own and nothing copies
the bytes after numpy wrote them. First it takes one loan and gives it back unwritten: nothing
of it arrives, and its sequence number is the next loan's. The consumer (network ID 2) checks
that every frame came exactly once, in order, with the right values.

Run it from the repository root:

    xpmove run --config examples/loans.toml
"""

from __future__ import annotations

import numpy as np

from partitions import Port

PRODUCER, CONSUMER = 1, 2
SAMPLES = 64  # float64 values per frame
FRAME = SAMPLES * 8  # bytes
FRAMES = 400
BATCH = 25  # frames per loan: one record, BATCH sequence numbers
TIMEOUT_S = 10.0  # no room or no frame within this long: something is wrong, give up


def frame_values(i: int) -> np.ndarray:
    """What frame `i` holds."""
    return np.arange(SAMPLES, dtype=np.float64) + i * SAMPLES


def produce(port: Port) -> None:
    port.loan(CONSUMER, FRAME, timeout=TIMEOUT_S).give_back()  # delivers nothing
    for first in range(0, FRAMES, BATCH):
        with port.loan_run(CONSUMER, BATCH, FRAME, timeout=TIMEOUT_S) as run:
            for i in range(BATCH):
                samples = np.frombuffer(run.packet(i), np.float64)  # a view IN the ring
                samples[:] = frame_values(first + i)
                del samples  # nothing made from a loan may outlive it (else LoanExported)
        # leaving the block committed the run: the consumer can see it now


def consume(port: Port) -> None:
    for i in range(FRAMES):
        packet = port.receive(timeout=TIMEOUT_S)
        if packet is None:
            raise TimeoutError(f"frame {i} did not arrive within {TIMEOUT_S} s")
        values = np.frombuffer(packet.payload, np.float64)
        if packet.seq != i + 1 or not np.array_equal(values, frame_values(i)):
            raise ValueError(f"frame {i} arrived as sequence number {packet.seq} with "
                             f"values {values[:3]}...")
    print(f"consumer: {FRAMES} frames, each once and in order, computed in place by the "
          f"producer")


def main(port: Port) -> None:
    if port.network_id == PRODUCER:
        produce(port)
    else:
        consume(port)
