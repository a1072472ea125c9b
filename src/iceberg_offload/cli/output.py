"""Output for operator commands: text or JSON, exit codes, loading the config.

Text is a list of parts: lines of text and `Grid` tables. On a terminal a grid is a rich table that fits its
width; anywhere else (a pipe, a file, the tests) it is plain aligned text, columns two spaces apart, the same
bytes whatever the terminal. JSON is the same everywhere. rich is imported only when a terminal shows a table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING, Any

from iceberg_offload.errors import EXIT_FAILED as EXIT_FAILED  # the codes live with the errors that choose them
from iceberg_offload.errors import EXIT_OK as EXIT_OK
from iceberg_offload.errors import EXIT_USAGE as EXIT_USAGE
from iceberg_offload.errors import redact

if TYPE_CHECKING:
    from rich.console import Console

    from iceberg_offload.config import Settings

Args = SimpleNamespace
"""A command's options, merged from every level they may be given at (see cli/app.py)."""


@dataclass
class Grid:
    """A table of a command's text output: `str()` is the plain form, `render` shows it rich on a terminal."""

    headers: list[str]
    rows: list[list[Any]]

    def cells(self) -> list[list[str]]:
        return [[("-" if v is None else str(v)) for v in r] for r in self.rows]

    def __str__(self) -> str:
        cells = self.cells()
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(self.headers)]
        line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
        return "\n".join([line(self.headers), line(["-" * w for w in widths]), *map(line, cells)])


Part = str | Grid
Text = str | Sequence[Part]


def grid(headers: list[str], rows: list[list[Any]]) -> str:
    """The plain text of a table (`Grid` keeps it a table for a terminal)."""
    return str(Grid(headers, rows))


def parts_of(text: Text) -> list[Part]:
    return [text] if isinstance(text, str) else list(text)


def plain(text: Text) -> str:
    return "\n".join(str(p) for p in parts_of(text))


def wants_json(args: Args) -> bool:
    return bool(getattr(args, "json", False))


def emit(args: Args, data: Any, text: Callable[[], Text], model: Any) -> None:
    """Print the result: `data` under --json (its shape is `model`, a payloads*.py class; checked when
    OFFLOAD_CHECK_PAYLOADS=1, as in the tests), else `text()`. Every output passes `redact` (saw-texts and
    SQL may quote a DSN or a key)."""
    if wants_json(args):
        print_json(data, model)
        return
    out = text()
    if is_terminal(sys.stdout):
        render(parts_of(out), terminal(sys.stdout))
    else:
        print(redact(plain(out)))


def print_json(data: Any, model: Any) -> None:
    from iceberg_offload.payload_docs import check, checking

    if checking():
        check(data, model)
    print(redact(json.dumps(data, indent=2, default=str)))


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def terminal(stream: IO[str], width: int | None = None) -> Console:
    from rich.console import Console

    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def render(parts: list[Part], console: Console) -> None:
    """Parts on a terminal: text as it is (no markup: `[[tables]]` is text), grids as tables that fit."""
    from rich.text import Text as RichText

    for part in parts:
        if isinstance(part, Grid):
            console.print(_table(part, console.width))
        else:
            console.print(RichText(redact(part)))


def _table(g: Grid, width: int) -> Any:
    """A rich table that fits `width`: long free-text columns (what, saw, ttl) wrap, the others keep their
    values whole; when the whole values alone are wider than the terminal, one block per row instead
    (its first value, then each column's name and value)."""
    from rich import box
    from rich.console import Group
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text as RichText

    cells = [[redact(c) for c in row] for row in g.cells()]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(g.headers)]
    wraps = [w > WRAP_MIN and any(" " in r[i] for r in cells) for i, w in enumerate(widths)]
    least = sum(WRAP_MIN if wrap else w for w, wrap in zip(widths, wraps, strict=True)) + 2 * (len(widths) - 1)
    if least <= width or len(g.headers) < 3:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for h, wrap in zip(g.headers, wraps, strict=True):
            table.add_column(RichText(h), no_wrap=not wrap, overflow="fold")
        for row in cells:
            table.add_row(*(RichText(c) for c in row))
        return table
    blocks: list[Any] = []
    for row in cells:
        pairs = Table.grid(padding=(0, 2))
        pairs.add_column(no_wrap=True, style="bold")
        pairs.add_column(overflow="fold")
        for h, c in zip(g.headers[1:], row[1:], strict=True):
            pairs.add_row(RichText(h), RichText(c))
        blocks += [RichText(row[0], style="bold"), Padding(pairs, (0, 0, 1, 2))]
    return Group(*blocks)


WRAP_MIN = 20
"""A column of free text is wrapped down to this width before a table becomes one block per row."""


def load_settings(args: Args) -> Settings:
    from iceberg_offload.config import load  # pydantic: not for --help

    return load(args.config)


def load_prefect_settings(args: Args) -> Settings:
    from iceberg_offload.config import apply_prefect_env

    settings = load_settings(args)
    apply_prefect_env(settings)
    return settings
