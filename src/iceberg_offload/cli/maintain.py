"""Maintenance commands: `maintain reconcile|compact|expire|orphans|all` (a preview unless --yes) and `view`
(one ClickHouse view over the hot and cold tiers)."""

from __future__ import annotations

from typing import Any

from iceberg_offload.cli.output import EXIT_FAILED, EXIT_OK, Args, Grid, Part, emit, load_settings
from iceberg_offload.cli.progress import ProgressBar
from iceberg_offload.payloads_maint import Maintain, Views

PREVIEW_NOTE = "preview: nothing changed; add --yes to apply"
NOT_PRINTED = ("view", "watermark", "metadata_location", "snapshot_id")
"""payloads_maint.View's keys that `view --print` leaves null (it only prints the SQL)."""


def cmd_maintain(args: Args) -> int:
    from iceberg_offload.maintenance.daily import STEPS, maintain

    steps = STEPS if args.step == "all" else (args.step,)
    settings = load_settings(args)
    with ProgressBar(not args.json) as progress:
        results = maintain(settings, args.table, steps, apply=args.yes, values=args.values, progress=progress)
    ok = all(r["ok"] for r in results)
    data = {
        "ok": ok,
        "applied": args.yes,
        "tables": [r | {"steps": dict.fromkeys(STEPS) | r["steps"]} for r in results],
    }
    emit(args, data, lambda: _text(results, args.yes), Maintain)
    return EXIT_OK if ok else EXIT_FAILED


def _text(results: list[dict[str, Any]], applied: bool) -> list[Part]:
    rows = []
    for r in results:
        if r.get("error"):
            rows.append([r["table"], "-", "error", r["error"]["message"]])
        for step, res in r["steps"].items():
            rows.append([r["table"], step, "error" if res.get("error") else res.get("status", "ok"), _say(step, res)])
    lines: list[Part] = [Grid(["table", "step", "status", "what"], rows)]
    lines += [
        f"{r['table']} {s}: {res['error']['message']}\n  fix: {res['error']['fix']}"
        for r in results
        for s, res in r["steps"].items()
        if res.get("error")
    ]
    if not applied:
        lines.append(PREVIEW_NOTE)
    return lines


def _say(step: str, r: dict[str, Any]) -> str:
    if r.get("error"):
        return r["error"]["message"][:100]
    if step == "reconcile":
        changed = f", changed rows in {r['buckets_changed']}" if r.get("values") else ""
        return (
            f"{r['buckets_compared']} hours compared; missing rows in {r['buckets_missing']}, duplicates in "
            f"{r['buckets_duplicates']}{changed}; repaired {r['buckets_repaired']} (+{r['rows_added']} rows, "
            f"-{r['duplicate_rows_removed']} duplicates); skipped (TTL) {r['buckets_skipped_ttl']}"
        )
    if step == "compact":
        return (
            f"{r['files_rewritten']} small files -> {r['files_written']} "
            f"({r['data_files_before']} -> {r['data_files_after']} data files)"
        )
    if step == "expire":
        return f"{len(r['expired'])} snapshots expired ({r['snapshots_before']} -> {r['snapshots_after']})"
    return (
        f"{len(r['orphans'])} orphan files ({r['bytes']} bytes) older than the safety age; "
        f"{r['too_young']} younger kept"
    )


def cmd_view(args: Args) -> int:
    from iceberg_offload.clickhouse.client import open_source
    from iceberg_offload.iceberg.catalog import open_catalog
    from iceberg_offload.iceberg.sink import Sink
    from iceberg_offload.maintenance.view import create_view, view_sql

    settings = load_settings(args)
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    out: list[dict[str, Any]] = []
    with open_source(settings.source) as source:
        for cfg in settings.select(args.table):
            if args.print_only:
                sql = view_sql(settings, cfg, sink, source)
                out.append({"table": cfg.target, **dict.fromkeys(NOT_PRINTED), "sql": sql})
            else:
                out.append({"table": cfg.target, **create_view(settings, cfg, sink, source)})
    emit(
        args,
        {"ok": True, "tables": out},
        lambda: "\n\n".join(
            v["sql"] + ";"
            if args.print_only
            else f"{v['view']}: hot above, cold at or below watermark "
            f"{_wm_ts(v)}\n  recreate after offloads: iceberg-offload view"
            for v in out
        ),
        Views,
    )
    return EXIT_OK


def _wm_ts(view: dict[str, Any]) -> str:
    wm = view.get("watermark")
    return str(wm.get("ts", "none")) if isinstance(wm, dict) else "none (no offload yet)"
