"""Partitions of the layout that live on another host (issue 15, docs/cluster.md).

On a cluster every host's segment is carved from the whole config (network IDs are global),
but a host runs processes only for its own partitions. Each partition living elsewhere is a
*proxy* here: its region exists (its receive area is the outbound ring towards it), the
adapter serves its pipes like any partition's, but no process is spawned for it. Its driver
ends go to the gateway, the host's fabric, which is that partition's driver on this host.
"""

from __future__ import annotations

from typing import Protocol


class Gateway(Protocol):
    """What the machine needs from the fabric that speaks for remote partitions."""

    @property
    def network_ids(self) -> frozenset[int]:
        """The proxies: partitions of the layout that live on other hosts."""
        ...

    def remote_states(self) -> dict[int, str]:
        """Each proxy's state on its own host as last heard: "active", "dead" (restarting
        there, or its host stopped answering) or "gone" (ended for good). The machine tells
        its adapter every change, so moves to them fail as moves to a local partition would."""
        ...

    def connect(self, network_id: int, request_fd: int, reply_fd: int) -> None:
        """Take (and own) the driver ends of a proxy's pipes to the adapter: at start, and
        again each time a restarted adapter hands out fresh pipes."""
        ...
