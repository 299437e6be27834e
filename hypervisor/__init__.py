"""The platform: the machine (segment, IPC names, processes), its config and supervision.

The public API for running a machine from Python::

    from hypervisor import Machine, load_config

    with Machine(load_config("my.toml")) as machine:
        outcomes = machine.wait(timeout=60)   # {network ID: Outcome}

`xpmove run --config my.toml` does the same from the command line.
"""

from hypervisor.config import ConfigError, MachineConfig, PartitionConfig, load_config
from hypervisor.lifecycle import Outcome
from hypervisor.machine import Machine, MachineError

__all__ = ["ConfigError", "Machine", "MachineConfig", "MachineError", "Outcome",
           "PartitionConfig", "load_config"]
