"""The watermark's commands: `watermark show`, `watermark set` and `adopt` (each a preview unless --yes)."""

from __future__ import annotations

from typing import Any

from iceberg_offload.cli.output import EXIT_OK, Args, Grid, Part, emit, load_settings
from iceberg_offload.payloads import Adopt, WatermarkSet, WatermarkShow


def cmd_watermark_show(args: Args) -> int:
    from iceberg_offload.ops.watermark import watermark_history

    hist = watermark_history(load_settings(args), args.table)

    def text() -> list[Part]:
        parts: list[Part] = []
        for entry in hist:
            table, commits = entry["table"], entry["commits"]
            rows = [
                [
                    c["snapshot_id"],
                    (c["watermark"] or {}).get("ts"),
                    (c["watermark"] or {}).get("seq"),
                    c["rows"],
                    c["run_id"],
                ]
                for c in commits
            ]
            parts += ([""] if parts else []) + [table]
            parts.append(
                Grid(["snapshot", "watermark", "seq", "rows", "run"], rows)
                if rows
                else "  no watermark yet: nothing offloaded"
            )
        return parts

    emit(args, {"ok": True, "tables": hist}, text, WatermarkShow)
    return EXIT_OK


def cmd_watermark_set(args: Args) -> int:
    from iceberg_offload.ops.watermark import parse_time, set_watermark

    data = {"ok": True} | set_watermark(
        load_settings(args), args.table, parse_time(args.to), args.seq, args.yes, args.reoffload, args.future
    )

    def text() -> str:
        cur = (data["current"] or {}).get("ts", "none")
        head = f"{data['table']}: watermark {cur} -> {data['new']['ts']} ({data['direction']}): {data['effect']}"
        if data["applied"]:
            return head + "\ncommitted; `iceberg-offload watermark show` lists it"
        if data["rows_offloaded_again"]:
            return head + "\nnot applied: add --yes --reoffload only if those rows were removed from Iceberg"
        return head + "\nnot applied: add --yes to commit it"

    emit(args, data, text, WatermarkSet)
    return EXIT_OK


def cmd_adopt(args: Args) -> int:
    from iceberg_offload.ops.watermark import adopt

    data = {"ok": True} | adopt(load_settings(args), args.table, args.yes)

    def text() -> str:
        def show(i: dict[str, Any] | None) -> str:
            return "-" if i is None else f"{i['database']}.{i['table']} at {i['server']} (uuid {i['uuid'] or '-'})"

        out = [
            f"{data['table']}: recorded source {show(data['recorded'])}"
            + (f", watermark read from {data['watermark_source']}" if data["watermark_source"] else ""),
            f"configured source {show(data['configured'])}",
            f"cold rows {data['cold_rows']:,}, watermark {(data['watermark'] or {}).get('ts', 'none')}",
            data["effect"],
        ]
        if data["changes"]:
            out.append(
                "adopted; run it: iceberg-offload run --table " + data["table"]
                if data["applied"]
                else "not applied: add --yes only if this is a deliberate move (else point target at a new table)"
            )
        return "\n".join(out)

    emit(args, data, text, Adopt)
    return EXIT_OK
