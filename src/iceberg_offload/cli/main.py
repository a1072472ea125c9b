"""The `iceberg-offload` program. Thin: parse (cli/app.py), call one cmd_* function, exit 0 / 1 (a table
failed) / 2 (bad config or input: the error's `exit_code`; a bad command line too). Every command takes
-c/--config and -o/--output (or --json), before or after it.

The cmd_* functions are looked up here by name when a command runs, so a test may replace one
(`monkeypatch.setattr(cli.main, "cmd_status", ...)`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from iceberg_offload.cli.app import root
from iceberg_offload.cli.commands import cmd_demo, cmd_run, cmd_status, cmd_verify
from iceberg_offload.cli.declare import Invocation
from iceberg_offload.cli.maintain import cmd_maintain, cmd_view
from iceberg_offload.cli.ops import (
    cmd_deploy,
    cmd_doctor,
    cmd_down,
    cmd_metrics,
    cmd_ps,
    cmd_recover,
    cmd_schedule,
    cmd_supervise,
    cmd_trigger,
    cmd_up,
    cmd_worker,
)
from iceberg_offload.cli.output import EXIT_OK, Args, print_json
from iceberg_offload.cli.watermark import cmd_adopt, cmd_watermark_set, cmd_watermark_show
from iceberg_offload.errors import OffloadError, UsageError
from iceberg_offload.payloads import ErrorPayload
from iceberg_offload.process import gc_paused, limit_malloc_arenas

PROG = "iceberg-offload"
__all__ = [
    "PROG",
    "main",
    "parse",
    "cmd_adopt",
    "cmd_demo",
    "cmd_run",
    "cmd_status",
    "cmd_verify",
    "cmd_watermark_set",
    "cmd_watermark_show",
    "cmd_maintain",
    "cmd_view",
    "cmd_deploy",
    "cmd_doctor",
    "cmd_down",
    "cmd_metrics",
    "cmd_ps",
    "cmd_recover",
    "cmd_schedule",
    "cmd_supervise",
    "cmd_trigger",
    "cmd_up",
    "cmd_worker",
]


def parse(argv: Sequence[str]) -> Invocation | None:
    """Parse a command line as the program does, running nothing: the command's Invocation, or None when
    parsing ended the program (--help, --version: printed). A bad command line raises click.UsageError
    (unknown command or option, a missing or bad value)."""
    result = root.main(list(argv), prog_name=PROG, standalone_mode=False)
    return result if isinstance(result, Invocation) else None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            invocation = parse(sys.argv[1:] if argv is None else argv)
        except click.ClickException as exc:  # usage: said on stderr with the usage line, exit 2
            if _json_asked(sys.argv[1:] if argv is None else argv):
                _emit_error(Args(json=True), _usage(exc))
            else:
                exc.show()
            return exc.exit_code
        except click.Abort:
            return 130
        if invocation is None:
            return EXIT_OK
        limit_malloc_arenas()
        _say_warnings()
        if invocation.func == "cmd_run":  # runs once: its imports and its cycle without the cyclic GC
            with gc_paused():
                return _run(invocation)
        return _run(invocation)
    except BrokenPipeError:  # `| head` closed the pipe: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(invocation: Invocation) -> int:
    args = invocation.args
    try:
        return int(globals()[invocation.func](args))
    except OffloadError as exc:
        _emit_error(args, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every commit that landed is kept and nothing partial is (iceberg-offload watermark "
            "show); run the command again to continue from the watermark",
            file=sys.stderr,
        )
        return 130


def _say_warnings() -> None:
    """Our warnings (a wait for the engine, say) reach the operator on stderr, once."""
    import logging

    class Stderr(logging.Handler):  # the stderr of the moment (tests swap it), not the one at setup
        def emit(self, record: logging.LogRecord) -> None:
            print(self.format(record), file=sys.stderr)

    log = logging.getLogger("iceberg_offload")
    if not any(type(h).__name__ == "Stderr" for h in log.handlers):
        handler = Stderr(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)


def _json_asked(argv: Sequence[str]) -> bool:
    """--json, -o json, --output json (or =json, -ojson) anywhere on a command line click could not read."""
    words = list(argv)
    pairs = zip(words, [*words[1:], ""][: len(words)], strict=True)
    return any(
        w == "--json" or w in ("--output=json", "-ojson") or (w in ("-o", "--output") and nxt == "json")
        for w, nxt in pairs
    )


def _usage(exc: click.ClickException) -> UsageError:
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else PROG
    return UsageError(exc.format_message(), f"see `{command} --help`")


def _emit_error(args: Args, exc: OffloadError) -> None:
    if getattr(args, "json", False):
        print_json({"ok": False, "error": exc.as_dict()}, ErrorPayload)
    else:
        print(f"error: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
