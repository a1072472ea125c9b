"""Output for operator commands: text tables or --json, exit codes, a progress line, loading the config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iceberg_offload.errors import EXIT_FAILED as EXIT_FAILED  # the codes live with the errors that choose them
from iceberg_offload.errors import EXIT_OK as EXIT_OK
from iceberg_offload.errors import EXIT_USAGE as EXIT_USAGE
from iceberg_offload.errors import redact

if TYPE_CHECKING:
    from iceberg_offload.config import Settings


def load_settings(args: argparse.Namespace) -> Settings:
    from iceberg_offload.config import load  # pydantic: not for --help

    return load(args.config)


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    """Print the result; every output passes `redact` (saw-texts and SQL may quote a DSN or a key)."""
    print(redact(json.dumps(data, indent=2, default=str) if args.json else text()))


def grid(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


class ProgressBar:
    """A progress line on stderr for a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    def __call__(self, table: str, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * min(done, total) / total)
        sys.stderr.write(f"\r{table:<28} [{'#' * filled}{'.' * (width - filled)}] {done:>10,}/{total:,} rows")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def load_prefect_settings(args: argparse.Namespace) -> Settings:
    from iceberg_offload.config import apply_prefect_env

    settings = load_settings(args)
    apply_prefect_env(settings)
    return settings
