"""The cluster bench's pure parts (scripts/cluster_bench.py): the routes it takes from a
two-host config, the best run per transport, and issue 15's targets with both operands."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hypervisor.config import HostConfig, load_config
from scripts.cluster_bench import Result, best, routes, targets

KiB = 1024


def run(transport: str, route: str, size: int, batch: int, packets: int, cpu: float,
        problems: tuple[str, ...] = ()) -> Result:
    return Result(transport, route, size, batch, packets, cpu, problems)


def test_routes_cross_both_ways_and_pair_the_same_partitions_locally() -> None:
    assert routes(load_config("configs/two-hosts.toml")) == {
        "cross": [(1, 3), (4, 2)], "local": [(1, 2), (3, 4)]}


def test_a_host_of_one_partition_cannot_be_benched() -> None:
    lonely = replace(load_config("configs/two-hosts.toml"), hosts=(
        HostConfig("east", ("alpha", "bravo", "charlie")), HostConfig("west", ("delta",))))
    with pytest.raises(SystemExit, match="two hosts of at least two partitions"):
        routes(lonely)


def test_best_ignores_runs_that_lost_packets() -> None:
    results = [run("fig11", "cross", KiB, 1, 100, 1.0), run("fig11", "cross", KiB, 128, 900,
                                                            1.0, ("2 gaps",)),
               run("fig11", "cross", KiB, 16384, 500, 1.0)]
    chosen = best(results, "fig11", "cross", KiB)
    assert chosen is not None and chosen.batch == 16384


def test_targets_name_both_operands_and_say_met_or_missed() -> None:
    results = [run("fig11", "cross", KiB, 128, 300, 1.0), run("tcp", "cross", KiB, 1, 100, 1.0),
               run("fig11", "cross", 64 * KiB, 128, 100, 1.0),
               run("tcp", "cross", 64 * KiB, 128, 100, 1.0),
               run("fig11", "local", 64 * KiB, 128, 250, 1.0)]
    found = {what: (operands, verdict) for what, operands, verdict in targets(results)}
    assert found["cross-host fig11 >= 2x cross-host tcp, 1024 B"] == (
        "fig11 b128 300 vs tcp b1 100 pkt/CPU-s: 3.00x", "MET")
    assert found["cross-host fig11 >= 2x cross-host tcp, 65536 B"][1] == "MISSED"
    assert found["cross-host fig11 CPU per packet within 2x of same-host, 64 KiB"] == (
        "10,000.0 vs 4,000.0 us/packet: 2.50x", "MISSED")
    assert targets([])[0][2] == "not measured"
