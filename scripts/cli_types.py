"""The `xpmove` command line's argument types: each returns the parsed value or names the bad
value and why.

They are the parser's `type=` functions (cli.py), so a bad value is refused before anything
starts, argparse-style (usage, one line naming the value, exit 2).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile


class BadOption(Exception):
    """An option value refused once the config is known (a --size its rings cannot carry):
    one line naming it, exit 2, as the parser does for the rest (cli.main)."""


def check_packet_size(size: int, limit: int) -> None:
    """BadOption unless `size` is a packet the built-in workload can send on a machine whose
    largest packet is `limit` (launch.largest_packet)."""
    from scripts.workload.pattern import MIN_PACKET  # numpy: only the commands that send

    if not MIN_PACKET <= size <= limit:
        raise BadOption(f"--size {size} must be in [{MIN_PACKET}, {limit}] for this config "
                        f"(sender area and half a receive ring)")


def seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds > 0")
    return value


def count(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 1")
    return value


def size(text: str) -> int:
    """Bytes, or with a KiB/MiB suffix (as `bench --sizes`)."""
    from scripts.loadgen.benchcore import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _items(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(items):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of {what}")
    return list(dict.fromkeys(items))


def sizes(text: str) -> tuple[int, ...]:
    return tuple(size(t) for t in _items(text, "packet sizes, e.g. 64,1KiB,1MiB"))


def batches(text: str) -> tuple[int, ...]:
    return tuple(dict.fromkeys(count(t) for t in _items(text, "integers >= 1, e.g. 1,32")))


def flows(text: str) -> tuple[str, ...]:
    """launch's and soak's --flows: the adapter's flows and fig12-lease (a lease per
    destination); a flow named twice counts once."""
    from scripts.workload.program import TRAFFIC_FLOWS

    items = _items(text, f"flows ({', '.join(TRAFFIC_FLOWS)})")
    for f in items:
        if f not in TRAFFIC_FLOWS:
            raise argparse.ArgumentTypeError(f"unknown flow {f!r} (known: "
                                             f"{', '.join(TRAFFIC_FLOWS)})")
    return tuple(items)


def transports(text: str) -> tuple[str, ...]:
    from scripts.loadgen.options import TRANSPORTS

    known = ", ".join(TRANSPORTS)
    items = _items(text, f"transports (known: {known})")
    unknown = [t for t in items if t not in TRANSPORTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown {', '.join(map(repr, unknown))} "
                                         f"(known: {known})")
    return tuple(items)


def output_path(text: str) -> str:
    """A file the command can create or overwrite at the end: checked before anything runs."""
    path = os.path.expanduser(text)
    parent = os.path.dirname(os.path.abspath(path))
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text!r}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: no permission to write in {parent}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not writable")
    try:  # what permissions do not show (root, a read-only file system): try it, change nothing
        _try_writing(path, parent)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: cannot be written ({exc.strerror})") from None
    return path


PLOT_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")


def plot_path(text: str) -> str:
    """`output_path` whose suffix names a format Fig 14 can be drawn in: a bad one used to
    fail only after the whole bench, and a missing one made matplotlib write PATH.png."""
    path = output_path(text)
    if os.path.splitext(path)[1].lower().lstrip(".") not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a file name ending in the format to draw in "
            f"({', '.join('.' + f for f in PLOT_FORMATS)}; e.g. fig14.png)")
    return path


def _try_writing(path: str, parent: str) -> None:
    """Open the file for writing without creating it, or, if it is not there, create and
    remove a file of our own beside it: the path itself is never created, not even for a
    moment (every MPI rank of a cluster bench checks the same --json at once)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        return
    except FileNotFoundError:
        pass
    with tempfile.NamedTemporaryFile(dir=parent, prefix=".xpmove-write-check-"):
        pass
