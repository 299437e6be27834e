"""The `xpmove` command's entry point (pyproject's [project.scripts]).

It imports the command line itself, so that a Ctrl-C while the tools load (about 85 ms of
imports, before scripts/cli.py has its signal handlers in place) ends the command quietly with
130, as a Ctrl-C at any later moment does, instead of printing a KeyboardInterrupt traceback.
Nothing else is imported here: the window this leaves is the interpreter's own start.
"""

from __future__ import annotations

INTERRUPTED = 130  # the exit code of every xpmove command stopped by Ctrl-C


def main() -> int:
    try:
        from scripts.cli import main as cli_main
    except KeyboardInterrupt:
        return INTERRUPTED
    return cli_main()
