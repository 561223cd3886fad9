"""Terminal output shared by the commands: rich tables, and a progress bar on a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _width() -> int | None:
    """A terminal's own width; piped, $COLUMNS or wide enough that no cell wraps."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 100_000


console = Console(highlight=False, soft_wrap=True, width=_width())


def table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    """Print a table (plain box characters when not on a terminal)."""
    t = Table(title=title, title_justify="left", show_lines=False)
    for name in columns:
        t.add_column(name, overflow="fold")
    for row in rows:
        t.add_row(*row)
    console.print(t)


@contextmanager
def progress(total: int, what: str) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable; draws a bar only when stdout is a terminal."""
    if not sys.stdout.isatty() or total <= 1:
        yield lambda: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)
