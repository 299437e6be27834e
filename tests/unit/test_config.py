"""Unit tests for hypervisor.config: the pure validation core and the one-file loader."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisor.config import (
    MAX_TOTAL_MEMORY,
    PAGE_SIZE,
    ConfigError,
    MachineConfig,
    PartitionConfig,
    bench_config,
    config_from_dict,
    default_config,
    load_config,
    parse_size,
    total_memory,
)

REPO = Path(__file__).resolve().parents[2]
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


# --- sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8MiB", 8388608),
        (65536, 65536),
        ("512KiB", 524288),
        ("1GiB", 1024**3),
        ("4096B", 4096),
        ("4096", 4096),
        (" 2 MiB ", 2 * MiB),
        (0, 0),
    ],
)
def test_parse_size_accepts(value: object, expected: int) -> None:
    assert parse_size(value, "k") == expected


@pytest.mark.parametrize(
    "value",
    [
        "1.5MiB",
        True,
        False,
        "-4KiB",
        -4096,
        4096.0,
        "8mib",
        "8MB",
        "8 M",
        "",
        "MiB",
        None,
        [4096],
        "0x1000",
        "٤٠٩٦",
        "1_000",
    ],
)
def test_parse_size_rejects_and_names_key(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, "partition[3].memory")
    msg = str(info.value)
    assert msg.startswith("partition[3].memory: ")
    assert repr(value) in msg


@given(st.integers(min_value=0, max_value=MAX_TOTAL_MEMORY // PAGE_SIZE))
def test_page_multiples_round_trip(pages: int) -> None:
    size = pages * PAGE_SIZE
    assert parse_size(size, "k") == size
    assert parse_size(f"{size}B", "k") == size
    assert parse_size(f"{size // 1024}KiB", "k") == size


@given(
    st.one_of(
        st.text(),
        st.none(),
        st.booleans(),
        st.floats(),
        st.binary(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
        st.integers(),
        st.complex_numbers(),
    )
)
def test_parse_size_only_ever_raises_config_error(value: object) -> None:
    try:
        result = parse_size(value, "k")
    except ConfigError as e:
        assert str(e).startswith("k: ")
    else:
        assert isinstance(result, int) and not isinstance(result, bool) and result >= 0


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
    ],
)
def test_rejections_name_key_and_value(path: tuple, value: object, fragments: list) -> None:
    assert_rejected(broken(path, value), *fragments)


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


# --- files -----------------------------------------------------------------------------


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[machine]\nrestart = "always"\n\n'
        '[[partition]]\nname = "left"\nnetwork_id = 10\nmemory = "1MiB"\n'
        'receive_area = "256KiB"\ncpus = [0]\n\n'
        '[[partition]]\nname = "right"\nnetwork_id = 20\nmemory = 1048576\n'
        "receive_area = 262144\n"
    )
    cfg = load_config(path, frozenset({0}))
    assert cfg.restart == "always"
    assert cfg.partitions == (
        PartitionConfig("left", 10, MiB, 256 * 1024, (0,)),
        PartitionConfig("right", 20, MiB, 256 * 1024, None),
    )
    assert load_config(str(path)) == load_config(path, None)


def test_load_config_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[[partition]\nname = 'a'\n")
    with pytest.raises(ConfigError, match="broken.toml: TOML syntax error"):
        load_config(path)


def test_load_config_non_utf8_names_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="latin1.toml: TOML syntax error"):
        load_config(path)


def test_load_config_missing_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml: cannot read config"):
        load_config(path)


def test_load_config_invalid_content_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text(
        '[[partition]]\nname = "a"\nnetwork_id = 7\nmemory = 8192\nreceive_area = 4096\n'
        '[[partition]]\nname = "b"\nnetwork_id = 7\nmemory = 8192\nreceive_area = 4096\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "dup.toml" in msg
    assert "partition[1].network_id: duplicate value 7 (also partition[0])" in msg


def test_shipped_default_toml_equals_default_config() -> None:
    assert load_config(REPO / "configs" / "default.toml") == default_config()


def test_shipped_sixteen_toml_loads() -> None:
    cfg = load_config(REPO / "configs" / "sixteen.toml")
    assert [p.network_id for p in cfg.partitions] == list(range(1, 17))
    assert all(p.memory_size == 8 * MiB and p.receive_size == 4 * MiB for p in cfg.partitions)
    assert len({p.name for p in cfg.partitions}) == 16
    assert total_memory(cfg) == 128 * MiB


def test_shipped_bench_toml_is_the_default_with_32_mib_rings() -> None:
    """configs/bench.toml: the default's partitions, 32 MiB rings (runs of 15 packets of
    1 MiB), a 16 MiB sender area (half a ring: the largest run) for every transport."""
    cfg, default = load_config(REPO / "configs" / "bench.toml"), default_config()
    assert [(p.name, p.network_id) for p in cfg.partitions] == [
        (p.name, p.network_id) for p in default.partitions]
    assert all(p.memory_size == 48 * MiB and p.receive_size == 32 * MiB for p in cfg.partitions)
    assert cfg.lock_timeout_s == default.lock_timeout_s
    assert cfg == bench_config()  # the file is what `xpmove bench` runs with no --config


def test_shipped_two_hosts_bench_toml_is_two_hosts_with_the_bench_sizes() -> None:
    cfg, two = (load_config(REPO / "configs" / f"{n}.toml") for n in ("two-hosts-bench",
                                                                     "two-hosts"))
    assert cfg.hosts == two.hosts
    assert [(p.name, p.network_id) for p in cfg.partitions] == [
        (p.name, p.network_id) for p in two.partitions]
    bench = bench_config().partitions[0]
    assert all((p.memory_size, p.receive_size) == (bench.memory_size, bench.receive_size)
               for p in cfg.partitions)


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
