"""Talking to the machine's children over their control channels (hypervisor/control.py): one
command and its reply, one command to several partitions at once under one common deadline, and
the events a child sends unasked (its program ended).

One command is in flight per child (`Child.call_lock`), and every reply carries its command's
id, so a reply left over from an interrupted call is dropped, never mistaken for another's.

`Calls` is a part of `Machine` (hypervisor/machine.py), kept apart because it is one idea; the
attributes and methods it uses come from Machine and its Supervision.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from hypervisor.children import CALL_TIMEOUT_S, Child, MachineError
from hypervisor.control import ControlError
from hypervisor.lifecycle import ProcessEvent, ProcessState


class Calls:
    """Machine's methods that talk to its children (see the module docstring)."""

    if TYPE_CHECKING:  # what the machine provides
        partitions: dict[int, Child]
        _call_ids: Iterator[int]
        _owner: threading.Thread
        _polling: bool

        def poll(self, liveness: bool = False) -> list[Child]: ...

    def call(self, network_id: int, message: dict, timeout: float = CALL_TIMEOUT_S) -> dict:
        """Send a command to a partition and return its reply."""
        return self._call(self.partitions[network_id], message, timeout)

    def _call(self, child: Child, message: dict, timeout: float,
              fds: tuple[int, ...] = ()) -> dict:
        """One command, one reply. Replies carry the command's id, so a reply left over from
        an interrupted call (Ctrl-C mid-call) is recognised and dropped, never mistaken."""
        call_id = next(self._call_ids)
        deadline = time.monotonic() + timeout
        if not child.call_lock.acquire(timeout=max(0.0, timeout)):
            raise MachineError(f"{child.name} busy: no turn for {message.get('cmd')!r} within "
                               f"{timeout} s")
        try:
            try:
                child.channel.send({**message, "id": call_id}, fds)
                while True:
                    reply = child.channel.receive(max(0.0, deadline - time.monotonic()))
                    if reply is None:
                        raise MachineError(f"{child.name} did not answer "
                                           f"{message.get('cmd')!r} within {timeout} s")
                    if "event" in reply:
                        self._on_event(child, reply)
                    elif reply.pop("id", None) == call_id:
                        return reply
            finally:
                child.call_lock.release()  # before any supervision: a restart never waits on it
        except (ControlError, OSError, ValueError) as exc:  # OSError/ValueError: closed under us
            if not self._polling and threading.current_thread() is self._owner:
                self.poll()
            raise MachineError(f"{child.name}: {exc}") from None

    def _on_event(self, child: Child, message: dict) -> None:
        """A message a child sent on its own: a partition's program ended."""
        if message.get("event") == "finished":
            child.report = message
            child.step(ProcessEvent.FINISHED)

    def _drain_events(self, child: Child) -> None:
        """Take the events a child sent while nobody was calling it (never blocks). While
        another thread's call waits on the channel, that call takes them (and its reply,
        which this would otherwise read and drop)."""
        if child.network_id is None or child.state not in (ProcessState.RUNNING,
                                                            ProcessState.STOPPING):
            return
        if not child.call_lock.acquire(blocking=False):
            return
        try:
            while select.select([child.channel.sock], [], [], 0)[0]:
                if not child.channel.feed_available():
                    break  # EOF: its exit is seen by supervision
            while (message := child.channel.pending()) is not None:
                if "event" in message:
                    self._on_event(child, message)
        except (ControlError, OSError, ValueError):  # closed (ValueError: fd -1): its exit
            pass  # is seen by supervision
        finally:
            child.call_lock.release()

    def _call_all(self, messages: dict[int, tuple[dict, tuple[int, ...]]],
                  timeout: float) -> dict[int, dict]:
        """One command to each of several partitions at once; the replies that came within
        one common deadline, by network ID. A partition that is stopped, busy or dead does
        not hold up the others (each message still reaches it: a late reply is dropped by id)."""
        deadline = time.monotonic() + timeout
        waiting: dict[int, int] = {}  # network ID -> call id, its call lock held
        replies: dict[int, dict] = {}
        try:
            for nid, (message, fds) in messages.items():
                child = self.partitions[nid]
                if not child.call_lock.acquire(timeout=max(0.0, min(
                        0.5, deadline - time.monotonic()))):
                    continue
                call_id = next(self._call_ids)
                try:
                    child.channel.send({**message, "id": call_id}, fds)
                except (ControlError, OSError, ValueError):
                    child.call_lock.release()
                    continue
                waiting[nid] = call_id
            while waiting:
                for nid in list(waiting):
                    child = self.partitions[nid]
                    try:
                        while (msg := child.channel.pending()) is not None:
                            if "event" in msg:
                                self._on_event(child, msg)
                            elif msg.pop("id", None) == waiting[nid]:
                                replies[nid] = msg
                                child.call_lock.release()
                                del waiting[nid]
                                break
                    except (ControlError, ValueError):
                        child.call_lock.release()
                        del waiting[nid]
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    break
                socks = {self.partitions[nid].channel.sock: nid for nid in waiting}
                try:
                    ready = select.select(list(socks), [], [], left)[0]
                except (OSError, ValueError):
                    break
                for sock in ready:
                    nid = socks[sock]
                    if not self.partitions[nid].channel.feed_available():  # EOF: it died
                        self.partitions[nid].call_lock.release()
                        del waiting[nid]
        finally:
            for nid in waiting:
                self.partitions[nid].call_lock.release()
        return replies
