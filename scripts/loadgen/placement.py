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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypervisor.config import MachineConfig

PLACEMENTS = ("pairs", "os")


def place_routes(config: MachineConfig, routes: Sequence[tuple[int, int]],
                 cpus: Sequence[int]) -> tuple[MachineConfig, dict[int, int]]:
    """(`config` with each route's two partitions pinned to one CPU of `cpus`, the routes
    taking the CPUs in turn; {network ID: CPU} of what was pinned). Nothing is pinned when the
    routes share a partition (all-to-all: no one CPU per route), when the config pins any of
    their partitions itself (the user's placement wins), or when there is no CPU."""
    ends = [nid for route in routes for nid in route]
    pinned_by_config = {p.network_id for p in config.partitions if p.cpus is not None}
    if not cpus or len(set(ends)) != len(ends) or pinned_by_config & set(ends):
        return config, {}
    where = {nid: cpus[i % len(cpus)] for i, route in enumerate(routes) for nid in route}
    placed = tuple(replace(p, cpus=(where[p.network_id],)) if p.network_id in where else p
                   for p in config.partitions)
    return replace(config, partitions=placed), where


def placement_note(routes: Sequence[tuple[int, int]], placed: dict[int, int]) -> str:
    """How the routes were placed, for the bench's "machine up" line ("" if not pinned)."""
    if not placed:
        return ""
    return " (" + ", ".join(f"{s}->{d} on CPU {placed[s]}" for s, d in routes) + ")"
