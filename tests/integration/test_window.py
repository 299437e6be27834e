"""A partition's `receive_window` (config) reaches every writer of its ring: a record that
finds the ring empty and would end past the window starts over at the ring's start
(adapter/ring.py, starts_over), whether the adapter (Fig 11), a granted driver (Fig 12) or a
lease's driver writes it. A real machine; partition 2 has a 64 KiB window, 3 the default."""

from __future__ import annotations

from dataclasses import replace

import pytest

from adapter import receive_area
from adapter.ring import record_size
from hypervisor.config import DEFAULT_RECEIVE_WINDOW
from tests.integration.conftest import KiB, small_config
from tests.integration.test_machine import payload, receive, send

RECORD = 40 * KiB  # two end past a 64 KiB window, and fit a 256 KiB ring's default window


@pytest.mark.parametrize("how", ["fig11", "fig12", "lease"])
def test_records_start_over_past_the_receivers_own_window(make_machine, how):
    config = small_config()
    parts = list(config.partitions)
    parts[1] = replace(parts[1], receive_window=64 * KiB)
    machine = make_machine(replace(config, partitions=tuple(parts)))
    assert machine.memory is not None
    words = receive_area.words(machine.memory.view)
    need = record_size(RECORD)
    for dst, window, second_at in ((2, 64 * KiB, 0), (3, DEFAULT_RECEIVE_WINDOW, need)):
        layout = machine.layout.by_id()[dst]
        assert layout.window == window
        ring = receive_area.RingWords.of(layout)
        if how == "lease":
            assert machine.call(1, {"cmd": "lease", "dst": dst})["ok"]
        for i in range(2):  # each finds the ring empty (the one before it was received)
            data = payload(1, dst, RECORD, i)
            if how == "lease":
                reply = machine.call(1, {"cmd": "lease_send", "dst": dst,
                                         "payloads": [data.hex()]})
            else:
                reply = send(machine, 1, dst, data, how)
            assert reply["ok"], reply
            end = words[ring.head] % layout.receive_size
            assert end == (need if i == 0 else second_at + need), (dst, i, end)
            assert bytes.fromhex(receive(machine, dst)["hex"]) == data
        assert receive(machine, dst, timeout=0) is None
