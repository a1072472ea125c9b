"""One table's daily maintenance, in order: reconcile (repair late rows and duplicates) -> compact -> expire
snapshots -> remove orphan files. No Prefect here: the maintenance flow and `iceberg-offload maintain` call it.

A step that fails is reported and the next one still runs (each is safe alone: every commit is a
compare-and-swap on the head it planned from, so an offload racing it wins and the step retries next time).
"""

from __future__ import annotations

import time
from typing import Any

from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.compare import Progress, labelled
from iceberg_offload.engine.repair import reconcile
from iceberg_offload.errors import as_error
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.maintenance.compact import compact
from iceberg_offload.maintenance.expire import expire
from iceberg_offload.maintenance.orphans import orphans

STEPS = ("reconcile", "compact", "expire", "orphans")
DAY = 86400


def maintain_table(
    settings: Settings,
    cfg: TableSettings,
    steps: tuple[str, ...] = STEPS,
    apply: bool = True,
    values: bool | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the steps on one table; a preview unless `apply`. Returns payloads_maint.TableMaintenance, `steps`
    holding only the steps that ran.
    `values`: reconcile compares every column (default: for `final` tables only). `progress` hears
    reconcile's rows compared and repaired and the rows compaction rewrites."""
    m = settings.maintenance
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    out: dict[str, Any] = {
        "table": cfg.target,
        "applied": apply,
        "ok": True,
        "steps": {},
        "error": None,
    }
    for step in STEPS:
        if step not in steps:
            continue
        started = time.monotonic()
        try:
            if step == "reconcile":
                with open_source(settings.source) as source:
                    rec = reconcile(settings, cfg, source, sink, apply, values=values, progress=progress)
                result = rec.as_dict()
                if not rec.ok:
                    out["ok"] = False
            elif step == "compact":
                result = compact(
                    settings,
                    cfg,
                    sink,
                    apply,
                    target_file_bytes=m.target_file_mb << 20,
                    progress=labelled(progress, f"{cfg.target} compact"),
                ).as_dict()
            elif step == "expire":
                result = expire(
                    settings,
                    cfg,
                    sink,
                    apply,
                    older_than_seconds=m.snapshot_retention_days * DAY,
                    keep_last=m.keep_last_snapshots,
                ).as_dict()
            else:
                result = orphans(settings, cfg, sink, apply, older_than_seconds=m.orphan_age_days * DAY).as_dict()
        except Exception as exc:  # noqa: BLE001 - a failing step never stops the next one
            out["ok"] = False
            error = as_error(exc, f"{cfg.target} {step}").as_dict()
            result = {"table": cfg.target, "applied": apply, "status": "failed", "error": error}
        result.setdefault("error", None)
        result["seconds"] = round(time.monotonic() - started, 2)
        out["steps"][step] = result
    return out


def maintain(
    settings: Settings,
    names: list[str] | None = None,
    steps: tuple[str, ...] = STEPS,
    apply: bool = True,
    values: bool | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Every selected table; one failing table does not stop the others."""
    results = []
    for cfg in settings.select(names):
        try:
            results.append(maintain_table(settings, cfg, steps, apply, values, progress))
        except Exception as exc:  # noqa: BLE001 - the catalog or the table itself is unusable
            results.append(
                {
                    "table": cfg.target,
                    "applied": apply,
                    "ok": False,
                    "steps": {},
                    "error": as_error(exc, cfg.target).as_dict(),
                }
            )
    return results
