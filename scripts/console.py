"""The console every command prints through: in a terminal, its width; in a pipe or a log
file, messages whole on one line each (no hard wrap at rich's default 80 columns, which
split tracebacks and error messages) and tables up to $COLUMNS, else PIPE_WIDTH, columns."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 160


def make_console(soft_wrap: bool = True) -> Console:
    """`soft_wrap=False` for output that is all tables and short lines (status): a table's
    caption then folds to the width like the table."""
    if sys.stdout.isatty():
        return Console()
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH
    return Console(width=width, soft_wrap=soft_wrap)
