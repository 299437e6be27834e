"""The adapter's restart back-off (hypervisor/supervision.py's RestartBackoff), clock given."""

from __future__ import annotations

import pytest

from hypervisor.config import ConfigError, config_from_dict
from hypervisor.supervision import RestartBackoff


def test_delays_double_to_the_cap_then_give_up():
    b = RestartBackoff(limit=7, first_s=0.1, cap_s=0.5, stable_s=10)
    delays = [b.on_death(now=float(t), ran_for=1.0) for t in range(8)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5, None]
    assert b.give_up_message("the adapter", "k").startswith(
        "the adapter keeps dying: restarted 7 times in 7.0 s")


def test_a_child_that_ran_long_enough_starts_a_new_streak():
    b = RestartBackoff(limit=2, stable_s=10)
    assert b.on_death(0.0, 1.0) == 0.0
    assert b.on_death(1.0, 1.0) == 0.1
    assert b.on_death(30.0, 29.0) == 0.0  # it ran 29 s: not the same crash loop
    assert b.on_death(31.0, 1.0) == 0.1
    assert b.on_death(32.0, 1.0) is None


def test_limit_zero_never_restarts():
    assert RestartBackoff(limit=0).on_death(0.0, 0.0) is None


@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_adapter_restart_limit_is_checked(value):
    with pytest.raises(ConfigError, match=r"machine\.adapter_restart_limit: expected an int"):
        config_from_dict({"machine": {"adapter_restart_limit": value}, "partition": [
            {"name": "a", "network_id": 1, "memory": "1MiB", "receive_area": "256KiB"}]})


def test_adapter_restart_limit_default():
    cfg = config_from_dict({"partition": [
        {"name": "a", "network_id": 1, "memory": "1MiB", "receive_area": "256KiB"}]})
    assert cfg.adapter_restart_limit == 5


def test_a_limit_of_zero_says_the_first_death_is_the_last():
    b = RestartBackoff(limit=0)
    assert b.on_death(now=5.0, ran_for=1.0) is None
    assert b.give_up_message("the adapter", "machine.adapter_restart_limit", -9) == (
        "the adapter died (killed by SIGKILL) and is not restarted "
        "(machine.adapter_restart_limit = 0; if it said why, its stderr is above)")
    streak = RestartBackoff(limit=1, stable_s=10)
    assert streak.on_death(now=1.0, ran_for=1.0) == 0.0
    assert streak.on_death(now=2.0, ran_for=1.0) is None
    assert streak.give_up_message("the adapter", "k", 3).startswith(
        "the adapter keeps dying (exit code 3): restarted 1 time in 1.0 s")
