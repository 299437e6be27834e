"""Landing rings (cluster/landing.py): the plan every host computes, and what a source may
ship (whole records only, never past the landing ring's reader)."""

from __future__ import annotations

import pytest

from adapter.errors import RingCorrupt
from adapter.ring import KIND_PAD, KIND_RECORD, RECORD_HEADER, reserve
from cluster.landing import WORDS_SIZE, plan_landing, shippable, spans
from hypervisor.config import PAGE_SIZE, load_config
from scripts.cluster_host import check_world
from scripts.cluster_launch import combined

CAPACITY = 4096


def two_hosts():
    return load_config("configs/two-hosts.toml")


def test_each_host_lands_from_every_other_host_for_each_of_its_partitions() -> None:
    config = two_hosts()
    east, east_size = plan_landing(config, 0)
    west, _ = plan_landing(config, 1)
    assert [(r.source_host, r.dst_id) for r in east] == [(1, 1), (1, 2)]
    assert [(r.source_host, r.dst_id) for r in west] == [(0, 3), (0, 4)]
    for ring in east:
        assert ring.capacity == 4 * 1024 * 1024  # the destination's receive area: a mirror
        assert ring.data % PAGE_SIZE == 0 and ring.words % WORDS_SIZE == 0
    spans_used = sorted((r.data, r.data + r.capacity) for r in east)
    assert spans_used[0][0] >= len(east) * WORDS_SIZE
    assert spans_used[0][1] <= spans_used[1][0] and spans_used[1][1] <= east_size


def test_one_host_lands_nothing() -> None:
    config = load_config(None)
    rings, size = plan_landing(config, 0)
    assert rings == () and size == PAGE_SIZE


class Ring:
    """A bytearray ring that records are committed into as the adapter would."""

    def __init__(self) -> None:
        self.memory = bytearray(CAPACITY)
        self.head = 0
        self.seq = 0

    def commit(self, length: int, tail: int = 0) -> int:
        r = reserve(self.head, tail, CAPACITY, length)
        if r.pad_position is not None:
            RECORD_HEADER.pack_into(self.memory, r.pad_position, KIND_PAD, 0, 0, 0)
        self.seq += 1
        RECORD_HEADER.pack_into(self.memory, r.position, KIND_RECORD, 7, self.seq, length)
        self.head = r.new_head
        return self.head

    def header(self, pos: int) -> tuple[int, int, int, int]:
        return RECORD_HEADER.unpack_from(self.memory, pos)


def test_ships_whole_records_only_up_to_the_landing_free_space() -> None:
    ring = Ring()
    ends = [ring.commit(1100) for _ in range(3)]  # records of 1128 bytes
    assert shippable(0, ring.head, CAPACITY, 0, ring.header) == ends[-1]
    # shipped those; the landing reader has consumed only the first: 1128 + 4096 is the limit
    fourth = ring.commit(1100, tail=ends[-1])  # pads to the end, lands at offset 0
    fifth = ring.commit(1100, tail=ends[-1])
    assert fourth == ends[0] + CAPACITY
    assert shippable(ends[-1], fifth, CAPACITY, ends[0], ring.header) == fourth
    assert shippable(ends[-1], fifth, CAPACITY, ends[1], ring.header) == fifth
    # nothing fits while the reader has not moved since the last ship
    assert shippable(fourth, fifth, CAPACITY, ends[0], ring.header) == fourth


def test_padding_before_the_end_ships_with_the_record_after_it() -> None:
    ring = Ring()
    for _ in range(3):
        ring.commit(1100)
    tail = ring.head  # the reader consumed those
    end = ring.commit(1100, tail)  # does not fit before the end: PAD, then at offset 0
    assert end - tail == CAPACITY - tail + 1128
    assert shippable(tail, end, CAPACITY, tail, ring.header) == end
    assert spans(tail, end, CAPACITY) == [(tail, CAPACITY - tail), (0, 1128)]


def test_a_forged_header_is_corrupt_not_shipped() -> None:
    ring = Ring()
    ring.commit(100)
    RECORD_HEADER.pack_into(ring.memory, 0, 0xBAD, 7, 1, 100)
    with pytest.raises(RingCorrupt, match="0xbad"):
        shippable(0, ring.head, CAPACITY, 0, ring.header)


def test_spans() -> None:
    assert spans(5, 5, CAPACITY) == []
    assert spans(8, 24, CAPACITY) == [(8, 16)]
    assert spans(CAPACITY + 8, 2 * CAPACITY, CAPACITY) == [(8, CAPACITY - 8)]


def test_the_cluster_progress_sums_hosts_and_waits_for_every_sender() -> None:
    assert combined([(10, 8, True, 0), (5, 5, False, 2)]) == (15, 13, False, 2)
    assert combined([(1, 1, True, 0), (2, 2, True, 0)])[2] is True


def test_a_cluster_config_needs_one_mpi_process_per_host() -> None:
    check_world(two_hosts(), 2)
    with pytest.raises(SystemExit, match=r"mpiexec -n 2 xpmove launch.*this is 1 MPI process\)"):
        check_world(two_hosts(), 1)


def test_hosts_must_read_the_same_config() -> None:
    from dataclasses import replace

    from scripts.cluster_host import check_same_config, config_digest

    config = two_hosts()
    same = config_digest(config)
    check_same_config(config, [same, same], "launch")
    other = config_digest(replace(config, lock_timeout_s=2.0))
    with pytest.raises(SystemExit, match="hosts west read a config that differs from host "
                                         "east's"):
        check_same_config(config, [same, other], "launch")


def test_the_mpi_runtimes_names_are_found_in_a_maps_text() -> None:
    from scripts.cluster_host import runtime_names

    maps = ("7f1e-7f2e rw-s 00000000 00:1a 12 /dev/shm/mpich_shm_4ce43181_0\n"
            "7f2e-7f3e rw-s 00000000 00:1a 12 /dev/shm/mpich_shm_4ce43181_0\n"
            "7f3e-7f4e rw-s 00000000 00:1a 13 /dev/shm/mpich_shm_0bad_0 (deleted)\n"
            "7f4e-7f5e rw-s 00000000 00:1a 14 /dev/shm/xpm-1234-seg\n"
            "7f5e-7f6e rw-p 00000000 00:00 0\n")
    assert runtime_names(maps) == ["/dev/shm/mpich_shm_4ce43181_0"]
