"""Reconciliation: hot vs cold per hour bucket — what is missing from cold, there twice, or changed.

`compare` walks the range both tiers hold (the hot tier's oldest hour up to the watermark) one page of
cold keys at a time (hours holding about 2 M hot rows), so memory follows a page, not the table. Tiers
are compared as multisets (per key, how many rows each holds), with `values` row by row. `verify`
reports; `repair.reconcile` replaces bad buckets from the hot tier on top of the same comparison.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThanOrEqual
from pyiceberg.table import Table

from .config import Settings, TableSettings
from .errors import as_error
from .offload import TablePlan
from .sink import Sink, open_catalog
from .source import Source, open_source, quote
from .typemap import ColumnMap
from .window import NS, Watermark, iso
from .wire import conform, small_type

HOUR = 3600
PAGE_ROWS = 2_000_000
"""Hot rows per comparison page (cold keys of a page are held in memory; an eighth with values)."""


@dataclass
class VerifyResult:
    table: str
    hot_rows: int = 0
    cold_rows: int = 0
    missing: int = 0
    duplicates: int = 0
    changed: int = 0
    values: bool = False
    buckets_checked: int = 0
    buckets_bad: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.missing == 0 and self.duplicates == 0 and self.changed == 0

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "hot_rows": self.hot_rows, "cold_rows": self.cold_rows,
                "missing": self.missing, "duplicates": self.duplicates, "changed": self.changed,
                "values": self.values, "buckets_checked": self.buckets_checked, "buckets_bad": self.buckets_bad,
                "error": self.error}


@dataclass
class Bucket:
    """One hour of one table in both tiers, compared as multisets: per key, how many rows each tier holds
    (keys need not be unique: a late row at a timestamp cold already holds is a missing row). The counts
    below are only worked out when the bucket's counts or checksums disagree (or values are compared)."""

    start: int  # epoch seconds of the hour
    hot: int = 0
    hot_distinct: int = 0
    cold: int = 0
    cold_distinct: int = 0
    missing: int = 0  # rows hot has (up to the watermark) beyond cold's copies of their key
    duplicates: int = 0  # rows cold has beyond hot's copies of a key hot has
    extra: int = 0  # rows of keys cold has and hot lacks (expired or deleted from hot)
    changed: int = 0  # rows whose key both tiers hold as often but whose values differ (values mode)
    hot_sum: tuple[int, int] = (0, 0)  # order-free checksums of the key (see _SUMS), to catch swapped keys
    cold_sum: tuple[int, int] = (0, 0)

    @property
    def bad(self) -> bool:
        return self.missing > 0 or self.duplicates > 0 or self.changed > 0

    def as_dict(self) -> dict[str, Any]:
        return {"bucket": iso(self.start * NS), "hot": self.hot, "cold": self.cold, "missing": self.missing,
                "duplicates": self.duplicates, "changed": self.changed, "extra": self.extra}


def verify_table(cfg: TableSettings, source: Source, sink: Sink, values: bool | None = None) -> VerifyResult:
    """Hot vs cold per hour bucket over the range both tiers hold (up to the watermark); with `values`
    (default: the table's `final`), every column of every row, not only the keys."""
    res = VerifyResult(cfg.target, values=cfg.final if values is None else values)
    try:
        table = sink.load(cfg.target)
        wm, last = sink.watermark(table) if table is not None else (None, None)
        if table is None or wm is None:
            return res
        plan = TablePlan.build(source, cfg)
        plan.check_lineage(last)
        for b in compare(plan, source, table, wm, values=res.values):
            res.buckets_checked += 1
            res.hot_rows += b.hot
            res.cold_rows += b.cold
            res.missing += b.missing
            res.duplicates += b.duplicates
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
    n, oldest = source.rows(f"SELECT count(), min({plan.key.ts_ns_expr()}) FROM {plan.info.qualified}{fin}")[0]
    return None if not n else int(oldest) // NS // HOUR * HOUR  # floor: before 1970 too


def compare(plan: TablePlan, source: Source, table: Table, wm: Watermark, page_rows: int = PAGE_ROWS,
            values: bool = False) -> Iterator[Bucket]:
    """Every hour bucket either tier holds, from the hot tier's oldest hour up to the watermark, oldest first.
    With `values`, each bucket's rows are compared whole, every column."""
    lo_hour = oldest_hour(plan, source)
    if lo_hour is None:
        return
    seq = _summed_seq(plan, table)
    hot = hot_buckets(plan, source, wm, lo_hour, seq)
    keys = key_plans(plan)
    names = [p.name for p in keys]
    last_hour = wm.ts_ns // NS // HOUR * HOUR
    read = [p.name for p in plan.columns] if values else names
    for lo, hi in pages(hot, lo_hour, last_hour, page_rows // 8 if values else page_rows):
        cold_tbl = cold_keys(table, plan.cfg.timestamp_column, read, lo * NS, min((hi + HOUR) * NS - 1, wm.ts_ns))
        hours = _hour_of(cold_tbl.column(plan.cfg.timestamp_column))
        stats = _cold_stats(cold_tbl, names, hours, plan.cfg.timestamp_column, seq)
        for start in sorted({h for h in hot if lo <= h <= hi} | set(stats)):
            h, hd, hs = hot.get(start, (0, 0, (0, 0)))
            c, cd, cs = stats.get(start, (0, 0, (0, 0)))
            b = Bucket(start, h, hd, c, cd, hot_sum=hs, cold_sum=cs)
            if values or (h, hd, hs) != (c, cd, cs):
                _diff(plan, source, keys if not values else plan.columns, wm, b,
                      cold_tbl.filter(pc.equal(hours, start)), names)
            yield b


def pages(hot: dict[int, Stats], lo_hour: int, last_hour: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive hour ranges covering lo_hour..last_hour, each holding about `budget` hot rows (an hour
    more if one hour alone holds more): memory follows the budget, and a sparse range is a few reads,
    not one per hour."""
    out: list[tuple[int, int]] = []
    start, rows = lo_hour, 0
    for hour in sorted(h for h in hot if lo_hour <= h <= last_hour):
        n = hot[hour][0]
        if rows and rows + n > budget:
            out.append((start, hour - HOUR))
            start, rows = hour, 0
        rows += n
    out.append((start, last_hour))
    return out


# Order-free checksums per bucket, equal in both tiers when they hold the same rows: the sum of each row's
# microsecond within its hour (< 3.6e9, so no overflow below 2.5e9 rows an hour) and the sum of the sequence
# value modulo a prime. Equal counts with different keys (hot lost rows and got as many late ones) differ here.
_PRIME = 1_000_000_007
Stats = tuple[int, int, tuple[int, int]]


def _summed_seq(plan: TablePlan, table: Table) -> str | None:
    seq = plan.cfg.sequence_column
    if seq is None or seq not in plan.cfg.key_columns:
        return None
    return seq if pa.types.is_integer(table.schema().as_arrow().field(seq).type) else None


def hot_buckets(plan: TablePlan, source: Source, wm: Watermark, lo_hour: int,
                seq: str | None = None) -> dict[int, Stats]:
    """{hour: (rows, distinct keys, checksums)} of the hot tier from lo_hour up to the watermark."""
    key, cfg = plan.key, plan.cfg
    where = f"{quote(cfg.timestamp_column)} >= {key.ts_literal(lo_hour * NS)} AND {key.at_most(wm)}"
    uniq = ", ".join(quote(c) for c in cfg.key_columns)
    seq_sum = f"sum(positiveModulo(toInt128({quote(seq)}), {_PRIME}))" if seq else "0"
    b, ns = key.aliases.name("b"), key.ts_ns_expr()
    within = f"positiveModulo({ns}, {NS * HOUR})"  # floored, so hours before 1970 are whole hours too
    rows = source.rows(f"SELECT intDiv({ns} - {within}, {NS}) AS {b}, count(), uniqExact({uniq}), "
                       f"sum(intDiv({within}, 1000)), {seq_sum} "
                       f"FROM {plan.info.qualified}{' FINAL' if cfg.final else ''} WHERE {where} GROUP BY {b}")
    return {int(b): (int(n), int(d), (int(ts), int(sq))) for b, n, d, ts, sq in rows}


def bucket_where(plan: TablePlan, wm: Watermark, start: int) -> str:
    """The hot rows of one hour bucket that are at or below the watermark."""
    key = plan.key
    ts = quote(plan.cfg.timestamp_column)
    return (f"{ts} >= {key.ts_literal(start * NS)} AND {ts} < {key.ts_literal((start + HOUR) * NS)} AND "
            f"{key.at_most(wm)}")


def hot_rows(plan: TablePlan, source: Source, wm: Watermark, start: int, columns: list[ColumnMap],
             target: pa.Schema) -> pa.Table:
    """The hot tier's rows of one hour bucket (up to the watermark), `columns` only, as Iceberg holds them."""
    fin = " FINAL" if plan.cfg.final else ""
    select, names = plan.key.aliases.select([p.select for p in columns])
    sql = f"SELECT {select} FROM {plan.info.qualified}{fin} WHERE {bucket_where(plan, wm, start)}"
    return conform(source.arrow(sql, names), columns, target, plan.cfg.source)


def key_plans(plan: TablePlan) -> list[ColumnMap]:
    return [p for p in plan.columns if p.name in plan.cfg.key_columns]


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
    return scan.to_arrow()


def _hour_of(col: pa.ChunkedArray) -> pa.Array:
    """Epoch seconds of the hour each cold timestamp falls in (timestamps, or epoch-ns longs), floored."""
    if pa.types.is_timestamp(col.type):
        micros = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        return pc.divide(pc.subtract(micros, pc.modulo(micros, 1_000_000 * HOUR)), 1_000_000).combine_chunks()
    return pc.divide(pc.subtract(col, pc.modulo(col, NS * HOUR)), NS).combine_chunks()


def _cold_stats(cold_tbl: pa.Table, names: list[str], hours: pa.Array, ts: str, seq: str | None) -> dict[int, Stats]:
    """{hour: (rows, distinct keys, checksums)} of one page of cold keys."""
    if cold_tbl.num_rows == 0:
        return {}
    col = cold_tbl.column(ts)
    if pa.types.is_timestamp(col.type):
        ts_us = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        offset = pc.modulo(ts_us, HOUR * 1_000_000)
    else:  # epoch-ns longs
        offset = pc.divide(pc.modulo(col, HOUR * NS), 1000)
    seqs = pc.modulo(pc.cast(cold_tbl.column(seq), pa.int64()), _PRIME) if seq else pa.repeat(0, cold_tbl.num_rows)
    tagged = cold_tbl.select(names).append_column("__bucket", hours)
    tagged = tagged.append_column("__ts", offset).append_column("__seq", seqs)
    per_key = tagged.group_by(["__bucket", *names]).aggregate([([], "count_all"), ("__ts", "sum"), ("__seq", "sum")])
    per_bucket = per_key.group_by("__bucket").aggregate(
        [("count_all", "sum"), ([], "count_all"), ("__ts_sum", "sum"), ("__seq_sum", "sum")])
    cols = [per_bucket.column(c).to_pylist() for c in ("__bucket", "count_all_sum", "count_all", "__ts_sum_sum",
                                                        "__seq_sum_sum")]
    return {int(b): (int(n), int(d), (int(t), int(q))) for b, n, d, t, q in zip(*cols, strict=True)}


def _diff(plan: TablePlan, source: Source, columns: list[ColumnMap], wm: Watermark, b: Bucket,
          cold_bucket: pa.Table, keys: list[str]) -> None:
    """Fill in b's missing, duplicates, extra (and changed, when `columns` are every column) by comparing the
    bucket's rows as multisets: per key, and per whole row."""
    names = [p.name for p in columns]
    target = pa.schema([cold_bucket.schema.field(n).with_type(small_type(cold_bucket.schema.field(n).type))
                        for n in names])
    hot = hot_rows(plan, source, wm, b.start, columns, target)
    cold = cold_bucket.select(names).cast(target)
    hot_k, cold_k = Counter(_tuples(hot, keys)), Counter(_tuples(cold, keys))
    b.missing = sum((hot_k - cold_k).values())
    b.duplicates = sum(n - hot_k[k] for k, n in cold_k.items() if k in hot_k and n > hot_k[k])
    b.extra = sum(n for k, n in cold_k.items() if k not in hot_k)
    if len(names) > len(keys) and not _same_rows(hot, cold):
        # rows whose key both tiers hold equally often, but not with the same values
        hot_r, cold_r = Counter(_tuples(hot, names)), Counter(_tuples(cold, names))
        b.changed = max(0, sum((hot_r - cold_r).values()) - b.missing)


def _same_rows(hot: pa.Table, cold: pa.Table) -> bool:
    """Quick check: equal after sorting by every sortable column (a False is confirmed row by row)."""
    if hot.num_rows != cold.num_rows:
        return False
    order = [(f.name, "ascending") for f in hot.schema
             if not (pa.types.is_nested(f.type) or pa.types.is_dictionary(f.type)
                     or isinstance(f.type, pa.ExtensionType))]
    try:
        return bool(hot.sort_by(order).equals(cold.sort_by(order)))
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):  # a type Arrow cannot sort: decide row by row
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


def verify(settings: Settings, names: list[str] | None = None, values: bool | None = None) -> list[VerifyResult]:
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    with open_source(settings.source) as source:
        return [verify_table(cfg, source, sink, values) for cfg in settings.select(names)]
