"""Machine configuration: a TOML file validated into frozen dataclasses.

Validation is a pure function of the parsed TOML (`config_from_dict`), so every mistake
in a config is rejected before the hypervisor creates a single IPC object. Only
`load_config` touches the file system, and only to read the one file.

Every `ConfigError` message starts with the key path of the offending entry
(``partition[1].memory: ...``) and shows the offending value, so the user can find it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeGuard

PAGE_SIZE = 4096
MAX_PARTITIONS = 64
MIN_MEMORY = 2 * PAGE_SIZE
MIN_RECEIVE = PAGE_SIZE
MAX_TOTAL_MEMORY = 16 * 1024**3
MAX_NETWORK_ID = 65535
RESTART_POLICIES = ("never", "on-failure", "always")

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
# ASCII digits only, bounded length: int() must never see a huge or non-ASCII numeral.
_SIZE_RE = re.compile(r"\s*([0-9]{1,20})\s*(B|KiB|MiB|GiB)?\s*", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}", re.ASCII)
# "package.module:function": dotted identifiers, a colon, one identifier
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PROGRAM_RE = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}", re.ASCII)

_TOP_KEYS = ("machine", "partition", "host")
_HOST_KEYS = ("name", "partitions")
MAX_HOSTS = 64
_MACHINE_KEYS = ("lock_timeout_s", "restart", "restart_limit", "adapter_restart_limit",
                 "grant_timeout_s")
_PARTITION_REQUIRED = ("name", "network_id", "memory", "receive_area")
_PARTITION_KEYS = (*_PARTITION_REQUIRED, "cpus", "program", "receive_window")
# A record that finds its receive ring empty and would end past the ring's first
# `receive_window` bytes starts over at the ring's start (adapter/ring.py, starts_over), so a
# reader that keeps up cycles through that many bytes. 8 MiB by default: a smaller window
# gains only where the ring's writers and its reader share a core, and costs fig11 up to 3x
# when they do not (benchmarks/README.md, "A window of 2 MiB").
DEFAULT_RECEIVE_WINDOW = 8 << 20


class ConfigError(ValueError):
    """A configuration is invalid; the message names the key path and the bad value."""


@dataclass(frozen=True)
class PartitionConfig:
    """One partition: its address on the virtual network and the size of its region."""

    name: str
    network_id: int
    memory_size: int
    receive_size: int
    cpus: tuple[int, ...] | None = None
    # "package.module:function" called as function(port) in the partition process; None: the
    # partition runs nothing until it is stopped (a tool may still hand it a program).
    program: str | None = None
    receive_window: int = DEFAULT_RECEIVE_WINDOW  # bytes (see DEFAULT_RECEIVE_WINDOW)


@dataclass(frozen=True)
class HostConfig:
    """One host of a cluster (`mpiexec -n H xpmove launch`: MPI rank r is host r, in config
    order) and the names of the partitions that live on it. Network IDs stay global."""

    name: str
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class MachineConfig:
    """The whole machine: partitions in config order plus hypervisor-wide settings."""

    partitions: tuple[PartitionConfig, ...]
    lock_timeout_s: float = 1.0
    restart: str = "never"
    restart_limit: int = 3
    # The adapter is always restarted, with back-off; after this many restarts in a row that
    # each died again soon after starting (hypervisor/supervision.py), the machine gives up.
    adapter_restart_limit: int = 5
    # A partition holding a Fig 12 grant (a destination's lock) longer than this is stuck: the
    # hypervisor kills it, the adapter takes the lock back and undoes the uncommitted move.
    grant_timeout_s: float = 10.0
    # [[host]] tables: empty means one host, exactly as without them (docs/cluster.md).
    hosts: tuple[HostConfig, ...] = ()

    def host_of(self) -> dict[int, int]:
        """Network ID -> index of the host it lives on (every partition on host 0 without
        [[host]] tables)."""
        index = {name: h for h, host in enumerate(self.hosts) for name in host.partitions}
        return {p.network_id: index.get(p.name, 0) for p in self.partitions}


def _is_int(value: object) -> TypeGuard[int]:
    # bool is a subclass of int; `true` in a config is never meant as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}")


def parse_size(value: object, key: str) -> int:
    """Turn an int byte count or a string like "8MiB" into bytes.

    Strict on purpose: floats, bools, signs and fractions ("1.5MiB") are rejected rather
    than rounded, because a silently rounded region size would move every later base.
    Alignment and minimums are checked by the caller, which knows what the size is for.
    """
    if _is_int(value):
        if value < 0:
            raise _fail(key, f"a size cannot be negative, got {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match is not None:
            number, unit = match.groups()
            return int(number) * _UNITS[unit or "B"]
    raise _fail(
        key,
        "expected a size as int bytes or a string with unit B/KiB/MiB/GiB "
        f"(e.g. 65536 or '8MiB'), got {value!r}",
    )


def _check_keys(table: Mapping[str, object], allowed: tuple[str, ...], prefix: str) -> None:
    for k in table:
        if k not in allowed:
            hint = difflib.get_close_matches(str(k), allowed, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise _fail(f"{prefix}{k}", f"unknown key{suffix}")


def _require_table(value: object, key: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise _fail(key, f"expected a table, got {value!r}")
    return value


def _page_size(value: object, key: str, minimum: int) -> int:
    size = parse_size(value, key)
    shown = f"size {size}" if value == size else f"size {value!r} ({size} bytes)"
    if size % PAGE_SIZE != 0:
        raise _fail(key, f"{shown} is not a multiple of {PAGE_SIZE}")
    if size < minimum:
        raise _fail(key, f"{shown} is below the minimum {minimum}")
    return size


def _parse_machine(table: Mapping[str, object]) -> tuple[float, str, int, int, float]:
    _check_keys(table, _MACHINE_KEYS, "machine.")
    restart = "never"
    lock_timeout_s = _seconds(table, "lock_timeout_s", 1.0)
    grant_timeout_s = _seconds(table, "grant_timeout_s", 10.0)
    if "restart" in table:
        v = table["restart"]
        if not isinstance(v, str) or v not in RESTART_POLICIES:
            choices = ", ".join(repr(p) for p in RESTART_POLICIES)
            raise _fail("machine.restart", f"expected one of {choices}, got {v!r}")
        restart = v
    restart_limit = _count(table, "restart_limit", 3)
    adapter_restart_limit = _count(table, "adapter_restart_limit", 5)
    return lock_timeout_s, restart, restart_limit, adapter_restart_limit, grant_timeout_s


def _seconds(table: Mapping[str, object], key: str, default: float) -> float:
    """machine.`key`, a finite number of seconds > 0 (a bool is not one)."""
    if key not in table:
        return default
    v = table[key]
    if not (isinstance(v, int | float) and not isinstance(v, bool)) or not (
        math.isfinite(v) and v > 0
    ):
        raise _fail(f"machine.{key}", f"expected a number > 0, got {v!r}")
    return float(v)


def _count(table: Mapping[str, object], key: str, default: int) -> int:
    """machine.`key`, an int >= 0 (a bool is not one)."""
    if key not in table:
        return default
    v = table[key]
    if not _is_int(v) or v < 0:
        raise _fail(f"machine.{key}", f"expected an int >= 0, got {v!r}")
    return v


def _parse_cpus(value: object, key: str, available: frozenset[int] | None) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(key, f"expected a non-empty list of CPU numbers, got {value!r}")
    seen: set[int] = set()
    for i, cpu in enumerate(value):
        if not _is_int(cpu) or cpu < 0:
            raise _fail(f"{key}[{i}]", f"expected a CPU number >= 0, got {cpu!r}")
        if cpu in seen:
            raise _fail(f"{key}[{i}]", f"duplicate CPU {cpu}")
        if available is not None and cpu not in available:
            raise _fail(
                f"{key}[{i}]", f"CPU {cpu} is not available (available: {sorted(available)})"
            )
        seen.add(cpu)
    return tuple(value)


def _named_table(entry: object, key: str, allowed: tuple[str, ...], required: tuple[str, ...]
                 ) -> tuple[Mapping[str, object], str]:
    """A [[partition]] or [[host]] entry: a table with only `allowed` keys, every `required`
    one, and a valid `name`; (the table, its name)."""
    table = _require_table(entry, key)
    _check_keys(table, allowed, f"{key}.")
    for k in required:
        if k not in table:
            raise _fail(f"{key}.{k}", "missing required key")
    name = table["name"]
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise _fail(f"{key}.name", f"expected 1-32 characters of [A-Za-z0-9_-], got {name!r}")
    return table, name


def _parse_partition(
    entry: object, index: int, available: frozenset[int] | None
) -> PartitionConfig:
    key = f"partition[{index}]"
    table, name = _named_table(entry, key, _PARTITION_KEYS, _PARTITION_REQUIRED)

    network_id = table["network_id"]
    if not _is_int(network_id) or not 1 <= network_id <= MAX_NETWORK_ID:
        raise _fail(
            f"{key}.network_id", f"expected an int in 1..{MAX_NETWORK_ID}, got {network_id!r}"
        )

    memory = _page_size(table["memory"], f"{key}.memory", MIN_MEMORY)
    receive = _page_size(table["receive_area"], f"{key}.receive_area", MIN_RECEIVE)
    if receive > memory - PAGE_SIZE:
        raise _fail(
            f"{key}.receive_area",
            f"size {receive} ({table['receive_area']!r}) leaves less than one page of the "
            f"{memory}-byte memory for the partition's own data (max {memory - PAGE_SIZE})",
        )

    cpus = _parse_cpus(table["cpus"], f"{key}.cpus", available) if "cpus" in table else None
    program = parse_program(table["program"], f"{key}.program") if "program" in table else None
    window = (_page_size(table["receive_window"], f"{key}.receive_window", PAGE_SIZE)
              if "receive_window" in table else DEFAULT_RECEIVE_WINDOW)
    return PartitionConfig(name, network_id, memory, receive, cpus, program, window)


def parse_program(value: object, key: str = "program") -> str:
    """A partition program reference, "package.module:function"; checked for form only (it is
    imported in the partition process, from the directory xpmove was started in)."""
    if not isinstance(value, str) or _PROGRAM_RE.fullmatch(value) is None:
        raise _fail(key, f"expected \"package.module:function\", got {value!r}")
    return value


def config_from_dict(
    data: Mapping[str, object], available_cpus: frozenset[int] | None = None
) -> MachineConfig:
    """Validate parsed TOML into a MachineConfig; raise ConfigError at the first fault.

    Pure: no side effects, so a launch can reject a bad config before creating anything.
    `available_cpus` None skips the CPU-availability check (e.g. validating elsewhere).
    """
    root = _require_table(data, "config")
    _check_keys(root, _TOP_KEYS, "")
    machine = _require_table(root.get("machine", {}), "machine")
    lock_timeout_s, restart, restart_limit, adapter_restart_limit, grant_timeout_s = (
        _parse_machine(machine))

    if "partition" not in root:
        raise _fail("partition", "missing required key (at least one [[partition]])")
    entries = root["partition"]
    if not isinstance(entries, list):
        raise _fail("partition", f"expected an array of tables ([[partition]]), got {entries!r}")
    if not 1 <= len(entries) <= MAX_PARTITIONS:
        raise _fail("partition", f"expected 1..{MAX_PARTITIONS} entries, got {len(entries)}")

    partitions: list[PartitionConfig] = []
    names: dict[str, int] = {}
    ids: dict[int, int] = {}
    for index, entry in enumerate(entries):
        p = _parse_partition(entry, index, available_cpus)
        if p.name in names:
            raise _fail(
                f"partition[{index}].name",
                f"duplicate value {p.name!r} (also partition[{names[p.name]}])",
            )
        if p.network_id in ids:
            raise _fail(
                f"partition[{index}].network_id",
                f"duplicate value {p.network_id} (also partition[{ids[p.network_id]}])",
            )
        names[p.name] = index
        ids[p.network_id] = index
        partitions.append(p)

    total = sum(p.memory_size for p in partitions)
    if total > MAX_TOTAL_MEMORY:
        raise _fail(
            "partition",
            f"total memory {total} bytes exceeds the machine limit of {MAX_TOTAL_MEMORY} (16GiB)",
        )
    hosts = _parse_hosts(root.get("host", []), [p.name for p in partitions])
    return MachineConfig(tuple(partitions), lock_timeout_s, restart, restart_limit,
                         adapter_restart_limit, grant_timeout_s, hosts)


def _parse_hosts(entries: object, partitions: list[str]) -> tuple[HostConfig, ...]:
    """[[host]] tables: each names its partitions; with any, every partition is on exactly
    one host."""
    if not isinstance(entries, list):
        raise _fail("host", f"expected an array of tables ([[host]]), got {entries!r}")
    if len(entries) > MAX_HOSTS:
        raise _fail("host", f"expected at most {MAX_HOSTS} entries, got {len(entries)}")
    hosts: list[HostConfig] = []
    placed: dict[str, int] = {}
    names: dict[str, int] = {}
    for index, entry in enumerate(entries):
        key = f"host[{index}]"
        table, name = _named_table(entry, key, _HOST_KEYS, _HOST_KEYS)
        if name in names:
            raise _fail(f"{key}.name", f"duplicate value {name!r} (also host[{names[name]}])")
        names[name] = index
        members = table["partitions"]
        if not isinstance(members, list) or not members:
            raise _fail(f"{key}.partitions",
                        f"expected a non-empty list of partition names, got {members!r}")
        for i, member in enumerate(members):
            if member not in partitions:
                hint = difflib.get_close_matches(str(member), partitions, n=1)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise _fail(f"{key}.partitions[{i}]", f"no partition named {member!r}{suffix}")
            if member in placed:
                raise _fail(f"{key}.partitions[{i}]",
                            f"partition {member!r} is already on host[{placed[member]}]")
            placed[member] = index
        hosts.append(HostConfig(name, tuple(members)))
    missing = [p for p in partitions if p not in placed]
    if hosts and missing:
        raise _fail("host", f"partitions {missing} are on no host (with [[host]] tables every "
                            f"partition must be listed on one)")
    return tuple(hosts)


def load_config(
    path: str | os.PathLike[str] | None, available_cpus: frozenset[int] | None = None
) -> MachineConfig:
    """Read and validate a TOML config; None means the built-in default machine.

    Every failure (unreadable file, TOML syntax, invalid content) is a ConfigError whose
    message starts with the file path, so a launch can report it and stop.
    """
    if path is None:
        return config_from_dict(_default_dict(), available_cpus)
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read config: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{shown}: TOML syntax error: {e}") from e
    try:
        return config_from_dict(data, available_cpus)
    except ConfigError as e:
        raise ConfigError(f"{shown}: {e}") from e


def _default_dict(memory: str = "8MiB", receive_area: str = "4MiB") -> dict[str, object]:
    names = ("alpha", "bravo", "charlie", "delta")
    return {
        "partition": [
            {"name": n, "network_id": i, "memory": memory, "receive_area": receive_area}
            for i, n in enumerate(names, start=1)
        ]
    }


def with_program(cfg: MachineConfig, program: str) -> MachineConfig:
    """The same machine with every partition running `program` (how the tools run their
    built-in workload on any config)."""
    return replace(cfg, partitions=tuple(replace(p, program=parse_program(program))
                                         for p in cfg.partitions))


def default_config() -> MachineConfig:
    """Four 8 MiB partitions, IDs 1..4, no CPU pinning (the hypervisor decides)."""
    return config_from_dict(_default_dict())


def bench_config(available_cpus: frozenset[int] | None = None) -> MachineConfig:
    """The machine `xpmove bench` runs when given no config (as configs/bench.toml): the
    default's four partitions with 32 MiB receive rings and a 16 MiB sender area each.

    A record holds at most half its ring, so the default's 4 MiB rings cap one request at 31
    packets of 64 KiB or ONE of 1 MiB; here 255 and 15. The sender area (memory minus ring) is
    the same for every transport, adapter flows and peers alike (its largest batch); the peers
    keep their own receive buffers. Built in, so an installed package needs no file.
    """
    return config_from_dict(_default_dict("48MiB", "32MiB"), available_cpus)


def total_memory(cfg: MachineConfig) -> int:
    """Bytes of shared memory the partitions need (the segment size before any header)."""
    return sum(p.memory_size for p in cfg.partitions)
