"""Where the bench places its routes (scripts/loadgen/placement.py): pure, no processes."""

from __future__ import annotations

from dataclasses import replace

from hypervisor.config import DEFAULT_RECEIVE_WINDOW, default_config
from scripts.loadgen.benchcore import routes
from scripts.loadgen.placement import PAIR_WINDOW, place_routes, placement_note

CONFIG = default_config()  # four partitions, network IDs 1..4, none pinned


def cpus_of(config) -> dict[int, tuple[int, ...] | None]:
    return {p.network_id: p.cpus for p in config.partitions}


def test_each_route_goes_to_one_cpu_and_the_routes_take_the_cpus_in_turn():
    placed, where = place_routes(CONFIG, routes([1, 2, 3, 4], "pairs"), [0, 1])
    assert where == {1: 0, 2: 0, 3: 1, 4: 1}
    assert cpus_of(placed) == {1: (0,), 2: (0,), 3: (1,), 4: (1,)}
    assert placement_note([(1, 2), (3, 4)], where) == (
        " (1->2 on CPU 0, 3->4 on CPU 1; receive window 2 MiB)")


def test_a_pinned_routes_receiver_gets_the_pair_window_and_nothing_else_changes():
    """The receivers' rings start over past PAIR_WINDOW (their writers share their core);
    senders and partitions on no route keep the config's window."""
    placed, _ = place_routes(CONFIG, [(3, 1)], [0, 1])
    windows = {p.network_id: p.receive_window for p in placed.partitions}
    assert windows == {1: PAIR_WINDOW, 2: DEFAULT_RECEIVE_WINDOW, 3: DEFAULT_RECEIVE_WINDOW,
                       4: DEFAULT_RECEIVE_WINDOW}
    assert PAIR_WINDOW < DEFAULT_RECEIVE_WINDOW
    unpinned, _ = place_routes(CONFIG, routes([1, 2, 3, 4], "all-to-all"), [0, 1])
    assert {p.receive_window for p in unpinned.partitions} == {DEFAULT_RECEIVE_WINDOW}


def test_more_routes_than_cpus_share_them_and_partitions_on_no_route_stay_free():
    placed, where = place_routes(CONFIG, [(2, 1), (4, 3)], [5])
    assert where == {2: 5, 1: 5, 4: 5, 3: 5}
    placed, where = place_routes(CONFIG, [(3, 1)], [0, 1])
    assert cpus_of(placed) == {1: (0,), 2: None, 3: (0,), 4: None}


def test_nothing_is_pinned_where_no_cpu_per_route_exists_or_the_user_placed_them():
    all_to_all = routes([1, 2, 3, 4], "all-to-all")
    assert place_routes(CONFIG, all_to_all, [0, 1]) == (CONFIG, {})
    assert place_routes(CONFIG, [(1, 2)], []) == (CONFIG, {})
    mine = replace(CONFIG, partitions=(replace(CONFIG.partitions[0], cpus=(1,)),
                                       *CONFIG.partitions[1:]))
    assert place_routes(mine, [(1, 2), (3, 4)], [0, 1]) == (mine, {})
    assert placement_note([(1, 2)], {}) == ""
