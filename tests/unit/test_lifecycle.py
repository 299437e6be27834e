"""Lifecycle of the hypervisor's children (hypervisor/lifecycle.py) as a transition table."""

from __future__ import annotations

import itertools

import pytest

from hypervisor.lifecycle import (
    TRANSITIONS,
    LifecycleError,
    ProcessEvent,
    ProcessState,
    next_state,
)

S, E = ProcessState, ProcessEvent

EXPECTED = {
    (S.STARTING, E.READY): S.RUNNING,
    (S.STARTING, E.EXITED): S.DEAD,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.RUNNING, E.STOP): S.STOPPING,
    (S.RUNNING, E.EXITED): S.DEAD,
    (S.RUNNING, E.FINISHED): S.FINISHED,
    (S.STOPPING, E.FINISHED): S.STOPPING,
    (S.FINISHED, E.EXITED): S.FINISHED,
    (S.FINISHED, E.STOP): S.FINISHED,
    (S.FINISHED, E.FINISHED): S.FINISHED,
    (S.FINISHED, E.RESTART): S.STARTING,
    (S.STOPPING, E.EXITED): S.STOPPED,
    (S.STOPPING, E.STOP): S.STOPPING,
    (S.DEAD, E.STOP): S.DEAD,
    (S.DEAD, E.EXITED): S.DEAD,
    (S.DEAD, E.RESTART): S.STARTING,
    (S.STOPPED, E.STOP): S.STOPPED,
    (S.STOPPED, E.EXITED): S.STOPPED,
}


def test_the_table_is_the_documented_one():
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize("state,event", sorted(EXPECTED, key=str))
def test_every_legal_transition(state, event):
    assert next_state(state, event) is EXPECTED[(state, event)]


ILLEGAL = [(s, e) for s, e in itertools.product(S, E) if (s, e) not in EXPECTED]


@pytest.mark.parametrize("state,event", ILLEGAL, ids=[f"{s.value}-{e.value}" for s, e in ILLEGAL])
def test_every_illegal_transition_names_state_and_event(state, event):
    with pytest.raises(LifecycleError) as info:
        next_state(state, event)
    assert str(info.value) == f"event {event.value} is illegal in state {state.value}"


def run(*events: ProcessEvent, state: ProcessState = S.STARTING) -> ProcessState:
    for event in events:
        state = next_state(state, event)
    return state


def test_paths_a_child_takes():
    assert run(E.READY, E.STOP, E.EXITED) is S.STOPPED  # asked to stop
    assert run(E.READY, E.EXITED) is S.DEAD  # crashed
    assert run(E.EXITED) is S.DEAD  # died during start-up
    assert run(E.READY, E.EXITED, E.RESTART, E.READY) is S.RUNNING  # restarted
    assert run(E.STOP, E.EXITED) is S.STOPPED  # stopped before it was ready
    assert run(E.READY, E.FINISHED, E.EXITED) is S.FINISHED  # its program returned or raised
    assert run(E.READY, E.FINISHED, E.EXITED, E.RESTART, E.READY) is S.RUNNING  # policy
    assert run(E.READY, E.STOP, E.FINISHED, E.EXITED) is S.STOPPED  # ended because stopped


def test_stop_is_idempotent_in_every_state():
    """Machine.stop() may run on every exit path: stopping twice is never an error."""
    for state in S:
        assert next_state(state, E.STOP) in (S.STOPPING, S.STOPPED, S.DEAD, S.FINISHED)


def test_only_an_ended_child_restarts():
    assert [s for s in S if (s, E.RESTART) in TRANSITIONS] == [S.FINISHED, S.DEAD]
    with pytest.raises(LifecycleError, match="event restart is illegal in state stopped"):
        run(E.READY, E.STOP, E.EXITED, E.RESTART)


def test_a_finished_child_never_runs_again_without_a_restart():
    for state in (S.STOPPED, S.DEAD, S.FINISHED):
        with pytest.raises(LifecycleError, match=f"event ready is illegal in state {state.value}"):
            next_state(state, E.READY)


def test_outcomes_describe_themselves():
    from hypervisor.lifecycle import Outcome

    assert Outcome("a", 1, "returned").describe() == "returned"
    assert Outcome("a", 1, "returned").ok
    raised = Outcome("a", 1, "raised", "ValueError", "bad 7")
    assert raised.describe() == "raised ValueError: bad 7" and not raised.ok
    assert Outcome("a", 1, "killed", exit_code=-9).describe() == "killed (signal 9)"
    assert Outcome("a", 1, "killed", exit_code=3).describe() == "killed (exit code 3)"
