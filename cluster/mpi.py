"""MPI, started with the runtime settings the fabric relies on (import MPI from here).

MPICH's UCX netmod with MPIR_CVAR_NOLOCAL=1 moves one-sided puts and gets into a window over
our own memory (`Win.Create` on the host's segment) without the target process calling MPI:
by cross-memory attach on one machine, by RDMA on InfiniBand/RoCE. MPICH's default shared-memory
path would complete them only when the target calls into MPI (measured: docs/cluster.md). A
value the user already set wins.
"""

from __future__ import annotations

import os

RUNTIME_ENV = {"MPIR_CVAR_CH4_NETMOD": "ucx", "MPIR_CVAR_NOLOCAL": "1"}

for _name, _value in RUNTIME_ENV.items():
    os.environ.setdefault(_name, _value)

from mpi4py import MPI  # noqa: E402  (importing it starts MPI: the settings come first)

__all__ = ["MPI", "RUNTIME_ENV"]
