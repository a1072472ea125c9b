"""Reconciliation: hot vs cold per hour bucket — what is missing from cold, there twice, or changed.

`compare` walks the range both tiers hold (the hot tier's oldest hour up to the watermark) a page at a
time (hours holding about 2 M hot rows), so memory follows a page, not the table. Both tiers' keys of a
page are read and compared exactly as multisets — per key, how many rows each tier holds — with one
group-by and one join in Arrow (no checksum that equal-looking buckets could fool); with `values`, every
column of every row. `verify` reports; `repair.reconcile` replaces bad buckets on the same comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyiceberg.table import Table

from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.clickhouse.window import NS, Watermark
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.buckets import HOUR, Bucket, by_hour, compare_page, diff_values
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.engine.tiers import (
    TTL_MARGIN_SECONDS,
    cold_keys,
    expiring_hours,
    hot_hours,
    hot_range,
    key_plans,
    pages,
    value_columns,
)
from iceberg_offload.engine.wire import small_type
from iceberg_offload.errors import as_error
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.times import utc

Progress = Callable[[str, int, int], None]
"""progress(label, done, total): long work reports how far it is (the CLI's progress bar); cheap to call."""
PAGE_ROWS = 2_000_000
"""Hot rows per comparison page (cold keys of a page are held in memory; an eighth with values)."""


@dataclass
class VerifyResult:
    table: str
    hot_rows: int = 0
    cold_rows: int = 0
    missing: int = 0
    duplicates: int = 0
    extra: int = 0
    changed: int = 0
    values: bool = False
    buckets_checked: int = 0
    buckets_bad: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.buckets_bad

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "ok": self.ok,
            "hot_rows": self.hot_rows,
            "cold_rows": self.cold_rows,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "extra": self.extra,
            "changed": self.changed,
            "values": self.values,
            "buckets_checked": self.buckets_checked,
            "buckets_bad": self.buckets_bad,
            "error": self.error,
        }


def verify_table(
    cfg: TableSettings, source: Source, sink: Sink, values: bool | None = None, progress: Progress | None = None
) -> VerifyResult:
    """Hot vs cold per hour bucket over the range both tiers hold (up to the watermark); with `values`
    (default: the table's `final`), every column of every row, not only the keys."""
    res = VerifyResult(cfg.target, values=cfg.final if values is None else values)
    try:
        plan = TablePlan.build(source, cfg)  # first: a table verify cannot read is a failure, not "ok 0 0"
        table = sink.load(cfg.target)
        wm, last = sink.watermark(table) if table is not None else (None, None)
        if table is None or wm is None:
            return res
        plan.check_source(table)
        plan.check_lineage(last)
        for b in compare(plan, source, table, wm, values=res.values, progress=progress):
            res.buckets_checked += 1
            res.hot_rows += b.hot
            res.cold_rows += b.cold
            res.missing += b.missing
            res.duplicates += b.duplicates
            res.extra += b.extra
            res.changed += b.changed
            if b.bad:
                res.buckets_bad.append(utc(b.start * NS))
    except Exception as exc:  # noqa: BLE001 - one table's failure never ends the others' verify
        res.error = as_error(exc, cfg.target).as_dict()
        source.discard()
    return res


def compare(
    plan: TablePlan,
    source: Source,
    table: Table,
    wm: Watermark,
    page_rows: int = PAGE_ROWS,
    values: bool = False,
    since_ns: int | None = None,
    progress: Progress | None = None,
) -> Iterator[Bucket]:
    """Every hour bucket either tier holds, from the hot tier's oldest hour (or the hour of `since_ns`, if
    later) up to the watermark, oldest first. With `values`, each bucket's rows are compared whole (the
    columns both tiers have had all along). `progress` hears the hot rows compared, a page at a time, out
    of the per-hour counts the pages are cut on (no query of its own)."""
    oldest, counts = hot_hours(plan, source, wm, since_ns)
    if oldest is None:
        return
    lo_hour = oldest if since_ns is None else max(oldest, since_ns // NS // HOUR * HOUR)
    keys = [p.name for p in key_plans(plan)]
    ts = plan.cfg.timestamp_column
    chosen = value_columns(plan, table) if values else key_plans(plan)
    cols = [p for p in plan.columns if p.name == ts or p in chosen]  # the timestamp always: it makes the hour
    names = [p.name for p in cols]
    ice = table.schema().as_arrow()
    target = pa.schema([ice.field(n).with_type(small_type(ice.field(n).type)) for n in names])
    last_hour = wm.ts_ns // NS // HOUR * HOUR
    total = sum(n for h, n in counts.items() if lo_hour <= h <= last_hour)
    done = 0
    for lo, hi in pages(counts, lo_hour, last_hour, page_rows // 8 if values else page_rows):
        cold_tbl = cold_keys(table, ts, names, lo * NS, min((hi + HOUR) * NS - 1, wm.ts_ns)).select(names)
        cold_tbl = cold_tbl.cast(target)
        hot_tbl = hot_range(plan, source, wm, lo, hi + HOUR, cols, target)
        buckets = list(compare_page(hot_tbl, cold_tbl, keys, ts))
        done += hot_tbl.num_rows
        if progress:
            progress(plan.cfg.target, done, max(total, done))
        # rows cold holds and hot lacks are expected where the TTL may have begun deleting (same rule as repair)
        aging = expiring_hours(plan, source, [b.start for b in buckets if b.extra], TTL_MARGIN_SECONDS)
        hot_by, cold_by = (by_hour(hot_tbl, ts), by_hour(cold_tbl, ts)) if values else ({}, {})
        for b in buckets:
            b.aging = b.start in aging
            if values:
                empty = hot_tbl.slice(0, 0)
                diff_values(b, hot_by.get(b.start, empty), cold_by.get(b.start, empty))
            yield b


def labelled(progress: Progress | None, label: str) -> Progress | None:
    """`progress` under another label ("trades reconcile"); None stays None."""
    if progress is None:
        return None
    report = progress
    return lambda _name, done, total: report(label, done, total)


def verify(
    settings: Settings, names: list[str] | None = None, values: bool | None = None, progress: Progress | None = None
) -> list[VerifyResult]:
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    with open_source(settings.source) as source:
        return [verify_table(cfg, source, sink, values, progress) for cfg in settings.select(names)]
