"""How a program ended, as its partition reports it (the `finished` event, or the answer to
`stop`): pure functions over the exception and what the program left undone.

The report is a dict: "outcome" ("returned", "raised" or "stopped"), and for the last two
"error" (the exception's type name), "message" and "traceback" (strings only: a report keeps
no frame alive, so views the program made of its loans die with it). Two rules:

* Nothing accepted is lost silently: packets queued and not moved, or a loan left open,
  turn a return, or a stop, into "raised" naming them (`with_problems`).
* A wait that the machine's stop cut short (an xpmove error marked `cut_short` by the wait
  that noticed the stop: `waiting.retrying`, the cork) is the stop, not a failure: "stopped".
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from collections.abc import Iterable

import adapter
import hypervisor
import partitions

PROGRAM_FRAMES = 4  # the program's own frames a traceback shows at most (the innermost)
# frames that are not the program's own: xpmove's, the standard library's, installed packages'
LIBRARY = tuple(os.path.dirname(os.path.abspath(m.__file__ or "")) + os.sep
                for m in (adapter, hypervisor, partitions))
NOT_THE_PROGRAM = LIBRARY + tuple(
    os.path.abspath(p) + os.sep
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


def raised(exc: BaseException, stopping: bool) -> dict:
    """The report of a program that raised `exc` (`stopping`: the machine's stop was set).
    Never raises: an exception whose str() fails is still reported."""
    try:
        message = str(exc)
    except Exception as err:  # a broken __str__ must not lose the report
        message = f"(its str() raised {type(err).__name__})"
    try:
        text = program_traceback(exc)
    except Exception:
        text = ""
    stopped = stopping and getattr(exc, "cut_short", False)
    return {"outcome": "stopped" if stopped else "raised", "error": type(exc).__name__,
            "message": message, "traceback": text}


def with_problems(report: dict, problems: Iterable[BaseException]) -> dict:
    """`report` with what the program left undone: the first problem becomes the failure of a
    program that returned or was stopped (the stop's cut-short error is kept in its message),
    later ones are appended."""
    for problem in problems:
        if report["outcome"] == "raised":
            report = {**report, "message": f"{report['message']}; and {problem}"}
            continue
        stop = (f" (its wait was cut short by the stop: {report['error']}: "
                f"{report['message']})" if report["outcome"] == "stopped" else "")
        report = {**report, "outcome": "raised", "error": type(problem).__name__,
                  "message": f"{problem}{stop}"}
    return report


class _Folded(traceback.StackSummary):
    """A stack whose frames inside the library were folded: says how many before the last."""

    hidden = 0

    def format(self, *args, **kwargs) -> list[str]:
        lines = super().format(*args, **kwargs)
        if self.hidden:
            lines.insert(len(lines) - 1, f"  ({self.hidden} frame(s) not shown)\n")
        return lines


def program_traceback(exc: BaseException) -> str:
    """`exc`'s traceback (with its causes) as the program's author needs it: the program's
    own innermost frames, the line that called the library among them, then of the
    library's frames (xpmove's, the standard library's, installed packages') only the one
    that raised. The outermost frame, the partition's call of the program, is dropped."""
    te = traceback.TracebackException.from_exception(exc)
    frames = list(te.stack)[1:]
    mine = [i for i, f in enumerate(frames) if not _library(f.filename)]
    folded = _Folded(frames)  # a StackSummary is a list of FrameSummary
    if mine:
        last = mine[-1]
        inside = frames[last + 1:]
        folded = _Folded(frames[max(0, last + 1 - PROGRAM_FRAMES):last + 1] + inside[-1:])
        folded.hidden = max(0, len(inside) - 1)
    te.stack = folded
    return "".join(te.format())


def _library(filename: str) -> bool:
    return filename.startswith("<") or os.path.abspath(filename).startswith(NOT_THE_PROGRAM)
