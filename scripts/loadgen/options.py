"""The bench's names and options (scripts/loadgen/bench.py): its transports, default sizes,
batches and timings, and `BenchOptions`, what one `xpmove bench` run was asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapter.protocol import Flow
from scripts.loadgen import benchcore
from scripts.workload import peers as peer_transports
from scripts.workload.adapter_flows import LEASE, LOAN, SYNC_SUFFIX

ADAPTER_FLOWS = tuple(f.value for f in Flow)
SYNC_FLOWS = tuple(f + SYNC_SUFFIX for f in ADAPTER_FLOWS)  # batch 1 only: one request a packet
BATCHING = (*ADAPTER_FLOWS, LOAN)  # the adapter's transports the single-stream and scaling use
ADAPTER_TRANSPORTS = (*BATCHING, LEASE, *SYNC_FLOWS)  # every transport through the adapter
TRANSPORTS = (*ADAPTER_TRANSPORTS, "vswitch", "tcp", *peer_transports.PEERS)  # every one known
DEFAULT_TRANSPORTS = (*ADAPTER_TRANSPORTS, "vswitch", "tcp", *peer_transports.available())
DEFAULT_SIZES = (64, 1024, 64 * 1024, 1024 * 1024)
SAMPLE_S = 0.1
REPORT_S = 0.5
DRAIN_TIMEOUT_S = 15.0  # after the senders stop, how long receivers may take to catch up
PACKETS_TIMEOUT_S = 120.0  # a --packets run that takes longer than this is cut off
LATENCY_SAMPLES = 20_000  # per receiver, for the pooled percentiles
SWITCH_TIMEOUT_S = 10.0
# the patent's literal flow, a run of 128 packets, and 16384, which each transport cuts to
# what one batch of it holds (the adapter paths: runs of at most 8 MiB, RUN_BYTES in
# scripts/workload/adapter_flows.py): `xpmove bench --batch`'s default (a test keeps it so)
DEFAULT_BATCHES = (1, 128, 16384)
LATENCY_SIZE = 64
LATENCY_PACKETS = 200
# The lone-packet phase goes round the transports this many times, each round a share of the
# packets: a slow spell of the shared host (a phase is 0.4 s of 2 ms gaps) then falls on every
# transport alike instead of on the one measured at that moment.
LATENCY_ROUNDS = 4


def latency_shares(packets: int) -> list[int]:
    """How many lone packets each round of the latency phase sends: `packets` split over
    LATENCY_ROUNDS rounds (fewer if there are fewer packets), as evenly as it goes."""
    return [k for k in (packets // LATENCY_ROUNDS + (i < packets % LATENCY_ROUNDS)
                        for i in range(LATENCY_ROUNDS)) if k]
LATENCY_INTERVAL_S = 0.002  # pace of the lone packets: one per 2 ms, each alone on the path
SIXTEEN = Path(__file__).resolve().parents[2] / "configs" / "sixteen.toml"


@dataclass(frozen=True)
class BenchOptions:
    transports: tuple[str, ...] = DEFAULT_TRANSPORTS
    sizes: tuple[int, ...] | None = None  # None: DEFAULT_SIZES, capped to what the rings take
    duration: float | None = 2.0  # seconds of sending per run (ignored with packets)
    packets: int | None = None  # per sender and destination
    topology: str = "pairs"
    pairs: str | None = None  # explicit "1:2,3:4", overrides topology
    placement: str = "pairs"  # placement.PLACEMENTS: each route on one CPU, or the OS decides
    batches: tuple[int, ...] = DEFAULT_BATCHES  # every (transport, size) runs once per value
    latency: bool = True  # the lone-packet latency phase
    latency_packets: int = LATENCY_PACKETS
    latency_interval: float = LATENCY_INTERVAL_S
    single_stream: bool = True  # the single-stream 1 MiB phase (bytes/s against memcpy)
    scaling: bool = False  # the 2- against 16-partition phase
    scaling_config: str | None = None  # None: configs/sixteen.toml
    json_path: str | None = None
    plot_path: str | None = None
    markdown_path: str | None = None
    warmup: float = benchcore.WARMUP
    tail: float = benchcore.TAIL
    config: str = ""  # what machine ran: the --config path or the built-in bench machine
    command: str = ""


