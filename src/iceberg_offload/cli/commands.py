"""The engine's commands: run, status, verify, demo (watermark show|set and adopt: cli/watermark.py). Each
loads the config, calls one function and prints its text (parts: lines and tables, cli/output.py) or JSON; it
returns the exit code.
cli/main.py dispatches to them by name (tests replace one there: `cli.main.cmd_status = ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iceberg_offload.cli.output import EXIT_FAILED, EXIT_OK, Args, Grid, Part, emit, load_settings
from iceberg_offload.cli.progress import ProgressBar
from iceberg_offload.names import DEFAULT_CONFIG
from iceberg_offload.payloads import Demo, Run, Status, Verify


def cmd_run(args: Args) -> int:
    from iceberg_offload.engine.offload import run_cycle

    settings = load_settings(args)
    with ProgressBar(not args.json) as progress:
        result = run_cycle(settings, args.table, progress=progress if progress.enabled else None)
    moved = [t.table for t in result.tables if t.status == "ok" and (t.rows or t.late_rows_added)]
    if moved:  # a view that cannot follow stays where it was (exact until the TTL passes it): reported
        from iceberg_offload.maintenance.view import refresh_views

        result.note_views(refresh_views(settings, moved))
    data = result.as_dict()
    emit(args, data, lambda: _run_text(data), Run)
    return EXIT_OK if result.status == "success" else EXIT_FAILED


def _run_text(data: dict[str, Any]) -> list[Part]:
    rows = []
    for t in data["tables"]:
        wm = (t["watermark_after"] or {}).get("ts")
        rows.append([t["table"], t["layer"], t["status"], f"{t['rows']:,}", t["commits"], wm, t["duration_seconds"]])
    out: list[Part] = [Grid(["table", "layer", "status", "rows", "commits", "watermark", "seconds"], rows)]
    for t in data["tables"]:
        if t["error"]:
            out.append(f"\n{t['table']}: {t['error']['message']}\n  fix: {t['error']['fix']}")
        if t["late_rows"]:
            left = t["late_rows_left"]
            out.append(
                f"\n{t['table']}: {t['late_rows']} late rows behind the watermark, {t['late_rows_added']} "
                f"repaired"
                + (
                    f"; {left} not (TTL near, or cold holds rows hot lacks): iceberg-offload "
                    f"verify --table {t['table']}"
                    if left
                    else ""
                )
            )
        if t["late_error"] and t["late_error"] != t["error"]:
            out.append(f"\n{t['table']}: late-row sweep: {t['late_error']['message']}")
        if t["view_error"]:
            out.append(
                f"\n{t['table']}: view {t['view'] or ''} not re-pointed (serves the old watermark): "
                f"{t['view_error']['message']}\n  fix: {t['view_error']['fix']}"
            )
    out.append(f"\ncycle {data['run_id']}: {data['status']}, {data['rows']:,} rows in {data['duration_seconds']}s")
    return out


def cmd_status(args: Args) -> int:
    from iceberg_offload.ops.status import status

    result = [s.as_dict() for s in status(load_settings(args), args.table)]
    ok = not any(s["error"] for s in result)
    emit(args, {"ok": ok, "tables": result}, lambda: _status_text(result), Status)
    return EXIT_OK if ok else EXIT_FAILED


def _status_text(tables: list[dict[str, Any]]) -> list[Part]:
    rows = []
    for s in tables:
        wm = (s["watermark"] or {}).get("ts")
        head = s["ttl_headroom_seconds"]
        rows.append(
            [
                s["table"],
                wm,
                _dur(s["lag_seconds"]),
                f"{s['cold_rows']:,}",
                s["last_commit_at"],
                None if s["hot_rows"] is None else f"{s['hot_rows']:,}",
                s["oldest_hot"],
                s["pending_rows"],
                s["ttl"],
                _dur(head),
            ]
        )
    out: list[Part] = [
        Grid(
            [
                "table",
                "watermark",
                "lag",
                "cold rows",
                "last commit",
                "hot rows",
                "oldest hot",
                "pending",
                "ttl",
                "ttl headroom",
            ],
            rows,
        )
    ]
    for s in tables:
        if s["error"]:
            out.append(f"\n{s['table']}: {s['error']['message']}\n  fix: {s['error']['fix']}")
    return out


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


def cmd_verify(args: Args) -> int:
    from iceberg_offload.engine.compare import verify

    settings = load_settings(args)
    with ProgressBar(not args.json) as progress:
        results = verify(settings, args.table, args.values, progress)
    ok = all(r.ok for r in results)
    data = {"ok": ok, "tables": [r.as_dict() for r in results]}

    def text() -> list[Part]:
        rows = [
            [
                r.table,
                "ok" if r.ok else "BAD",
                f"{r.hot_rows:,}",
                f"{r.cold_rows:,}",
                r.missing,
                r.duplicates,
                r.changed if r.values else "-",
                r.buckets_checked,
                ", ".join(r.buckets_bad[:3]) + (" ..." if len(r.buckets_bad) > 3 else ""),
            ]
            for r in results
        ]
        out: list[Part] = [
            Grid(
                [
                    "table",
                    "result",
                    "hot rows",
                    "cold rows",
                    "missing",
                    "duplicates",
                    "changed",
                    "buckets",
                    "bad buckets",
                ],
                rows,
            )
        ]
        out += [f"\n{r.table}: {r.error['message']}\n  fix: {r.error['fix']}" for r in results if r.error]
        if not ok:
            out.append(
                "\nrows missing from cold are late arrivals behind the watermark or a lost commit; changed "
                "rows changed in ClickHouse after offload. Repair: iceberg-offload maintain reconcile --yes "
                "(see docs/runbooks/watermark-recovery.md)"
            )
        return out

    emit(args, data, text, Verify)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_demo(args: Args) -> int:
    from iceberg_offload.cli.demo import seed, write_config
    from iceberg_offload.config import load
    from iceberg_offload.engine.offload import run_cycle
    from iceberg_offload.ops.status import status

    path = Path(args.config or DEFAULT_CONFIG)
    written = write_config(path)  # first: its relative paths are the file's folder's, wherever we run
    settings = load(str(path))
    inserted = seed(settings)
    with ProgressBar(not args.json) as progress:
        cycle = run_cycle(settings, progress=progress).as_dict()
    states = {s.table: s for s in status(settings)}
    tables = [
        {
            "table": t["table"],
            "rows_this_run": t["rows"],
            "cold_rows": states[t["table"]].cold_rows,
            "watermark": t["watermark_after"],
            "pending_rows": states[t["table"]].pending_rows,
            "status": t["status"],
        }
        for t in cycle["tables"]
    ]
    data = {
        "ok": cycle["status"] == "success",
        "config_written": written,
        "config": str(path.resolve()),
        "inserted": [{"table": name, "rows": n} for name, n in inserted.items()],
        "cycle": cycle,
        "tables": tables,
    }

    def text() -> list[Part]:
        head = f"wrote {path} (the embedded default with ten demo tables)\n" if written else ""
        head += f"inserted {sum(inserted.values()):,} new hot rows into chdb at {settings.source.dsn}\n"
        rows = [
            [
                t["table"],
                t["status"],
                f"{t['rows_this_run']:,}",
                f"{t['cold_rows']:,}",
                (t["watermark"] or {}).get("ts"),
                t["pending_rows"],
            ]
            for t in tables
        ]
        body = Grid(["table", "status", "offloaded now", "in iceberg", "watermark", "waiting (settle/open)"], rows)
        tail = (
            f"\ncycle {cycle['status']}: {cycle['rows']:,} rows in {cycle['duration_seconds']}s. "
            f"Run `iceberg-offload demo` again to add and offload a new slice; "
            f"`iceberg-offload verify` compares hot and cold."
        )
        return [head, body, tail]

    emit(args, data, text, Demo)
    return EXIT_OK if data["ok"] else EXIT_FAILED
