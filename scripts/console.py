"""The console every command prints through: in a terminal, its width; in a pipe or a log
file, messages whole on one line each (no hard wrap at rich's default 80 columns, which
split tracebacks and error messages) and tables up to PIPE_WIDTH columns wide."""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 160


def make_console() -> Console:
    if sys.stdout.isatty():
        return Console()
    return Console(width=PIPE_WIDTH, soft_wrap=True)
