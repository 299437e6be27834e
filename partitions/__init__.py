"""Partitions: the driver, the receiver and the `Port` a partition program gets.

A partition program is a function `main(port)` named in the config
(`program = "package.module:function"`). Everything it needs is exported here: the `Port`,
what it returns (`Sent`, `Packet`, `Run`, the zero-copy `Loan` and `LoanRun`, the standing
grant `Lease`), the flows
(`Flow.FIG11`: the adapter moves the bytes; `Flow.FIG12`: the driver moves them under the
granted lock) and the typed errors.
"""

from adapter.errors import (
    AdapterGone,
    BadCount,
    BadOffset,
    DestinationDown,
    DestinationFull,
    DestinationGone,
    InDoubt,
    LockTimeout,
    MalformedRequest,
    OutOfBounds,
    OwnNetworkId,
    RetryableError,
    RingCorrupt,
    SourceMismatch,
    TooLarge,
    UnknownNetworkId,
    XpmoveError,
)
from adapter.protocol import Flow
from partitions.cork import QueuedSendFailed, QueueFull
from partitions.driver import Sent
from partitions.lease import Lease, LeaseClosed
from partitions.leasing import LeaseLost
from partitions.loan import (
    Loan,
    LoanEnded,
    LoanError,
    LoanExported,
    LoanHeld,
    LoanLeftOpen,
    LoanRun,
)
from partitions.memory import PartitionView
from partitions.port import Port, Run
from partitions.receiver import Packet

__all__ = [
    "AdapterGone", "BadCount", "BadOffset", "DestinationDown", "DestinationFull", "DestinationGone",
    "Flow",
    "InDoubt", "Lease", "LeaseClosed", "LeaseLost",
    "Loan", "LoanEnded", "LoanError", "LoanExported", "LoanHeld", "LoanLeftOpen", "LoanRun",
    "LockTimeout", "MalformedRequest", "OutOfBounds", "OwnNetworkId", "Packet",
    "PartitionView", "Port", "QueueFull", "QueuedSendFailed", "RetryableError", "RingCorrupt",
    "Run", "Sent", "SourceMismatch",
    "TooLarge", "UnknownNetworkId", "XpmoveError",
]
