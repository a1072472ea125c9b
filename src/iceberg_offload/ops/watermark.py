"""Moving and reading a table's watermark: `watermark show` (the commits that carry one), `watermark set` (an
empty commit with a new watermark, previewed first: what it does to rows), and `adopt` (take over an Iceberg
table whose rows came from another ClickHouse table, deliberately)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

from iceberg_offload import names
from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.clickhouse.window import NS, Watermark
from iceberg_offload.config import Settings
from iceberg_offload.engine.identity import SourceIdentity
from iceberg_offload.engine.plan import SOURCE, TablePlan
from iceberg_offload.errors import ConfigError
from iceberg_offload.iceberg.catalog import catalog_errors, open_catalog
from iceberg_offload.iceberg.history import Commit
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.times import utc


def watermark_history(settings: Settings, names: list[str] | None = None) -> list[dict[str, Any]]:
    """payloads.WatermarkHistory per table: the commits that carry a watermark, newest first."""
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    out: list[dict[str, Any]] = []
    for cfg in settings.select(names):
        table = sink.load(cfg.target)
        history: list[Commit] = sink.history(table) if table is not None else []
        out.append({"table": cfg.target, "commits": [c.as_dict() for c in history if c.watermark is not None]})
    return out


def _order(wm: Watermark | None) -> tuple[int, int]:
    """A watermark's place; without a sequence value it covers every row at its timestamp (as the window
    reads it: `ts > T`)."""
    assert wm is not None
    return wm.ts_ns, 2**65 if wm.seq is None else wm.seq


def _between(source: Source, plan: TablePlan, lo: Watermark | None, hi: Watermark) -> int:
    where = f"({plan.key.after(lo)}) AND {plan.key.at_most(hi)}"
    return int(source.rows(f"SELECT count() FROM {plan.info.qualified} WHERE {where}")[0][0])


def _data_extent(history: list[Commit]) -> Watermark | None:
    """The watermark of the newest commit that wrote rows (a `watermark set` commit writes none)."""
    for c in history:
        if c.watermark is not None and int(c.props.get(names.ROWS, 0) or 0) > 0:
            return c.watermark
    return None


def parse_time(text: str) -> int:
    """ISO 8601 (naive = UTC) or epoch seconds -> epoch nanoseconds."""
    try:
        return int(float(text) * NS)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a time", "use ISO 8601, e.g. 2026-11-29T16:00:00Z") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp()) * NS + stamp.microsecond * 1000


def set_watermark(
    settings: Settings,
    name: str,
    ts_ns: int,
    seq: int | None,
    apply: bool,
    reoffload: bool = False,
    future: bool = False,
) -> dict[str, Any]:
    """Preview (or, with apply, commit) a new watermark: an empty commit that carries it in its summary.
    Moving forward skips rows (they are never offloaded); moving back offloads again the rows Iceberg
    already has (below the newest commit that wrote rows), which needs `reoffload`. A watermark after
    now - settle_seconds skips rows that have not even arrived yet, which needs `future`."""

    cfg = settings.table(name)
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    table = sink.load(cfg.target)
    if table is None:
        raise ConfigError(f"no Iceberg table {cfg.target} yet", f"run `iceberg-offload run --table {cfg.target}` first")
    current, last = sink.watermark(table)
    if seq is not None and not cfg.sequence_column:
        raise ConfigError(f"{cfg.target} has no sequence_column; --seq would be ignored", "drop --seq")
    new = Watermark(ts_ns, seq)
    newest = time.time_ns() - (settings.offload.settle_seconds + cfg.closed_after_seconds) * NS
    if ts_ns > newest and not future:
        raise ConfigError(
            f"{cfg.target}: {utc(ts_ns)} is in the future (after now - settle_seconds, {utc(newest)}); "
            f"every row until then would be skipped",
            "check --to; add --future only to skip them",
        )
    extent = _data_extent(sink.history(table))  # the newest key Iceberg holds rows up to
    backward = current is not None and _order(new) < _order(current)
    with open_source(settings.source) as source:
        plan = TablePlan.build(source, cfg)
        plan.check_source(table)
        plan.check_lineage(last, key=False)  # another ClickHouse table is `adopt`'s to take on, never this
        lo, hi = (new, current) if backward else (current, new)
        assert hi is not None
        affected = _between(source, plan, lo, hi)
        again = 0
        if backward and current is not None:  # no data commit left in history (expired): assume all were
            if extent is None:
                again = affected
            elif _order(new) < _order(extent):
                again = _between(source, plan, new, extent if _order(extent) < _order(current) else current)
    effect = (
        f"{again} rows Iceberg already has would be offloaded again (duplicates); {affected - again} rows "
        f"never offloaded would be offloaded"
        if backward
        else f"{affected} hot rows between the watermarks would never be offloaded"
    )
    out = {
        "table": cfg.target,
        "current": current.as_dict() if current else None,
        "new": new.as_dict(),
        "direction": "back" if backward else "forward",
        "rows_affected": affected,
        "rows_offloaded_again": again,
        "effect": effect,
        "applied": False,
    }
    if again and not reoffload:
        if apply:
            raise ConfigError(
                f"{cfg.target}: moving the watermark back would offload {again} rows again",
                "add --reoffload if those rows were removed from Iceberg first",
            )
        return out
    if apply:
        _watermark_commit(sink, table, plan, new, last, "watermark set")
        out["applied"] = True
    return out


def adopt(settings: Settings, name: str, apply: bool) -> dict[str, Any]:
    """Preview (or, with apply, record) the configured ClickHouse table as the source of an Iceberg table
    whose rows came from another (a moved server, a restored or recreated table): its identity goes into the
    table properties and, with a watermark, an empty commit carries the watermark in the new source's terms.
    The next run offloads the new source's rows above the watermark; rows at or below it are assumed to be
    in Iceberg already."""

    cfg = settings.table(name)
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    table = sink.load(cfg.target)
    if table is None:
        raise ConfigError(
            f"no Iceberg table {cfg.target} yet: nothing to adopt",
            f"run `iceberg-offload run --table {cfg.target}` (it records the source)",
        )
    wm, last = sink.watermark(table)
    recorded = SourceIdentity.recorded(table)
    with open_source(settings.source) as source:
        plan = TablePlan.build(source, cfg)
        plan.check_lineage(last, source=False)  # the key must read the watermark as it was written
        after = plan.key.after(wm)
        above, hot = source.rows(
            f"SELECT countIf({after}), count() FROM {plan.info.qualified}{' FINAL' if cfg.final else ''}"
        )[0]
    was = last.props.get(SOURCE) if last is not None else None  # the watermark's source table
    same = (recorded is None or recorded.agrees(plan.identity)) and was in (None, plan.info.qualified)
    snap = table.current_snapshot()
    cold_rows = int(snap.summary.additional_properties.get("total-records", 0)) if snap and snap.summary else 0
    mark = wm.describe() if wm else "none (nothing offloaded yet)"
    effect = (
        f"nothing to adopt: the table's rows came from {plan.identity.describe()}"
        if same
        else f"the next run offloads the {above} rows of {plan.identity.describe()} above the watermark {mark}; "
        f"its {hot - above} rows at or below it are assumed to be in Iceberg already ({cold_rows} rows)"
    )
    out = {
        "table": cfg.target,
        "recorded": recorded.as_dict() if recorded else None,
        "watermark_source": was,
        "configured": plan.identity.as_dict(),
        "cold_rows": cold_rows,
        "watermark": wm.as_dict() if wm else None,
        "hot_rows_above": int(above),
        "hot_rows_at_or_below": int(hot - above),
        "changes": not same,
        "effect": effect,
        "applied": False,
    }
    if not apply or same:
        return out
    if last is None or wm is None:
        with catalog_errors(f"recording the source of {cfg.target}", sink.warehouse):
            table.transaction().set_properties(plan.identity.to_props()).commit_transaction()
    else:
        _watermark_commit(sink, table, plan, wm, last, "adopt")
    out["applied"] = True
    return out


def _watermark_commit(sink: Sink, table: Any, plan: TablePlan, wm: Watermark, last: Commit | None, by: str) -> None:
    """An empty commit carrying `wm` in the plan's terms (key, source) and the source identity; totals carried."""
    totals = last.totals if last is not None else (0, 0)
    tag = by.replace(" ", "-")
    props = {
        **wm.to_props(),
        **plan.lineage(),
        names.RUN_ID: f"{tag}-{uuid.uuid4().hex[:8]}",
        names.COMMIT_ID: f"{tag}/{uuid.uuid4().hex[:12]}",
        names.SET_BY: by,
        names.ROWS_TOTAL: str(totals[0]),
        names.COMMITS_TOTAL: str(totals[1]),
    }
    sink.commit(table, iter(()), props, time.monotonic(), table_props=plan.identity.to_props())
