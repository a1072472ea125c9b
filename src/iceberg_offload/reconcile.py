"""Reconciliation: hot vs cold per hour bucket — what is missing from cold, what is there twice.

`verify` reports; the maintenance issue adds repair (replace a bucket from the hot tier) on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

from .config import Settings, TableSettings
from .errors import OffloadError
from .offload import TablePlan
from .sink import Sink, open_catalog
from .source import Source, open_source, quote
from .typemap import conform
from .window import NS, Watermark, iso

HOUR = 3600


@dataclass
class VerifyResult:
    table: str
    hot_rows: int = 0
    cold_rows: int = 0
    missing: int = 0
    duplicates: int = 0
    buckets_checked: int = 0
    buckets_bad: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.missing == 0 and self.duplicates == 0

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "hot_rows": self.hot_rows, "cold_rows": self.cold_rows,
                "missing": self.missing, "duplicates": self.duplicates, "buckets_checked": self.buckets_checked,
                "buckets_bad": self.buckets_bad, "error": self.error}


def verify_table(cfg: TableSettings, source: Source, sink: Sink) -> VerifyResult:
    """Hot vs cold per hour bucket over the range both tiers hold (up to the watermark)."""
    res = VerifyResult(cfg.target)
    try:
        table = sink.load(cfg.target)
        wm = sink.watermark(table)[0] if table is not None else None
        if table is None or wm is None:
            return res
        plan = TablePlan.build(source, cfg)
        key, tsql, fin = plan.key, plan.info.qualified, " FINAL" if cfg.final else ""
        oldest = int(source.rows(f"SELECT min({key.ts_ns_expr()}) FROM {tsql}")[0][0] or 0)
        lo_ns = max(oldest, 0)
        lo_hour = lo_ns // NS // HOUR * HOUR
        hot_where = f"{key.not_after(wm.ts_ns)} AND {key.at_most(wm)} AND {quote(cfg.timestamp_column)} >= " \
                    f"{key.ts_literal(lo_hour * NS)}"
        hot = {int(b): int(n) for b, n in source.rows(
            f"SELECT intDiv({key.ts_ns_expr()}, {NS * HOUR}) * {HOUR} AS b, count() FROM {tsql}{fin} "
            f"WHERE {hot_where} GROUP BY b")}
        keys = [p for p in plan.columns if p.name in cfg.key_columns]
        cold_tbl = _cold_keys(table, cfg, lo_hour * NS, wm.ts_ns, [p.name for p in keys])
        cold_b = _hour_of(cold_tbl.column(cfg.timestamp_column))
        cold_counts = dict(zip(*_value_counts(cold_b), strict=True))
        res.hot_rows, res.cold_rows = sum(hot.values()), cold_tbl.num_rows
        names = [p.name for p in keys]
        dup_buckets, res.duplicates = _duplicates(cold_tbl, names, cold_b)
        buckets = sorted(set(hot) | set(cold_counts))
        res.buckets_checked = len(buckets)
        for b in buckets:
            if hot.get(b, 0) == cold_counts.get(b, 0) and b not in dup_buckets:
                continue
            missing = _missing(source, tsql, fin, plan, keys, key, wm, b, cold_tbl, cold_b)
            res.missing += missing
            if missing or b in dup_buckets:
                res.buckets_bad.append(iso(b * NS))
    except OffloadError as exc:
        res.error = exc.as_dict()
    return res


def _cold_keys(table: Any, cfg: TableSettings, lo_ns: int, hi_ns: int, names: list[str]) -> pa.Table:
    ts = cfg.timestamp_column
    field_type = table.schema().find_field(ts).field_type
    lo: int | str = lo_ns
    hi: int | str = hi_ns
    if str(field_type) != "long":
        lo, hi = iso(lo_ns).replace("Z", "+00:00"), iso(hi_ns // 1000 * 1000).replace("Z", "+00:00")
    flt = And(GreaterThanOrEqual(term=ts, literal=lo), LessThanOrEqual(term=ts, literal=hi))  # type: ignore[call-arg,arg-type]
    scan = table.scan(row_filter=flt,
                      selected_fields=tuple(dict.fromkeys([ts, *names])))
    return scan.to_arrow()


def _hour_of(col: pa.ChunkedArray) -> pa.Array:
    """Epoch seconds of the hour each cold timestamp falls in (timestamps, or epoch-ns longs)."""
    if pa.types.is_timestamp(col.type):
        micros = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        return pc.multiply(pc.divide(micros, 1_000_000 * HOUR), HOUR).combine_chunks()
    return pc.multiply(pc.divide(col, NS * HOUR), HOUR).combine_chunks()


def _value_counts(arr: Any) -> tuple[list[int], list[int]]:
    vc = pc.value_counts(arr)
    return [int(v) for v in vc.field("values").to_pylist()], [int(c) for c in vc.field("counts").to_pylist()]


def _missing(source: Source, tsql: str, fin: str, plan: TablePlan, keys: list[Any], key: Any,
             wm: Watermark, bucket: int, cold_tbl: pa.Table, cold_b: Any) -> int:
    """Rows of one hour bucket that the hot tier has (up to the watermark) and the cold tier lacks."""
    lo, hi = bucket * NS, (bucket + HOUR) * NS - 1
    win = f"{quote(plan.cfg.timestamp_column)} >= {key.ts_literal(lo)} AND {key.not_after(hi)} AND {key.at_most(wm)}"
    hot = source.arrow(f"SELECT {', '.join(f'{p.select} AS c{i}' for i, p in enumerate(keys))} FROM {tsql}{fin} "
                       f"WHERE {win}")
    names = [p.name for p in keys]
    target = pa.schema([cold_tbl.schema.field(n) for n in names])
    hot_keys = set(map(tuple, _rows(conform(hot, keys, target, plan.cfg.source), names)))
    cold_keys = set(map(tuple, _rows(cold_tbl.filter(pc.equal(cold_b, bucket)), names)))
    return len(hot_keys - cold_keys)


def _duplicates(cold_tbl: pa.Table, names: list[str], cold_b: Any) -> tuple[set[int], int]:
    """Buckets holding a key more than once, and how many extra copies there are in all."""
    if cold_tbl.num_rows == 0:
        return set(), 0
    tagged = cold_tbl.select(names).append_column("__bucket", cold_b)
    grouped = tagged.group_by(names).aggregate([("__bucket", "min"), ([], "count_all")])
    dups = grouped.filter(pc.greater(grouped.column("count_all"), 1))
    extra = int(pc.sum(pc.subtract(dups.column("count_all"), 1)).as_py() or 0)
    return {int(b) for b in dups.column("__bucket_min").to_pylist()}, extra


def _rows(tbl: pa.Table, names: list[str]) -> list[list[Any]]:
    cols = [tbl.column(n).to_pylist() for n in names]
    return [list(r) for r in zip(*cols, strict=True)]


def verify(settings: Settings, names: list[str] | None = None) -> list[VerifyResult]:
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    with open_source(settings.source) as source:
        return [verify_table(cfg, source, sink) for cfg in settings.select(names)]
