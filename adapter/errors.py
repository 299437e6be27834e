"""One error type per fault, each with a stable numeric code used on the wire.

The adapter answers a bad request with a `Status` code plus the numbers that explain it; the
driver turns that pair back into the exception below, so the user sees the same exact message
whichever process detected the fault. Retryable errors are the ones a sender may simply try
again later (the request itself was well formed).
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    OK = 0
    UNKNOWN_ID = 1
    OWN_ID = 2
    BAD_COUNT = 3
    BAD_OFFSET = 4
    OUT_OF_BOUNDS = 5
    TOO_LARGE = 6
    DESTINATION_FULL = 7
    LOCK_TIMEOUT = 8
    DESTINATION_DOWN = 9
    SOURCE_MISMATCH = 10
    MALFORMED = 11
    RING_CORRUPT = 12
    ADAPTER_GONE = 13
    DESTINATION_GONE = 14


class XpmoveError(Exception):
    """Base of every error this system raises on purpose."""

    status: Status = Status.MALFORMED
    retryable = False
    cut_short = False  # set on one a wait gave up with because the machine was stopping


class UnknownNetworkId(XpmoveError):
    """The destination network ID names no partition of this machine."""

    status = Status.UNKNOWN_ID


class OwnNetworkId(XpmoveError):
    """The destination is the sender itself: a partition does not send to its own ring."""

    status = Status.OWN_ID


class BadCount(XpmoveError):
    """A byte or packet count no move may have (nothing to send, a run whose packets do
    not tile it or are too many for one request)."""

    status = Status.BAD_COUNT


class BadOffset(XpmoveError):
    """A source offset below 0."""

    status = Status.BAD_OFFSET


class OutOfBounds(XpmoveError):
    """A range outside the memory it names (own memory, or a loan's bytes): nothing was
    read or written."""

    status = Status.OUT_OF_BOUNDS


class TooLarge(XpmoveError):
    """More bytes than one record of the destination may hold (`Port.max_record(dst)`), or
    than the send space can stage."""

    status = Status.TOO_LARGE


class SourceMismatch(XpmoveError):
    """A request named another partition as its source (only a forged request does)."""

    status = Status.SOURCE_MISMATCH


class MalformedRequest(XpmoveError):
    """A request the adapter could not parse (only a forged or broken driver sends one)."""

    status = Status.MALFORMED


class RingCorrupt(XpmoveError):
    """The destination's receive ring has words no honest writer leaves: the adapter
    refuses to write there until the machine restarts that partition."""

    status = Status.RING_CORRUPT


class RetryableError(XpmoveError):
    """A refusal that may pass: the sends retry it until their `timeout`."""

    retryable = True


class DestinationFull(RetryableError):
    """The destination's receive area has no room for the record until its receiver
    takes packets out."""

    status = Status.DESTINATION_FULL


class LockTimeout(RetryableError):
    """The destination's lock (or this partition's own request slot) stayed busy past the
    wait: another sender, a loan or a lease held it."""

    status = Status.LOCK_TIMEOUT


class DestinationDown(RetryableError):
    """The destination partition is not running now (starting, restarting, or its host
    unheard from); a restart may end this."""

    status = Status.DESTINATION_DOWN


class DestinationGone(XpmoveError):
    """The destination partition ended and the hypervisor will not restart it: retrying is
    pointless (unlike DestinationDown, which a restart may end)."""

    status = Status.DESTINATION_GONE


class AdapterGone(RetryableError):
    """The driver lost its pipes to the adapter (adapter died or closed them)."""

    status = Status.ADAPTER_GONE


class InDoubt(XpmoveError):
    """The adapter died with the move in flight and no restarted adapter came back in time:
    the move may or may not have committed. Not retryable as is (a blind retry could deliver
    it twice); the pair's sequence numbers tell which."""

    status = Status.ADAPTER_GONE


ERROR_BY_STATUS: dict[Status, type[XpmoveError]] = {
    cls.status: cls
    for cls in (
        UnknownNetworkId,
        OwnNetworkId,
        BadCount,
        BadOffset,
        OutOfBounds,
        TooLarge,
        SourceMismatch,
        MalformedRequest,
        RingCorrupt,
        DestinationFull,
        LockTimeout,
        DestinationDown,
        DestinationGone,
        AdapterGone,
    )
}


def describe(
    status: int, *, src_id: int, dst_id: int, offset: int, count: int, detail: int
) -> str:
    """The exact message for a failed move, built from the request and the adapter's detail."""
    move = f"move of count {count} at offset {offset} from network ID {src_id} to {dst_id}"
    messages = {
        Status.UNKNOWN_ID: f"unknown destination network ID {dst_id} ({move})",
        Status.OWN_ID: f"destination network ID {dst_id} is the sender's own ({move})",
        Status.BAD_COUNT: (
            f"count {count} must be > 0 ({move})" if count < 1 else
            f"count {count} was refused: a run's descriptor must name packets that tile it "
            f"exactly, each padded to 8 bytes, no more than a request may carry ({move})"
        ),
        Status.BAD_OFFSET: f"source offset {offset} must be >= 0 ({move})",
        Status.OUT_OF_BOUNDS: (
            f"source range [{offset}, {offset + count}) exceeds the region of network ID "
            f"{src_id} (size {detail})"
        ),
        Status.TOO_LARGE: (
            f"count {count} exceeds the largest record network ID {dst_id}'s receive area "
            f"can hold ({detail} bytes)"
        ),
        Status.DESTINATION_FULL: (
            f"destination network ID {dst_id} is full: its receive area has {detail} bytes "
            f"free ({move}); retry later"
        ),
        Status.LOCK_TIMEOUT: f"timed out after {detail} ms waiting for the lock of {dst_id}",
        Status.DESTINATION_DOWN: f"destination network ID {dst_id} is not running; retry later",
        Status.DESTINATION_GONE: (
            f"destination network ID {dst_id} has ended and will not be restarted ({move})"
        ),
        Status.SOURCE_MISMATCH: (
            f"source network ID {src_id} in the request is not the sender's ({detail})"
        ),
        Status.MALFORMED: f"malformed request (detail {detail})",
        Status.RING_CORRUPT: f"receive area of network ID {dst_id} is corrupt (detail {detail})",
        Status.ADAPTER_GONE: "the adapter is gone; retry after it restarts",
    }
    try:
        return messages[Status(status)]
    except (ValueError, KeyError):
        return f"unknown status {status} ({move})"


def error_for(
    status: int, *, src_id: int, dst_id: int, offset: int, count: int, detail: int
) -> XpmoveError:
    """Rebuild the typed exception for a status code received over the wire."""
    try:
        cls = ERROR_BY_STATUS[Status(status)]
    except (ValueError, KeyError):
        cls = MalformedRequest
    return cls(describe(status, src_id=src_id, dst_id=dst_id, offset=offset, count=count,
                        detail=detail))
