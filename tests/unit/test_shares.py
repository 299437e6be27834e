"""A restarted partition's share of the traffic, and the books it is counted from (pure)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scripts.books import accepted_from, destination_books, partition_counts
from scripts.shares import Incarnations
from scripts.workload.traffic import PlanError, TrafficPlan

FLOWS = ["fig11", "fig12"]


def plan(**fields) -> TrafficPlan:
    return TrafficPlan.from_message({"peers": [2, 3], "flows": FLOWS, "size": 64, **fields},
                                    view_size=4096)


def test_a_quota_is_shared_out_over_the_flows_exactly():
    p = plan(quota={"2": 7, "3": 0})
    assert [p.packets_for(2, 0), p.packets_for(2, 1)] == [4, 3]
    assert [p.packets_for(3, 0), p.packets_for(3, 1)] == [0, 0]


def test_without_a_quota_every_flow_sends_packets():
    p = plan(packets=5)
    assert p.quota is None
    assert {p.packets_for(peer, flow) for peer in (2, 3) for flow in (0, 1)} == {5}
    assert plan(duration=1.0).packets_for(2, 0) is None


@pytest.mark.parametrize("quota, named", [({"9": 1}, "[9]"), ({"2": -1}, "{2: -1}")])
def test_a_bad_quota_is_refused_naming_it(quota, named):
    with pytest.raises(PlanError, match="quota") as err:
        plan(quota=quota)
    assert named in str(err.value)


PAIRS = {(1, 2): (10, 8), (2, 1): (5, 5), (1, 3): (4, 4), (3, 1): (0, 0), (2, 3): (6, 1),
         (3, 2): (2, 2)}


def test_books_by_destination_sum_over_sources():
    assert destination_books(PAIRS) == {2: (12, 10), 1: (5, 5), 3: (10, 5)}


def test_partition_counts_are_out_by_destination_and_in_by_source():
    counts = partition_counts(PAIRS, [1, 2])  # a host with 1 and 2; 3 lives elsewhere
    assert counts[1] == {"sent": {"2": 10, "3": 4}, "received": {"2": 5}}
    assert counts[2] == {"sent": {"1": 5, "3": 6}, "received": {"1": 8, "3": 2}}
    assert 3 not in counts


def test_accepted_from_a_source():
    assert accepted_from(PAIRS, 2, [1, 3]) == {1: 5, 3: 6}
    assert accepted_from(PAIRS, 3, [1, 4]) == {1: 0, 4: 0}  # 4: no such pair yet


def test_a_new_incarnation_is_noticed_once_and_its_predecessor_counts_are_kept():
    machine = SimpleNamespace(restarts={"adapter": 2}, partitions={1: None, 2: None})
    lives = Incarnations(machine)
    lives.last.update({1: {"errors": {"DestinationFull": 2}, "corrupt": 1, "duplicates": 0,
                           "gaps": 0},
                       2: {"errors": {}, "corrupt": 0, "duplicates": 0, "gaps": 0}})
    assert lives.new() == []  # the adapter's restarts are not a partition's
    machine.restarts[1] = 1
    assert lives.new() == [1]
    assert lives.new() == []
    lives.last[1] = {"errors": {"DestinationFull": 1}, "corrupt": 0, "duplicates": 3, "gaps": 0}
    counted = lives.counted()
    assert counted[1] == {"errors": {"DestinationFull": 3}, "duplicates": 3, "corrupt": 1,
                          "gaps": 0}
    assert counted[2] == {"errors": {}, "duplicates": 0, "corrupt": 0, "gaps": 0}


def segment_with(accepted: dict[tuple[int, int], int]):
    """A 3-partition segment whose pair sequence words say what the adapter accepted."""
    from adapter import receive_area
    from hypervisor.config import MachineConfig, PartitionConfig
    from hypervisor.layout import plan_segment

    layout = plan_segment(MachineConfig(partitions=tuple(
        PartitionConfig(f"p{i}", i, 1 << 20, 256 << 10) for i in (1, 2, 3))))
    memory = memoryview(bytearray(layout.total_size))
    words = receive_area.words(memory)
    by_id = layout.by_id()
    for (src, dst), n in accepted.items():
        words[layout.seq_address(by_id[src].index, by_id[dst].index) >> 3] = n
    return SimpleNamespace(memory=SimpleNamespace(view=memory), layout=layout,
                           partitions=dict.fromkeys((1, 2, 3)), restarts={})


def shares(machine, packets=None, duration=None):
    from scripts.shares import Shares

    return Shares(machine, size=64, packets=packets, duration=duration, flows=FLOWS)


def test_a_restarted_partition_is_given_what_its_predecessors_did_not_get_accepted():
    share = shares(segment_with({(2, 1): 150, (2, 3): 200, (1, 2): 7}), packets=100)
    assert share.rest_of_share(2) == {"cmd": "traffic", "peers": [1, 3], "flows": FLOWS,
                                      "size": 64, "packets": None, "duration": None,
                                      "quota": {"1": 50, "3": 0}}


def test_a_restarted_partition_whose_share_is_sent_only_receives():
    share = shares(segment_with({(2, 1): 200, (2, 3): 200}), packets=100)
    assert share.rest_of_share(2) == {"cmd": "receive_on"}


def test_a_restarted_partition_sends_for_the_rest_of_the_duration():
    import time

    share = shares(segment_with({}), duration=5.0)
    share.until = time.monotonic() + 3.0  # 2 s of the 5 have gone
    command = share.rest_of_share(3)
    assert 2.0 < command["duration"] <= 3.0 and "quota" not in command
    share.until = time.monotonic() - 0.5  # the duration is over
    assert share.rest_of_share(3) == {"cmd": "receive_on"}


def test_a_process_that_does_not_take_its_share_in_time_is_killed():
    import time

    from scripts.shares import SHARE_TIMEOUT_S

    killed = []
    hung = SimpleNamespace(name="p2", state=SimpleNamespace(value="running"),
                           proc=SimpleNamespace(pid=4242, poll=lambda: None))
    machine = segment_with({})
    machine.partitions = {1: hung, 2: hung, 3: hung}
    machine.kill = killed.append
    share = shares(machine, packets=10)
    share.pending = {2: time.monotonic() - SHARE_TIMEOUT_S - 1, 3: time.monotonic()}
    lines = share._give_up()
    assert killed == [2]  # 3 has waited less than SHARE_TIMEOUT_S
    assert lines == [f"p2 did not take its share of the traffic within {SHARE_TIMEOUT_S:g} s: "
                     f"killed (pid 4242)"]
    assert time.monotonic() - share.pending[2] < 1  # its next process gets the full time


def test_verified_is_what_arrived_less_what_was_corrupt():
    from scripts.launch import totals, verified

    stats = {1: {"sent": {"2": 10}, "received": {"2": 7}, "corrupt": 2},
             2: {"sent": {"1": 7}, "received": {"1": 10}, "corrupt": 0}}
    assert totals(stats) == (17, 17)
    assert verified(stats) == 15
