"""Unit tests for hypervisor.config's pure validation core (config_from_dict): the valid
configs, and every rejection naming its key path and the offending value, the [[host]]
tables' included."""

from __future__ import annotations

import copy

import pytest

from hypervisor.config import (
    DEFAULT_RECEIVE_WINDOW,
    MAX_TOTAL_MEMORY,
    PAGE_SIZE,
    ConfigError,
    MachineConfig,
    PartitionConfig,
    config_from_dict,
    default_config,
    load_config,
    total_memory,
)

MiB = 1024 * 1024


DELETE = object()


def base() -> dict:
    """A small valid config dict; each test breaks exactly one thing in a copy."""
    return {
        "machine": {"lock_timeout_s": 0.5, "restart": "on-failure", "restart_limit": 2},
        "partition": [
            {"name": "a", "network_id": 1, "memory": "64KiB", "receive_area": "16KiB"},
            {"name": "b", "network_id": 2, "memory": 65536, "receive_area": 16384, "cpus": [0]},
        ],
    }


def broken(path: tuple, value: object) -> dict:
    """Copy of base() with the item at `path` set to `value` (or deleted if value is DELETE)."""
    data = copy.deepcopy(base())
    target = data
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


def assert_rejected(data: dict, *fragments: str, cpus: frozenset[int] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, cpus)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


# --- the valid cases -------------------------------------------------------------------


def test_default_config_is_four_partitions_of_8mib() -> None:
    cfg = default_config()
    assert [p.name for p in cfg.partitions] == ["alpha", "bravo", "charlie", "delta"]
    assert [p.network_id for p in cfg.partitions] == [1, 2, 3, 4]
    assert all(p.memory_size == 8 * MiB and p.receive_size == 4 * MiB for p in cfg.partitions)
    assert all(p.cpus is None for p in cfg.partitions)
    assert (cfg.lock_timeout_s, cfg.restart, cfg.restart_limit) == (1.0, "never", 3)
    assert total_memory(cfg) == 32 * MiB
    assert load_config(None) == cfg


def test_base_parses_to_expected_dataclasses() -> None:
    cfg = config_from_dict(base(), frozenset({0, 1}))
    assert cfg == MachineConfig(
        partitions=(
            PartitionConfig("a", 1, 65536, 16384, None),
            PartitionConfig("b", 2, 65536, 16384, (0,)),
        ),
        lock_timeout_s=0.5,
        restart="on-failure",
        restart_limit=2,
    )


def test_machine_table_is_optional_and_single_partition_is_allowed() -> None:
    data = {"partition": [{"name": "solo", "network_id": 9, "memory": 8192, "receive_area": 4096}]}
    cfg = config_from_dict(data)
    assert cfg.partitions == (PartitionConfig("solo", 9, 8192, 4096, None),)
    assert (cfg.lock_timeout_s, cfg.restart, cfg.restart_limit) == (1.0, "never", 3)


def test_boundaries_are_accepted() -> None:
    data = base()
    data["machine"] = {"lock_timeout_s": 1, "restart_limit": 0, "restart": "always"}
    data["partition"][0].update(name="x" * 32, network_id=65535, memory=8192, receive_area=4096)
    cfg = config_from_dict(data)
    assert cfg.lock_timeout_s == 1.0 and isinstance(cfg.lock_timeout_s, float)
    assert cfg.partitions[0].receive_size == cfg.partitions[0].memory_size - PAGE_SIZE


def test_64_partitions_accepted_65_rejected() -> None:
    entry = {"memory": 8192, "receive_area": 4096}
    data = {"partition": [dict(entry, name=f"p{i}", network_id=i + 1) for i in range(64)]}
    assert len(config_from_dict(data).partitions) == 64
    data["partition"].append(dict(entry, name="p64", network_id=65))
    assert_rejected(data, "partition:", "1..64", "65")


# --- every rejection names its key path and the offending value ------------------------


@pytest.mark.parametrize(
    ("path", "value", "fragments"),
    [
        # unknown and missing keys
        (("bogus",), 1, ["bogus: unknown key"]),
        (("machine", "lock_timeout"), 1.0, ["machine.lock_timeout: unknown key", "lock_timeout_s"]),
        (("partition", 1, "memroy"), "8MiB", ["partition[1].memroy: unknown key", "'memory'"]),
        (("partition", 0, "name"), DELETE, ["partition[0].name: missing required key"]),
        (("partition", 1, "memory"), DELETE, ["partition[1].memory: missing required key"]),
        (
            ("partition", 0, "receive_area"),
            DELETE,
            ["partition[0].receive_area: missing required key"],
        ),
        (("partition",), DELETE, ["partition: missing required key"]),
        # wrong container types
        (("machine",), "fast", ["machine: expected a table", "'fast'"]),
        (("partition",), {"name": "a"}, ["partition: expected an array of tables"]),
        (("partition",), [], ["partition: expected 1..64 entries, got 0"]),
        (("partition", 1), "b", ["partition[1]: expected a table", "'b'"]),
        # [machine] values
        (
            ("machine", "lock_timeout_s"),
            "abc",
            ["machine.lock_timeout_s: expected a number > 0, got 'abc'"],
        ),
        (("machine", "lock_timeout_s"), 0, ["machine.lock_timeout_s:", "got 0"]),
        (("machine", "lock_timeout_s"), -1.5, ["machine.lock_timeout_s:", "-1.5"]),
        (("machine", "lock_timeout_s"), True, ["machine.lock_timeout_s:", "True"]),
        (("machine", "lock_timeout_s"), float("inf"), ["machine.lock_timeout_s:", "inf"]),
        (("machine", "lock_timeout_s"), float("nan"), ["machine.lock_timeout_s:", "nan"]),
        (("machine", "restart"), "sometimes", ["machine.restart:", "'sometimes'", "'on-failure'"]),
        (("machine", "restart"), 1, ["machine.restart:", "got 1"]),
        (("machine", "restart_limit"), -1, ["machine.restart_limit:", "-1"]),
        (("machine", "restart_limit"), 2.0, ["machine.restart_limit:", "2.0"]),
        (("machine", "restart_limit"), False, ["machine.restart_limit:", "False"]),
        # name
        (("partition", 0, "name"), "", ["partition[0].name:", "''"]),
        (("partition", 0, "name"), "has space", ["partition[0].name:", "'has space'"]),
        (("partition", 0, "name"), "x" * 33, ["partition[0].name:", "x" * 33]),
        (("partition", 0, "name"), "bad\n", ["partition[0].name:", "'bad\\n'"]),
        (("partition", 0, "name"), 7, ["partition[0].name:", "got 7"]),
        (
            ("partition", 1, "name"),
            "a",
            ["partition[1].name: duplicate value 'a'", "(also partition[0])"],
        ),
        # network_id
        (
            ("partition", 1, "network_id"),
            1,
            ["partition[1].network_id: duplicate value 1", "(also partition[0])"],
        ),
        (("partition", 0, "network_id"), 0, ["partition[0].network_id:", "got 0"]),
        (("partition", 0, "network_id"), 65536, ["partition[0].network_id:", "65536"]),
        (("partition", 0, "network_id"), True, ["partition[0].network_id:", "True"]),
        (("partition", 0, "network_id"), "1", ["partition[0].network_id:", "'1'"]),
        (("partition", 0, "network_id"), 1.0, ["partition[0].network_id:", "1.0"]),
        # memory
        (("partition", 0, "memory"), "1.5MiB", ["partition[0].memory:", "'1.5MiB'"]),
        (("partition", 0, "memory"), True, ["partition[0].memory:", "True"]),
        (("partition", 0, "memory"), "8TiB", ["partition[0].memory:", "'8TiB'"]),
        (
            ("partition", 0, "memory"),
            12288 + 1,
            ["partition[0].memory:", "12289", "multiple of 4096"],
        ),
        (("partition", 0, "memory"), "4KiB", ["partition[0].memory:", "'4KiB'", "8192"]),
        # receive_area
        (
            ("partition", 1, "receive_area"),
            "6KiB",
            ["partition[1].receive_area:", "'6KiB'", "multiple of 4096"],
        ),
        (("partition", 1, "receive_area"), 0, ["partition[1].receive_area:", "0", "minimum 4096"]),
        (
            ("partition", 1, "receive_area"),
            "64KiB",
            ["partition[1].receive_area:", "'64KiB'", "61440"],
        ),
        (("partition", 1, "receive_area"), -4096, ["partition[1].receive_area:", "-4096"]),
        # cpus
        (("partition", 1, "cpus"), [], ["partition[1].cpus:", "[]"]),
        (("partition", 1, "cpus"), 0, ["partition[1].cpus:", "got 0"]),
        (("partition", 1, "cpus"), [0, True], ["partition[1].cpus[1]:", "True"]),
        (("partition", 1, "cpus"), [-1], ["partition[1].cpus[0]:", "-1"]),
        (("partition", 1, "cpus"), [0, 0], ["partition[1].cpus[1]: duplicate CPU 0"]),
        (("partition", 0, "receive_window"), "3000", ["partition[0].receive_window:", "'3000'",
                                                      "not a multiple of 4096"]),
        (("partition", 0, "receive_window"), 0, ["partition[0].receive_window:", "below"]),
        (("partition", 0, "receive_window"), "two", ["partition[0].receive_window:", "'two'"]),
    ],
)
def test_rejections_name_key_and_value(path: tuple, value: object, fragments: list) -> None:
    assert_rejected(broken(path, value), *fragments)


def test_receive_window_is_the_default_unless_given() -> None:
    """A ring's records start over past its partition's receive_window (adapter/ring.py)."""
    assert {p.receive_window for p in config_from_dict(base()).partitions} == {
        DEFAULT_RECEIVE_WINDOW}
    data = broken(("partition", 1, "receive_window"), "2MiB")
    assert [p.receive_window for p in config_from_dict(data).partitions] == [
        DEFAULT_RECEIVE_WINDOW, 2 * MiB]


def test_unavailable_cpu_rejected_only_when_cpus_known() -> None:
    data = broken(("partition", 1, "cpus"), [0, 5])
    assert config_from_dict(data).partitions[1].cpus == (0, 5)
    assert_rejected(data, "partition[1].cpus[1]:", "CPU 5", "[0, 1]", cpus=frozenset({0, 1}))


def test_top_level_must_be_a_table() -> None:
    assert_rejected([], "config: expected a table")  # type: ignore[arg-type]


def test_total_memory_over_16gib_rejected() -> None:
    entry = {"memory": "4GiB", "receive_area": "1MiB"}
    data = {"partition": [dict(entry, name=f"p{i}", network_id=i + 1) for i in range(4)]}
    assert total_memory(config_from_dict(data)) == MAX_TOTAL_MEMORY
    data["partition"].append(dict(entry, name="p4", network_id=5, memory=8192, receive_area=4096))
    assert_rejected(data, "partition:", str(MAX_TOTAL_MEMORY + 8192), "16GiB")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), True, "10"])
def test_grant_timeout_must_be_a_number_of_seconds(value):
    with pytest.raises(ConfigError, match=r"machine\.grant_timeout_s: expected a number > 0"):
        config_from_dict({"machine": {"grant_timeout_s": value}, "partition": [
            {"name": "a", "network_id": 1, "memory": "1MiB", "receive_area": "256KiB"}]})


def test_grant_timeout_default_and_value():
    one = [{"name": "a", "network_id": 1, "memory": "1MiB", "receive_area": "256KiB"}]
    assert config_from_dict({"partition": one}).grant_timeout_s == 10.0
    assert config_from_dict({"machine": {"grant_timeout_s": 2},
                             "partition": one}).grant_timeout_s == 2.0


# --- [[host]] tables (issue 15: partitions on several hosts) ----------------------------
def with_hosts(*hosts: dict) -> dict:
    data = copy.deepcopy(base())
    data["host"] = list(hosts)
    return data


def test_hosts_place_every_partition_and_network_ids_stay_global() -> None:
    cfg = config_from_dict(with_hosts({"name": "h0", "partitions": ["b"]},
                                      {"name": "h1", "partitions": ["a"]}))
    assert [h.name for h in cfg.hosts] == ["h0", "h1"]
    assert cfg.host_of() == {1: 1, 2: 0}
    assert config_from_dict(base()).hosts == ()
    assert config_from_dict(base()).host_of() == {1: 0, 2: 0}


@pytest.mark.parametrize("hosts, fragments", [
    ([{"name": "h0", "partitions": ["a"]}], ("host:", "['b']", "on no host")),
    ([{"name": "h0", "partitions": ["a", "b"]}, {"name": "h1", "partitions": ["b"]}],
     ("host[1].partitions[0]", "'b'", "already on host[0]")),
    ([{"name": "h0", "partitions": ["a", "bb"]}], ("host[0].partitions[1]", "'bb'", "'b'")),
    ([{"name": "h0", "partitions": []}], ("host[0].partitions", "non-empty")),
    ([{"name": "h 0", "partitions": ["a", "b"]}], ("host[0].name", "'h 0'")),
    ([{"name": "h", "partitions": ["a"]}, {"name": "h", "partitions": ["b"]}],
     ("host[1].name", "duplicate", "'h'")),
    ([{"name": "h0", "partitions": ["a", "b"], "adress": "x"}],
     ("host[0].adress", "unknown key")),
    ([{"partitions": ["a", "b"]}], ("host[0].name", "missing")),
])
def test_bad_hosts_rejected_naming_the_value(hosts: list, fragments: tuple) -> None:
    assert_rejected(with_hosts(*hosts), *fragments)


def test_host_must_be_an_array_of_tables() -> None:
    data = copy.deepcopy(base())
    data["host"] = {"name": "h0"}
    assert_rejected(data, "host:", "array of tables")
