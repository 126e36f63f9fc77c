"""What the CLI prints: rich tables that never cut text, and ``--json`` documents for scripts.

* :class:`CliConsole` folds every table cell that does not fit (no ``…``), and when stdout is not
  a terminal (a pipe or a file) it lays tables out at their natural width instead of 80 columns,
  so ``tinyrm recipes | grep NAME`` finds whole names. An exported ``COLUMNS`` still sets the width.
* :func:`json_output` (entered by ``main`` for ``--json``) sends everything printed to stdout to
  stderr while the command runs; :func:`emit_json` writes the one JSON document to the real stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any, TextIO

from rich.console import Console, ConsoleDimensions
from rich.table import Table

# Width for output that is not a terminal: wide enough that no table or line is wrapped.
PIPE_WIDTH = 10_000


def fold(table: Table) -> Table:
    """Wrap long cells onto more lines and split words wider than their column: never ellipsize."""
    for column in table.columns:
        column.overflow = "fold"
        column.no_wrap = False
    return table


class CliConsole(Console):
    """``rich.console.Console`` for CLI output; see the module docstring."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal:  # _width: Console(width=...) or $COLUMNS
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(fold(o) if isinstance(o, Table) else o for o in objects), **kwargs)


def make_console(stderr: bool = False) -> CliConsole:
    return CliConsole(stderr=stderr)


_json_streams: list[TextIO] = []


@contextmanager
def json_output(enabled: bool = True) -> Iterator[None]:
    """While active, stdout is stderr: only :func:`emit_json` reaches the real stdout."""
    if not enabled:
        yield
        return
    _json_streams.append(sys.stdout)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _json_streams.pop()


def emit_json(document: Any) -> None:
    """Print ``document`` as the command's one JSON document on stdout."""
    stream = _json_streams[-1] if _json_streams else sys.stdout
    stream.write(json.dumps(document, indent=2) + "\n")
    stream.flush()


def show_results(results: dict, table, output: str | None, as_json: bool) -> int:
    """An eval command's end: the JSON document with ``--json``, else the table and where it was written."""
    if as_json:
        emit_json(results)
        return 0
    console = make_console()
    console.print(table(results))
    if output:
        console.print(f"wrote {output}")
    return 0
