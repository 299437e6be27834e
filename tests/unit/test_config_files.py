"""hypervisor.config's one-file loader (load_config): a TOML file read, its errors naming the
file, and the shipped configs/*.toml (default.toml and bench.toml are the built-in configs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor.config import (
    ConfigError,
    PartitionConfig,
    bench_config,
    default_config,
    load_config,
    total_memory,
)

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


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
