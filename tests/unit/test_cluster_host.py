"""The cluster's pure pieces: one MPI process per host, the hosts agree on one config, the
cluster's progress, the MPI runtime's names found in a maps text."""

from __future__ import annotations

import sys
import types

import pytest

from hypervisor.config import load_config
from scripts import cluster_start
from scripts.cluster_host import check_world
from scripts.cluster_launch import combined
from scripts.cluster_start import attend_after_failing, check_started, command_of


def two_hosts():
    return load_config("configs/two-hosts.toml")


def test_the_cluster_progress_sums_hosts_and_waits_for_every_sender() -> None:
    assert combined([(10, 8, True, 0, False, False), (5, 5, False, 2, False, False)]) == (
        15, 13, False, 2, False, False)
    assert combined([(1, 1, True, 0, False, False), (2, 2, True, 0, False, False)])[2] is True


def test_the_drain_ends_on_every_host_when_one_host_says_it_is_over() -> None:
    """Each host checks the drain deadline on its own clock: the look decides for all, so no
    host leaves the traffic one look before the others. So for a drain stalled on packets one
    host knows never arrive (its fabric gave up on a proxy ring): the others do not know."""
    assert combined([(9, 8, True, 0, True, False), (5, 5, True, 0, False, False)])[4] is True
    assert combined([(9, 8, True, 0, False, False), (5, 5, True, 0, False, False)])[4] is False
    assert combined([(9, 8, True, 0, False, True), (5, 5, True, 0, False, False)])[5] is True
    assert combined([(9, 8, True, 0, False, False), (5, 5, True, 0, False, False)])[5] is False


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


def test_what_was_accepted_for_a_partition_gone_for_good_is_not_waited_for() -> None:
    from scripts.launch import totals

    stats = {1: {"sent": {"2": 10, "3": 7}, "received": {"2": 4}},
             2: {"sent": {"1": 4, "3": 5}, "received": {"1": 10}}}
    assert totals(stats) == (26, 14)
    assert totals(stats, {3}) == (14, 14)  # partition 3 ended: its 12 packets cannot arrive


def test_a_host_that_could_not_start_is_named_on_every_host() -> None:
    names = [h.name for h in two_hosts().hosts]
    check_started(["d", "d"], names, "launch")
    with pytest.raises(SystemExit, match=r"xpmove bench: host west could not start"):
        check_started(["d", None], names, "bench")
    with pytest.raises(SystemExit, match=r"host east, of MPI rank 2 could not start"):
        check_started([None, "d", None], names, "run")  # mpiexec -n 3 on two hosts


def test_the_command_word_is_found_past_options() -> None:
    assert command_of(["launch", "--config", "x.toml"]) == "launch"
    assert command_of(["--version"]) is None
    assert command_of(["-h", "bench"]) == "bench"


def test_only_a_host_of_a_cluster_run_starts_mpi_after_failing(monkeypatch) -> None:
    """A failure under mpiexec, of a command that runs across hosts, starts MPI to meet the
    others; anywhere else it just exits (cluster.mpi replaced: what is looked up is noted)."""
    looked: list[str] = []

    class NoMPI(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            looked.append(name)
            raise AttributeError(name)

    monkeypatch.setitem(sys.modules, "cluster.mpi", NoMPI("cluster.mpi"))
    monkeypatch.setattr(cluster_start, "_one_host", False)  # (set by any config read here)
    monkeypatch.setattr(cluster_start, "_met", False)
    monkeypatch.delenv("PMIX_RANK", raising=False)
    monkeypatch.delenv("PMI_RANK", raising=False)
    attend_after_failing(["launch", "--config", "configs/two-hosts.toml"])
    monkeypatch.setenv("PMI_RANK", "1")
    attend_after_failing(["status", "--once"])
    assert looked == []
    attend_after_failing(["launch", "--config", "configs/two-hosts.toml"])
    assert "MPI" in looked
    looked.clear()
    cluster_start.one_host()  # the config read has no [[host]]: nobody waits for this rank
    attend_after_failing(["launch"])
    assert looked == []
