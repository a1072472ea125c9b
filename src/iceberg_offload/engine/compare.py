"""Reconciliation: hot vs cold per hour bucket — what is missing from cold, there twice, or changed.

`compare` walks the range both tiers hold (the hot tier's oldest hour up to the watermark) a page at a
time (hours holding about 2 M hot rows), so memory follows a page, not the table. Both tiers' keys of a
page are read and compared exactly as multisets — per key, how many rows each tier holds — with one
group-by and one join in Arrow (no checksum that equal-looking buckets could fool); with `values`, every
column of every row. `verify` reports; `repair.reconcile` replaces bad buckets on the same comparison.
"""

from __future__ import annotations

import contextlib
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThanOrEqual
from pyiceberg.table import Table

from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.clickhouse.sql import quote
from iceberg_offload.clickhouse.window import NS, Watermark, iso
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.engine.typemap import ColumnMap
from iceberg_offload.engine.wire import conform, small_type
from iceberg_offload.errors import SourceError, as_error
from iceberg_offload.iceberg.catalog import open_catalog, warehouse_reads
from iceberg_offload.iceberg.sink import Sink

Progress = Callable[[str, int, int], None]
"""progress(label, done, total): long work reports how far it is (the CLI's progress bar); cheap to call."""
HOUR = 3600
TTL_MARGIN_SECONDS = 900
"""A bucket whose first row expires within this long is treated as expiring already."""
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


@dataclass
class Bucket:
    """One hour of one table in both tiers, compared as multisets: per key, how many rows each tier holds
    (keys need not be unique: a late row at a timestamp cold already holds is a missing row)."""

    start: int  # epoch seconds of the hour
    hot: int = 0
    cold: int = 0
    missing: int = 0  # rows hot has (up to the watermark) beyond cold's copies of their key
    duplicates: int = 0  # rows cold has beyond hot's copies of a key hot has
    extra: int = 0  # rows of keys cold has and hot lacks (expired, deleted from hot, or not this table's)
    changed: int = 0  # rows whose key both tiers hold as often but whose values differ (values mode)
    aging: bool = False  # the hot tier's oldest hour on a table with a TTL: it may have begun deleting it

    @property
    def bad(self) -> bool:
        return self.missing > 0 or self.duplicates > 0 or self.changed > 0 or (self.extra > 0 and not self.aging)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": iso(self.start * NS),
            "hot": self.hot,
            "cold": self.cold,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "changed": self.changed,
            "extra": self.extra,
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
                res.buckets_bad.append(iso(b.start * NS))
    except Exception as exc:  # noqa: BLE001 - one table's failure never ends the others' verify
        res.error = as_error(exc, cfg.target).as_dict()
        source.discard()
    return res


def oldest_hour(plan: TablePlan, source: Source) -> int | None:
    """Epoch seconds of the hour holding the hot tier's oldest row (None: the hot tier is empty)."""
    fin = " FINAL" if plan.cfg.final else ""
    n, oldest = source.rows(
        f"SELECT count(), {plan.key.ts_ns_of(f'min({quote(plan.cfg.timestamp_column)})')} "
        f"FROM {plan.info.qualified}{fin}"
    )[0]
    return None if not n else int(oldest) // NS // HOUR * HOUR  # floor: before 1970 too


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
    oldest = oldest_hour(plan, source)
    if oldest is None:
        return
    lo_hour = oldest if since_ns is None else max(oldest, since_ns // NS // HOUR * HOUR)
    counts = hot_hours(plan, source, wm, lo_hour)
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
        buckets = list(_compare_page(hot_tbl, cold_tbl, keys, ts))
        done += hot_tbl.num_rows
        if progress:
            progress(plan.cfg.target, done, max(total, done))
        # rows cold holds and hot lacks are expected where the TTL may have begun deleting (same rule as repair)
        aging = expiring_hours(plan, source, [b.start for b in buckets if b.extra], TTL_MARGIN_SECONDS)
        hot_by, cold_by = (_by_hour(hot_tbl, ts), _by_hour(cold_tbl, ts)) if values else ({}, {})
        for b in buckets:
            b.aging = b.start in aging
            if values:
                empty = hot_tbl.slice(0, 0)
                _diff_values(b, hot_by.get(b.start, empty), cold_by.get(b.start, empty))
            yield b


def labelled(progress: Progress | None, label: str) -> Progress | None:
    """`progress` under another label ("trades reconcile"); None stays None."""
    if progress is None:
        return None
    report = progress
    return lambda _name, done, total: report(label, done, total)


def expiring_hours(plan: TablePlan, source: Source, starts: list[int], margin: int) -> set[int]:
    """Buckets the hot tier may no longer hold completely, on a table with a TTL: those whose first instant
    is past (or within `margin` of) its TTL, ClickHouse evaluating the TTL expression on it. When the
    expression needs other columns, every bucket at or before the hot tier's oldest hour. Without a TTL
    nothing expires by itself; rows deleted by hand are caught by the subset rule (cold keys hot lacks).
    A column TTL counts too: past it the hot tier holds the column's default, not the value cold holds."""
    ttl = plan.info.deadline
    if not ttl or not starts:
        return set()
    ts = quote(plan.cfg.timestamp_column)
    b = plan.key.aliases.name("b")
    as_ts = plan.key.ts_literal_of(f"toInt64({b}) * {NS}")
    try:  # the TTL of a row stamped at the bucket's first instant, the first row of it to expire
        rows = source.rows(
            f"SELECT {b}, toUnixTimestamp(toDateTime({ttl})) <= toUnixTimestamp(now()) + "
            f"{int(margin)} FROM (SELECT arrayJoin([{', '.join(map(str, starts))}]) AS {b}, "
            f"{as_ts} AS {ts})"
        )
    except SourceError:
        oldest = oldest_hour(plan, source)
        return {s for s in starts if oldest is None or s <= oldest}
    return {int(start) for start, gone in rows if gone}


def pages(counts: dict[int, int], lo_hour: int, last_hour: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive hour ranges covering lo_hour..last_hour, each holding about `budget` hot rows (an hour
    more if one hour alone holds more): memory follows the budget, and a sparse range is a few reads,
    not one per hour."""
    out: list[tuple[int, int]] = []
    start, rows = lo_hour, 0
    for hour in sorted(h for h in counts if lo_hour <= h <= last_hour):
        if rows and rows + counts[hour] > budget:
            out.append((start, hour - HOUR))
            start, rows = hour, 0
        rows += counts[hour]
    out.append((start, last_hour))
    return out


def hot_hours(plan: TablePlan, source: Source, wm: Watermark, lo_hour: int) -> dict[int, int]:
    """{hour: rows} of the hot tier from lo_hour up to the watermark (pages are cut on these)."""
    key, cfg = plan.key, plan.cfg
    where = f"{quote(cfg.timestamp_column)} >= {key.ts_literal(lo_hour * NS)} AND {key.at_most(wm)}"
    b, ns = key.aliases.name("b"), key.ts_ns_expr()
    floor = f"intDiv({ns} - positiveModulo({ns}, {NS * HOUR}), {NS})"  # floored: hours before 1970 too
    rows = source.rows(
        f"SELECT {floor} AS {b}, count() FROM {plan.info.qualified}{' FINAL' if cfg.final else ''} "
        f"WHERE {where} GROUP BY {b}"
    )
    return {int(h): int(n) for h, n in rows}


def hot_range(
    plan: TablePlan, source: Source, wm: Watermark, lo: int, hi: int, columns: list[ColumnMap], target: pa.Schema
) -> pa.Table:
    """The hot tier's rows with lo <= ts < hi (epoch seconds) up to the watermark, `columns` only, as Iceberg
    holds them (read and conformed like an offload)."""
    key, ts, fin = plan.key, quote(plan.cfg.timestamp_column), " FINAL" if plan.cfg.final else ""
    where = f"{ts} >= {key.ts_literal(lo * NS)} AND {ts} < {key.ts_literal(hi * NS)} AND {key.at_most(wm)}"
    select, names = key.aliases.select([p.select for p in columns])
    tbl = source.arrow(f"SELECT {select} FROM {plan.info.qualified}{fin} WHERE {where}", names)
    return conform(tbl, columns, target, plan.cfg.source)


def hot_rows(
    plan: TablePlan, source: Source, wm: Watermark, start: int, columns: list[ColumnMap], target: pa.Schema
) -> pa.Table:
    """The hot tier's rows of one hour bucket (up to the watermark)."""
    return hot_range(plan, source, wm, start, start + HOUR, columns, target)


def key_plans(plan: TablePlan) -> list[ColumnMap]:
    return [p for p in plan.columns if p.name in plan.cfg.key_columns]


def value_columns(plan: TablePlan, table: Table) -> list[ColumnMap]:
    """The columns a values comparison can hold against cold: in Iceberg, and there from the start (a column
    Iceberg holds as optional though ClickHouse's is not Nullable was added after rows were offloaded: its
    older rows are NULL in cold by design; such columns are compared by key only)."""
    fields = {f.name: f for f in table.schema().fields}
    keys = set(plan.cfg.key_columns)
    return [
        p for p in plan.columns if p.name in fields and (p.name in keys or fields[p.name].required or not p.required)
    ]


def ts_range(table: Table, ts: str, lo_ns: int, hi_ns: int) -> BooleanExpression:
    """lo <= ts <= hi as an Iceberg expression (timestamps as ISO text, epoch-ns longs as numbers)."""
    field_type = table.schema().find_field(ts).field_type
    lo: int | str = lo_ns
    hi: int | str = hi_ns
    if str(field_type) != "long":
        lo, hi = iso(lo_ns).replace("Z", "+00:00"), iso(hi_ns // 1000 * 1000).replace("Z", "+00:00")
    return And(GreaterThanOrEqual(term=ts, literal=lo), LessThanOrEqual(term=ts, literal=hi))  # type: ignore[call-arg,arg-type]


def cold_keys(table: Table, ts: str, names: list[str], lo_ns: int, hi_ns: int) -> pa.Table:
    scan = table.scan(row_filter=ts_range(table, ts, lo_ns, hi_ns), selected_fields=tuple(dict.fromkeys([ts, *names])))
    with warehouse_reads(f"reading {'.'.join(table.name())}", str(table.io.properties.get("warehouse", ""))):
        return scan.to_arrow()


def _hour_of(col: pa.ChunkedArray) -> pa.Array:
    """Epoch seconds of the hour each timestamp falls in (timestamps, or epoch-ns longs), floored."""
    if pa.types.is_timestamp(col.type):
        micros = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        return pc.divide(pc.subtract(micros, pc.modulo(micros, 1_000_000 * HOUR)), 1_000_000).combine_chunks()
    return pc.divide(pc.subtract(col, pc.modulo(col, NS * HOUR)), NS).combine_chunks()


def _compare_page(hot: pa.Table, cold: pa.Table, keys: list[str], ts: str) -> Iterator[Bucket]:
    """The page's buckets: per hour and key, the rows each tier holds, joined; oldest hour first. When both
    tiers' keys, sorted, are the same sequence (the usual case), their multisets are equal: no join."""
    if _same_rows(hot.select(dict.fromkeys([ts, *keys])), cold.select(dict.fromkeys([ts, *keys]))):
        counts = pc.value_counts(_hour_of(hot.column(ts)))
        pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
        for start, n in sorted(pairs):
            yield Bucket(int(start), int(n), int(n))
        return
    tiers = [
        pa.table([_hour_of(t.column(ts)), *(t.column(k) for k in keys)], names=["__h", *keys]) for t in (hot, cold)
    ]
    try:
        # a join never matches NULL with NULL: group and join on the value with NULLs filled, and a flag
        by = ["__h", *keys, *(f"__null_{k}" for k in keys)]
        counts = [
            pa.table(
                [t.column("__h"), *(c for k in keys for c in _null_free(t.column(k)))],
                names=["__h", *(n for k in keys for n in (k, f"__null_{k}"))],
            )
            .group_by(by)
            .aggregate([([], "count_all")])
            for t in tiers
        ]
        joined = counts[0].join(counts[1], keys=by, join_type="full outer", right_suffix="_cold")
        h = pc.fill_null(joined.column("count_all"), 0)
        c = pc.fill_null(joined.column("count_all_cold"), 0)
        hours = joined.column("__h")
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):  # key types Arrow cannot group
        hours, h, c = _counted_in_python(tiers, keys)
    zero = pa.scalar(0, pa.int64())
    per_key = pa.table(
        {
            "__h": hours,
            "h": h,
            "c": c,
            "missing": pc.max_element_wise(pc.subtract(h, c), zero),
            "dups": pc.if_else(pc.greater(h, 0), pc.max_element_wise(pc.subtract(c, h), zero), zero),
            "extra": pc.if_else(pc.equal(h, 0), c, zero),
        }
    )
    per_hour = per_key.group_by("__h").aggregate([(n, "sum") for n in ("h", "c", "missing", "dups", "extra")])
    cols = [per_hour.column(n).to_pylist() for n in ("__h", "h_sum", "c_sum", "missing_sum", "dups_sum", "extra_sum")]
    for start, nh, nc, miss, dups, extra in sorted(zip(*cols, strict=True)):
        yield Bucket(int(start), int(nh), int(nc), int(miss), int(dups), int(extra))


def _by_hour(tbl: pa.Table, ts: str) -> dict[int, pa.Table]:
    """The table split by hour of `ts` (one sort, then slices), for per-bucket work without a filter each."""
    if tbl.num_rows == 0:
        return {}
    hours = _hour_of(tbl.column(ts))
    order = pc.sort_indices(hours)
    tbl, hours = tbl.take(order), hours.take(order)
    values = np.asarray(hours)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    return {int(values[a]): tbl.slice(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)}


def _null_free(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """(the column with NULLs filled by a fixed value of its type, whether each was NULL), extension types
    (uuid) by their storage: what Arrow's group-by and join can match exactly."""
    if isinstance(col.type, pa.ExtensionType):
        col = pa.chunked_array([c.storage for c in col.chunks], type=col.type.storage_type)
    flag = pc.is_null(col)
    if col.null_count == 0:
        return col, flag
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        fill = pa.scalar("", t)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        fill = pa.scalar(b"", t)
    elif pa.types.is_fixed_size_binary(t):
        fill = pa.scalar(b"\0" * t.byte_width, t)
    elif pa.types.is_boolean(t):
        fill = pa.scalar(False)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_temporal(t):
        fill = pa.scalar(0, pa.int64()).cast(t) if not pa.types.is_floating(t) else pa.scalar(0.0, t)
    else:
        raise pa.ArrowNotImplementedError(f"no fill value for {t}")
    return pc.fill_null(col, fill), flag


def _counted_in_python(tiers: list[pa.Table], keys: list[str]) -> tuple[pa.Array, pa.Array, pa.Array]:
    hot, cold = (Counter(_tuples(t, ["__h", *keys])) for t in tiers)
    every = list(hot.keys() | cold.keys())
    return (
        pa.array([k[0] for k in every], pa.int64()),
        pa.array([hot[k] for k in every], pa.int64()),
        pa.array([cold[k] for k in every], pa.int64()),
    )


def _diff_values(b: Bucket, hot: pa.Table, cold: pa.Table) -> None:
    """b.changed: rows whose key both tiers hold equally often, but not with the same values."""
    if _same_rows(hot, cold):
        return
    hot_r, cold_r = Counter(_tuples(hot, hot.column_names)), Counter(_tuples(cold, cold.column_names))
    b.changed = max(0, sum((hot_r - cold_r).values()) - b.missing)


def _same_rows(hot: pa.Table, cold: pa.Table) -> bool:
    """Quick check: equal after sorting by every sortable column (a False is confirmed row by row)."""
    if hot.num_rows != cold.num_rows:
        return False
    order = [
        (f.name, "ascending")
        for f in hot.schema
        if not (pa.types.is_nested(f.type) or pa.types.is_dictionary(f.type) or isinstance(f.type, pa.ExtensionType))
    ]
    with contextlib.suppress(pa.ArrowNotImplementedError, pa.ArrowTypeError):  # unsortable: row by row
        return bool(hot.sort_by(order).equals(cold.sort_by(order)))
    return False


def _tuples(tbl: pa.Table, names: list[str]) -> Iterator[tuple[Any, ...]]:
    cols = [[_hashable(v) for v in tbl.column(n).to_pylist()] for n in names]
    return zip(*cols, strict=True)


def _hashable(v: Any) -> Any:
    """A value as an exact, hashable key: floats by their bits (NaN equals NaN), lists and structs as tuples."""
    if isinstance(v, float):
        return ("f", struct.pack("<d", v))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _hashable(x)) for k, x in v.items())
    if isinstance(v, tuple):
        return tuple(_hashable(x) for x in v)
    return v


def verify(
    settings: Settings, names: list[str] | None = None, values: bool | None = None, progress: Progress | None = None
) -> list[VerifyResult]:
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    with open_source(settings.source) as source:
        return [verify_table(cfg, source, sink, values, progress) for cfg in settings.select(names)]
