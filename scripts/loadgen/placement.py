"""Where the bench's partitions run: each route's sender and receiver on ONE CPU.

A packet filled on one core and checked on another crosses between the cores' caches line by
line; filled and checked on one core, it is read where it was written. The split floor
(floor.py) measures fill and check in two processes and keeps the better placement, and one
CPU for both won at every size. The bench places the transports' partitions the same way:
with `--placement pairs` (the default for disjoint routes, the pairs topology) each route's
two partitions are pinned to one CPU, the routes spread over the usable CPUs in turn. Every
transport runs in these partitions, the peers included, so they are placed alike; the adapter
and the virtual switch stay where the OS puts them. `--placement os` pins nothing.
Measured: benchmarks/README.md, "Placement".

A pinned route's receiver also gets a receive window of PAIR_WINDOW (config
`receive_window`): its ring's records start over past its first 2 MiB when it is empty, so
they stay in the caches of the core its sender shares with it (about 1.2x for fig12-lease
at 1 MiB b1 and b3, pinned; unpinned the same window cost fig11 up to 3x, so it is set only
here): benchmarks/README.md, "A window of 2 MiB".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypervisor.config import MachineConfig, PartitionConfig

PLACEMENTS = ("pairs", "os")
PAIR_WINDOW = 2 << 20  # the receive window of a pinned route's receiver (module doc)


def place_routes(config: MachineConfig, routes: Sequence[tuple[int, int]],
                 cpus: Sequence[int]) -> tuple[MachineConfig, dict[int, int]]:
    """(`config` with each route's two partitions pinned to one CPU of `cpus`, the routes
    taking the CPUs in turn, and each route's receiver given PAIR_WINDOW; {network ID: CPU}
    of what was pinned). Nothing is pinned (nor changed) when the
    routes share a partition (all-to-all: no one CPU per route), when the config pins any of
    their partitions itself (the user's placement wins), or when there is no CPU."""
    ends = [nid for route in routes for nid in route]
    pinned_by_config = {p.network_id for p in config.partitions if p.cpus is not None}
    if not cpus or len(set(ends)) != len(ends) or pinned_by_config & set(ends):
        return config, {}
    where = {nid: cpus[i % len(cpus)] for i, route in enumerate(routes) for nid in route}
    receivers = {dst for _, dst in routes}

    def placed(p: PartitionConfig) -> PartitionConfig:
        if p.network_id not in where:
            return p
        window = PAIR_WINDOW if p.network_id in receivers else p.receive_window
        return replace(p, cpus=(where[p.network_id],), receive_window=window)

    return replace(config, partitions=tuple(map(placed, config.partitions))), where


def placement_note(routes: Sequence[tuple[int, int]], placed: dict[int, int]) -> str:
    """How the routes were placed, for the bench's "machine up" line ("" if not pinned)."""
    if not placed:
        return ""
    return (" (" + ", ".join(f"{s}->{d} on CPU {placed[s]}" for s, d in routes)
            + f"; receive window {PAIR_WINDOW >> 20} MiB)")
