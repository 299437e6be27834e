"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from tests.unit.engine_machine import Machine


@pytest.fixture
def m() -> Machine:
    """A fresh engine over a bytearray segment (engine_machine.py), for the
    test_engine_*.py files and test_receiver.py."""
    return Machine()
