"""Lifecycle of the hypervisor's children (adapter and partitions) as a transition table."""

from __future__ import annotations

from enum import Enum


class ProcessState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DEAD = "dead"  # exited without being asked to


class ProcessEvent(Enum):
    READY = "ready"
    STOP = "stop"
    EXITED = "exited"
    RESTART = "restart"


TRANSITIONS: dict[tuple[ProcessState, ProcessEvent], ProcessState] = {
    (ProcessState.STARTING, ProcessEvent.READY): ProcessState.RUNNING,
    (ProcessState.STARTING, ProcessEvent.EXITED): ProcessState.DEAD,
    (ProcessState.STARTING, ProcessEvent.STOP): ProcessState.STOPPING,
    (ProcessState.RUNNING, ProcessEvent.STOP): ProcessState.STOPPING,
    (ProcessState.RUNNING, ProcessEvent.EXITED): ProcessState.DEAD,
    (ProcessState.STOPPING, ProcessEvent.EXITED): ProcessState.STOPPED,
    (ProcessState.STOPPING, ProcessEvent.STOP): ProcessState.STOPPING,
    (ProcessState.DEAD, ProcessEvent.STOP): ProcessState.DEAD,
    (ProcessState.DEAD, ProcessEvent.EXITED): ProcessState.DEAD,
    (ProcessState.DEAD, ProcessEvent.RESTART): ProcessState.STARTING,
    (ProcessState.STOPPED, ProcessEvent.STOP): ProcessState.STOPPED,
    (ProcessState.STOPPED, ProcessEvent.EXITED): ProcessState.STOPPED,
}


class LifecycleError(RuntimeError):
    pass


def next_state(state: ProcessState, event: ProcessEvent) -> ProcessState:
    """The state after `event`; an illegal transition names both."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LifecycleError(f"event {event.value} is illegal in state {state.value}") from None
