"""Boot blocks: what the hypervisor tells a child it spawns, parsed once into dataclasses.

A child is started as `python -m <module> --boot <json>` (the platform names what it starts by
module string, so it never imports it). The JSON is written by `to_json` and read back by
`from_json` here, in one place, so both sides agree on every field and a child never indexes a
raw dict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from hypervisor.layout import SegmentLayout


@dataclass(frozen=True)
class Connection:
    """One partition's pipe ends as the adapter holds them."""

    network_id: int
    request_fd: int
    reply_fd: int


@dataclass(frozen=True)
class Boot:
    """What every child needs: the segment, its layout, the names of locks, doorbells,
    recall and room semaphores."""

    segment: str
    layout: SegmentLayout
    locks: dict[int, str]
    bells: dict[int, str]
    recalls: dict[int, str]
    rooms: dict[int, str]  # the partitions' living here (hypervisor/machine.py, Names)
    control_fd: int

    def to_json(self) -> str:
        data = asdict(self)
        data["layout"] = self.layout.to_dict()
        return json.dumps(data)

    @staticmethod
    def _common(data: dict) -> dict:
        return {
            "segment": str(data["segment"]),
            "layout": SegmentLayout.from_dict(data["layout"]),
            "locks": {int(k): str(v) for k, v in data["locks"].items()},
            "bells": {int(k): str(v) for k, v in data["bells"].items()},
            "recalls": {int(k): str(v) for k, v in data["recalls"].items()},
            "rooms": {int(k): str(v) for k, v in data["rooms"].items()},
            "control_fd": int(data["control_fd"]),
        }


@dataclass(frozen=True)
class AdapterBoot(Boot):
    lock_timeout_s: float
    connections: tuple[Connection, ...]
    retired: tuple[int, ...] = ()  # partitions that ended and will not be restarted
    # The run's prefix and its registry's directory: if the hypervisor dies without stopping
    # the run, the adapter unlinks the run's names (adapter/server.py, `sweep_orphaned_run`)
    run_prefix: str = ""
    run_dir: str = ""

    @classmethod
    def from_json(cls, text: str) -> AdapterBoot:
        data = json.loads(text)
        return cls(**cls._common(data), lock_timeout_s=float(data["lock_timeout_s"]),
                   connections=tuple(Connection(**c) for c in data["connections"]),
                   retired=tuple(int(n) for n in data.get("retired", ())),
                   run_prefix=str(data.get("run_prefix", "")),
                   run_dir=str(data.get("run_dir", "")))


@dataclass(frozen=True)
class PartitionBoot(Boot):
    network_id: int
    request_fd: int
    reply_fd: int
    cpus: tuple[int, ...] | None
    program: str | None  # "package.module:function", or None: run nothing until stopped

    @classmethod
    def from_json(cls, text: str) -> PartitionBoot:
        data = json.loads(text)
        cpus = data.get("cpus")
        return cls(**cls._common(data), network_id=int(data["network_id"]),
                   request_fd=int(data["request_fd"]), reply_fd=int(data["reply_fd"]),
                   cpus=None if cpus is None else tuple(int(c) for c in cpus),
                   program=data.get("program"))
