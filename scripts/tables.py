"""Result tables that fit the terminal (or a pipe's PIPE_WIDTH) without cutting a number.

A `Grid` is a table as data: title, columns, rows, and which columns may go when the width is
short. It is a rich renderable, so `console.print(grid)` works; at print time it is laid out
for the console's width, dropping the droppable columns one by one, in the order given, until
every number fits whole. Text
columns fold (a long name wraps onto a second line), numbers never do: a number that does not
fit whole is never shown cut, its column goes instead and a caption says which went.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

ELLIPSIS = "…"
TEXT_MIN = 12  # a text column folds to no fewer characters than this (or its longest cell)


@dataclass(frozen=True)
class Col:
    header: str
    justify: str = "right"  # numbers right, text left
    text: bool = False  # free text: may fold onto more lines (names, error lists)


@dataclass
class Grid:
    title: str
    columns: Sequence[Col]
    rows: list[Sequence[str]] = field(default_factory=list)
    drop: Sequence[str] = ()  # headers of columns that may go when narrow, first to go first
    caption: str | None = None

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row of {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(cells)

    def table(self, width: int) -> Table:
        """The fullest table that fits `width` columns with every cell whole."""
        dropped: list[str] = []
        while True:
            columns = [c for c in self.columns if c.header not in dropped]
            table = self._build(columns, dropped)
            fits = sum(map(self._least, columns)) + 3 * len(columns) + 1 <= width
            left = [h for h in self.drop if h not in dropped]
            if (fits and not _cuts(table, width)) or not left:
                return table  # (nothing more may go: as good as it gets)
            dropped.append(left[0])

    def _least(self, column: Col) -> int:
        """The narrowest a column may be: its longest number whole, or a text column folded
        to TEXT_MIN characters; never narrower than the longest word of its header."""
        i = list(self.columns).index(column)
        longest = max((len(_plain(row[i])) for row in self.rows), default=0)
        if column.text:
            longest = min(longest, TEXT_MIN)
        return max(longest, *map(len, column.header.split()))

    def _build(self, columns: list[Col], dropped: list[str]) -> Table:
        caption = self.caption
        if dropped:
            note = f"(narrow terminal: not shown: {', '.join(dropped)})"
            caption = f"{caption}\n{note}" if caption else note
        table = Table(title=self.title, caption=caption)
        for c in columns:
            table.add_column(c.header, justify=c.justify,  # type: ignore[arg-type]
                             no_wrap=not c.text, overflow="fold" if c.text else "ellipsis",
                             min_width=self._least(c))
        keep = [i for i, c in enumerate(self.columns) if c in columns]
        for row in self.rows:
            table.add_row(*(row[i] for i in keep))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)


def _plain(cell: str) -> str:
    return Text.from_markup(cell).plain


def _cuts(table: Table, width: int) -> bool:
    """Whether rendering `table` at `width` columns cuts a cell (rich marks it with …) or
    overflows the width (columns that may not shrink further)."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(table,
                                                                                  crop=False)
    text = out.getvalue()
    return ELLIPSIS in text or max(map(len, text.splitlines()), default=0) > width


def render_text(renderable: object, width: int = 80) -> str:
    """What `renderable` prints at `width` columns, as plain text (tests, logs)."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()
