"""What `compare` reads from each tier: the hot tier's hours and rows (a page of hours at a time, read and
conformed like an offload), the cold tier's keys of a range, and which hours a TTL may have begun deleting."""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThanOrEqual
from pyiceberg.table import Table

from iceberg_offload.clickhouse.client import Source
from iceberg_offload.clickhouse.sql import quote
from iceberg_offload.clickhouse.window import NS, Watermark
from iceberg_offload.engine.buckets import HOUR
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.engine.typemap import ColumnMap
from iceberg_offload.engine.wire import conform
from iceberg_offload.errors import SourceError
from iceberg_offload.iceberg.catalog import warehouse_reads
from iceberg_offload.times import utc

TTL_MARGIN_SECONDS = 900
"""A bucket whose first row expires within this long is treated as expiring already."""


def oldest_hour(plan: TablePlan, source: Source) -> int | None:
    """Epoch seconds of the hour holding the hot tier's oldest row (None: the hot tier is empty)."""
    fin = " FINAL" if plan.cfg.final else ""
    n, oldest = source.rows(
        f"SELECT count(), {plan.key.ts_ns_of(f'min({quote(plan.cfg.timestamp_column)})')} "
        f"FROM {plan.info.qualified}{fin}"
    )[0]
    return None if not n else int(oldest) // NS // HOUR * HOUR  # floor: before 1970 too


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


def hot_hours(
    plan: TablePlan, source: Source, wm: Watermark, since_ns: int | None
) -> tuple[int | None, dict[int, int]]:
    """(the hour holding the hot tier's oldest row, None if it is empty; {hour: rows} of the hot tier from the
    later of that hour and the hour of `since_ns` up to the watermark, which pages are cut on), in one query."""
    key, cfg = plan.key, plan.cfg
    ts, tsql = quote(cfg.timestamp_column), plan.info.qualified + (" FINAL" if cfg.final else "")
    since = f"{ts} >= {key.ts_literal(since_ns // NS // HOUR * HOUR * NS)} AND " if since_ns is not None else ""
    b, c, ns = key.aliases.name("b"), key.aliases.name("c"), key.ts_ns_expr()
    floor = f"intDiv({ns} - positiveModulo({ns}, {NS * HOUR}), {NS})"  # floored: hours before 1970 too
    n, oldest, hours = source.rows(
        f"SELECT count(), {key.ts_ns_of(f'min({ts})')}, (SELECT groupArray(({b}, {c})) FROM (SELECT {floor} "
        f"AS {b}, count() AS {c} FROM {tsql} WHERE {since}{key.at_most(wm)} GROUP BY {b})) FROM {tsql}"
    )[0]
    if not n:
        return None, {}
    return int(oldest) // NS // HOUR * HOUR, {int(h): int(k) for h, k in hours}  # floor: before 1970 too


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
        lo, hi = utc(lo_ns).replace("Z", "+00:00"), utc(hi_ns // 1000 * 1000).replace("Z", "+00:00")
    return And(GreaterThanOrEqual(term=ts, literal=lo), LessThanOrEqual(term=ts, literal=hi))  # type: ignore[call-arg,arg-type]


def cold_keys(table: Table, ts: str, names: list[str], lo_ns: int, hi_ns: int) -> pa.Table:
    scan = table.scan(row_filter=ts_range(table, ts, lo_ns, hi_ns), selected_fields=tuple(dict.fromkeys([ts, *names])))
    with warehouse_reads(f"reading {'.'.join(table.name())}", str(table.io.properties.get("warehouse", ""))):
        return scan.to_arrow()
