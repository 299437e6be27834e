"""Lifecycle of the hypervisor's children (adapter and partitions) as a transition table, and
how a partition's program ended (`Outcome`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ProcessState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"  # its program returned or raised, and it said so
    DEAD = "dead"  # exited without being asked to and without a word


class ProcessEvent(Enum):
    READY = "ready"
    STOP = "stop"
    EXITED = "exited"
    RESTART = "restart"
    FINISHED = "finished"  # the partition reported its program's end


TRANSITIONS: dict[tuple[ProcessState, ProcessEvent], ProcessState] = {
    (ProcessState.STARTING, ProcessEvent.READY): ProcessState.RUNNING,
    (ProcessState.STARTING, ProcessEvent.EXITED): ProcessState.DEAD,
    (ProcessState.STARTING, ProcessEvent.STOP): ProcessState.STOPPING,
    (ProcessState.RUNNING, ProcessEvent.STOP): ProcessState.STOPPING,
    (ProcessState.RUNNING, ProcessEvent.EXITED): ProcessState.DEAD,
    (ProcessState.RUNNING, ProcessEvent.FINISHED): ProcessState.FINISHED,
    (ProcessState.STOPPING, ProcessEvent.FINISHED): ProcessState.STOPPING,
    (ProcessState.FINISHED, ProcessEvent.EXITED): ProcessState.FINISHED,
    (ProcessState.FINISHED, ProcessEvent.STOP): ProcessState.FINISHED,
    (ProcessState.FINISHED, ProcessEvent.FINISHED): ProcessState.FINISHED,
    (ProcessState.FINISHED, ProcessEvent.RESTART): ProcessState.STARTING,
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


@dataclass(frozen=True)
class Outcome:
    """How a partition's program ended.

    `state` is "returned", "raised" (then `error` is the exception's type and `message` its
    text), "killed" (the process died without reporting: `exit_code` says how, negative for a
    signal), "stopped" (it was still running when the machine stopped it; `error` and
    `message` name an xpmove error the stop caused it to raise, if it did) or "running".
    """

    name: str
    network_id: int
    state: str
    error: str = ""
    message: str = ""
    exit_code: int | None = None
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "returned"

    def describe(self) -> str:
        """One line for an operator: "returned", "raised ValueError: bad", "killed (signal 9)"."""
        if self.state == "raised":
            return f"raised {self.error}: {self.message}"
        if self.state == "killed":
            code = self.exit_code
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return f"killed ({how})"
        if self.state == "stopped" and self.error:
            return f"stopped (its wait cut short: {self.error}: {self.message})"
        return self.state
