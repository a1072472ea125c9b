"""Operator commands. Thin: parse, call one function, print text or --json, exit 0 / 1 (a table failed) / 2
(bad config or input: the error's `exit_code`). Every command takes --config and --json."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iceberg_offload import __version__
from iceberg_offload.cli.output import EXIT_FAILED, EXIT_OK, ProgressBar, emit, grid, load_settings
from iceberg_offload.errors import OffloadError
from iceberg_offload.names import DEFAULT_CONFIG
from iceberg_offload.process import limit_malloc_arenas


def _common(after_command: bool = True) -> argparse.ArgumentParser:
    """--config and --json, valid before the command and after it. After it, an option not given sets
    nothing (SUPPRESS), so the value given before the command is kept."""
    p = argparse.ArgumentParser(add_help=False)
    unset = argparse.SUPPRESS if after_command else None
    p.add_argument("--config", metavar="PATH", default=unset,
                   help=f"config file (default ./{DEFAULT_CONFIG}; none = embedded default)")
    p.add_argument("--json", action="store_true", default=unset if after_command else False,
                   help="print JSON instead of text")
    return p


def _tables_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="append", metavar="NAME", help="only this table (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="iceberg-offload", parents=[_common(after_command=False)],
                                     description="Copy ClickHouse rows into Iceberg before the TTL deletes them.")
    parser.add_argument("--version", action="version", version=f"iceberg-offload {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", parents=[common], help="one offload cycle over all (or --table) tables")
    _tables_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", parents=[common], help="watermark, lag, hot/cold rows and TTL headroom per table")
    _tables_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watermark", parents=[common], help="the watermark history from Iceberg snapshots")
    wsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    w = wsub.add_parser("show", parents=[common], help="every commit that carried a watermark, newest first")
    _tables_arg(w)
    w.set_defaults(func=cmd_watermark_show)
    w = wsub.add_parser("set", parents=[common], help="preview (or --yes: commit) a new watermark for one table")
    w.add_argument("--table", required=True, metavar="NAME")
    w.add_argument("--to", required=True, metavar="TIME", help="ISO 8601 (UTC) or epoch seconds")
    w.add_argument("--seq", type=int, default=None, help="sequence value at that time (default: none)")
    w.add_argument("--yes", action="store_true", help="commit it (default: only show the effect)")
    w.add_argument("--reoffload", action="store_true", help="allow moving back: rows are offloaded again")
    w.add_argument("--future", action="store_true", help="allow a watermark after now - settle_seconds (every row "
                                                         "until then is skipped)")
    w.set_defaults(func=cmd_watermark_set)

    p = sub.add_parser("adopt", parents=[common],
                       help="take the configured ClickHouse table as the source of an Iceberg table offloaded from "
                            "another (a deliberate move): its rows above the watermark are offloaded next, rows at or "
                            "below it are assumed to be in Iceberg already; preview unless --yes")
    p.add_argument("--table", required=True, metavar="NAME")
    p.add_argument("--yes", action="store_true", help="record the new source (default: only show the effect)")
    p.set_defaults(func=cmd_adopt)

    p = sub.add_parser("verify", parents=[common], help="hot vs cold per hour: rows missing, duplicated or changed "
                                                        "in cold")
    _tables_arg(p)
    p.add_argument("--values", action=argparse.BooleanOptionalAction, default=None,
                   help="compare every column of every row, not only keys (default: on for final tables)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", parents=[common], help="seed the embedded ClickHouse with market data and offload it")
    p.set_defaults(func=cmd_demo)

    from iceberg_offload.cli import maintain as cli_maint
    from iceberg_offload.cli import ops as cli_ops

    cli_ops.add_parsers(sub, common)
    cli_maint.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    limit_malloc_arenas()
    _say_warnings()
    try:
        return int(args.func(args))
    except OffloadError as exc:
        _emit_error(args, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: every commit that landed is kept and nothing partial is (iceberg-offload watermark "
              "show); run the command again to continue from the watermark", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `| head` closed the pipe: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


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


def _emit_error(args: argparse.Namespace, exc: OffloadError) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": exc.as_dict()}, indent=2))
    else:
        print(f"error: {exc}", file=sys.stderr)


# -- commands -------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from iceberg_offload.engine.offload import run_cycle

    settings = load_settings(args)
    result = run_cycle(settings, args.table, progress=ProgressBar(not args.json))
    moved = [t.table for t in result.tables if t.status == "ok" and (t.rows or t.late_rows_added)]
    if moved:  # a view that cannot follow stays where it was (exact until the TTL passes it): reported
        from iceberg_offload.maintenance.view import refresh_views

        result.note_views(refresh_views(settings, moved))
    emit(args, result.as_dict(), lambda: _run_text(result.as_dict()))
    return EXIT_OK if result.status == "success" else EXIT_FAILED


def _run_text(data: dict[str, Any]) -> str:
    rows = []
    for t in data["tables"]:
        wm = (t["watermark_after"] or {}).get("ts")
        rows.append([t["table"], t["layer"], t["status"], f"{t['rows']:,}", t["commits"], wm, t["duration_seconds"]])
    out = [grid(["table", "layer", "status", "rows", "commits", "watermark", "seconds"], rows)]
    for t in data["tables"]:
        if t["error"]:
            out.append(f"\n{t['table']}: {t['error']['message']}\n  fix: {t['error']['fix']}")
        if t["late_rows"]:
            left = t["late_rows_left"]
            out.append(f"\n{t['table']}: {t['late_rows']} late rows behind the watermark, {t['late_rows_added']} "
                       f"repaired" + (f"; {left} not (TTL near, or cold holds rows hot lacks): iceberg-offload "
                                      f"verify --table {t['table']}" if left else ""))
        if t["late_error"] and t["late_error"] != t["error"]:
            out.append(f"\n{t['table']}: late-row sweep: {t['late_error']['message']}")
        if t["view_error"]:
            out.append(f"\n{t['table']}: view {t['view'] or ''} not re-pointed (serves the old watermark): "
                       f"{t['view_error']['message']}\n  fix: {t['view_error']['fix']}")
    out.append(f"\ncycle {data['run_id']}: {data['status']}, {data['rows']:,} rows in {data['duration_seconds']}s")
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    from iceberg_offload.ops.status import status

    result = [s.as_dict() for s in status(load_settings(args), args.table)]
    emit(args, {"tables": result}, lambda: _status_text(result))
    return EXIT_FAILED if any(s["error"] for s in result) else EXIT_OK


def _status_text(tables: list[dict[str, Any]]) -> str:
    rows = []
    for s in tables:
        wm = (s["watermark"] or {}).get("ts")
        head = s["ttl_headroom_seconds"]
        rows.append([s["table"], wm, _dur(s["lag_seconds"]), f"{s['cold_rows']:,}", s["last_commit_at"],
                     None if s["hot_rows"] is None else f"{s['hot_rows']:,}", s["oldest_hot"],
                     s["pending_rows"], s["ttl"], _dur(head)])
    out = [grid(["table", "watermark", "lag", "cold rows", "last commit", "hot rows", "oldest hot", "pending",
                  "ttl", "ttl headroom"], rows)]
    for s in tables:
        if s["error"]:
            out.append(f"\n{s['table']}: {s['error']['message']}\n  fix: {s['error']['fix']}")
    return "\n".join(out)


def _dur(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    sign, s = ("-" if seconds < 0 else ""), abs(seconds)
    if s < 120:
        return f"{sign}{s:.0f}s"
    if s < 7200:
        return f"{sign}{s / 60:.0f}m"
    if s < 172800:
        return f"{sign}{s / 3600:.1f}h"
    return f"{sign}{s / 86400:.1f}d"


def cmd_watermark_show(args: argparse.Namespace) -> int:
    from iceberg_offload.ops.status import watermark_history

    hist = watermark_history(load_settings(args), args.table)

    def text() -> str:
        parts = []
        for table, commits in hist.items():
            rows = [[c["snapshot_id"], (c["watermark"] or {}).get("ts"), (c["watermark"] or {}).get("seq"),
                     c["rows"], c["run_id"]] for c in commits]
            parts.append(f"{table}\n" + (grid(["snapshot", "watermark", "seq", "rows", "run"], rows)
                                         if rows else "  no watermark yet: nothing offloaded"))
        return "\n\n".join(parts)

    emit(args, {"tables": hist}, text)
    return EXIT_OK


def cmd_watermark_set(args: argparse.Namespace) -> int:
    from iceberg_offload.ops.status import parse_time, set_watermark

    data = set_watermark(load_settings(args), args.table, parse_time(args.to), args.seq, args.yes, args.reoffload,
                         args.future)

    def text() -> str:
        cur = (data["current"] or {}).get("ts", "none")
        head = f"{data['table']}: watermark {cur} -> {data['new']['ts']} ({data['direction']}): {data['effect']}"
        if data["applied"]:
            return head + "\ncommitted; `iceberg-offload watermark show` lists it"
        if data["rows_offloaded_again"]:
            return head + "\nnot applied: add --yes --reoffload only if those rows were removed from Iceberg"
        return head + "\nnot applied: add --yes to commit it"

    emit(args, data, text)
    return EXIT_OK


def cmd_adopt(args: argparse.Namespace) -> int:
    from iceberg_offload.ops.status import adopt

    data = adopt(load_settings(args), args.table, args.yes)

    def text() -> str:
        def show(i: dict[str, Any] | None) -> str:
            return "-" if i is None else f"{i['database']}.{i['table']} at {i['server']} (uuid {i['uuid'] or '-'})"

        out = [f"{data['table']}: recorded source {show(data['recorded'])}"
               + (f", watermark read from {data['watermark_source']}" if data["watermark_source"] else ""),
               f"configured source {show(data['configured'])}",
               f"cold rows {data['cold_rows']:,}, watermark {(data['watermark'] or {}).get('ts', 'none')}",
               data["effect"]]
        if data["changes"]:
            out.append("adopted; run it: iceberg-offload run --table " + data["table"] if data["applied"] else
                       "not applied: add --yes only if this is a deliberate move (else point target at a new table)")
        return "\n".join(out)

    emit(args, data, text)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from iceberg_offload.engine.compare import verify

    results = verify(load_settings(args), args.table, args.values)
    ok = all(r.ok for r in results)
    data = {"ok": ok, "tables": [r.as_dict() for r in results]}

    def text() -> str:
        rows = [[r.table, "ok" if r.ok else "BAD", f"{r.hot_rows:,}", f"{r.cold_rows:,}", r.missing, r.duplicates,
                 r.changed if r.values else "-", r.buckets_checked,
                 ", ".join(r.buckets_bad[:3]) + (" ..." if len(r.buckets_bad) > 3 else "")] for r in results]
        out = [grid(["table", "result", "hot rows", "cold rows", "missing", "duplicates", "changed", "buckets",
                     "bad buckets"], rows)]
        out += [f"\n{r.table}: {r.error['message']}\n  fix: {r.error['fix']}" for r in results if r.error]
        if not ok:
            out.append("\nrows missing from cold are late arrivals behind the watermark or a lost commit; changed "
                       "rows changed in ClickHouse after offload. Repair: iceberg-offload maintain reconcile --yes "
                       "(see docs/runbooks/watermark-recovery.md)")
        return "\n".join(out)

    emit(args, data, text)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from iceberg_offload.cli.demo import seed
    from iceberg_offload.config import load
    from iceberg_offload.engine.offload import run_cycle
    from iceberg_offload.ops.status import status

    path = Path(args.config or DEFAULT_CONFIG)
    settings = load(args.config) if path.exists() else load(None, env={})
    written, inserted = seed(settings, path)
    settings = load(str(path))
    cycle = run_cycle(settings, progress=ProgressBar(not args.json)).as_dict()
    states = {s.table: s for s in status(settings)}
    tables = [{"table": t["table"], "rows_this_run": t["rows"], "cold_rows": states[t["table"]].cold_rows,
               "watermark": (t["watermark_after"] or {}).get("ts"),
               "pending_rows": states[t["table"]].pending_rows, "status": t["status"]} for t in cycle["tables"]]
    data = {"config_written": written, "config": str(path.resolve()), "inserted": inserted, "cycle": cycle,
            "tables": tables}

    def text() -> str:
        head = (f"wrote {path} (the embedded default with ten demo tables)\n" if written else "")
        head += f"inserted {sum(inserted.values()):,} new hot rows into chdb at {settings.source.dsn}\n\n"
        rows = [[t["table"], t["status"], f"{t['rows_this_run']:,}", f"{t['cold_rows']:,}", t["watermark"],
                 t["pending_rows"]] for t in tables]
        body = grid(["table", "status", "offloaded now", "in iceberg", "watermark", "waiting (settle/open)"], rows)
        tail = (f"\n\ncycle {cycle['status']}: {cycle['rows']:,} rows in {cycle['duration_seconds']}s. "
                f"Run `iceberg-offload demo` again to add and offload a new slice; "
                f"`iceberg-offload verify` compares hot and cold.")
        return head + body + tail

    emit(args, data, text)
    return EXIT_OK if cycle["status"] == "success" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
