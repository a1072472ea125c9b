"""The read model: what each table's offload looks like, from Iceberg history and ClickHouse bounds.

Shared by the CLI (`status`, `demo`), the metrics exporter and `doctor`; watermark.py moves watermarks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from iceberg_offload import names
from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.clickhouse.sql import quote
from iceberg_offload.clickhouse.window import NS, Watermark, upper_bound
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.errors import OffloadError
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.history import Commit
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.times import utc, utc_ms, utc_or_none, utc_s

if TYPE_CHECKING:
    from pyiceberg.table import Table


def _now_ns(now_ns: int | None) -> int:
    return now_ns if now_ns is not None else time.time_ns()


@dataclass
class TableStatus:
    table: str
    layer: str
    source: str
    watermark: dict[str, Any] | None = None
    lag_seconds: float | None = None
    cold_rows: int = 0
    commits: int = 0
    rows_total: int = 0
    commits_total: int = 0
    last_commit_at: str | None = None
    last_commit_seconds: float | None = None
    hot_rows: int | None = None
    oldest_hot: str | None = None
    oldest_hot_ns: int | None = None
    newest_hot: str | None = None
    newest_hot_ns: int | None = None
    pending_rows: int | None = None
    ttl: str | None = None
    column_ttl: dict[str, str] | None = None
    """Column TTLs, column to expression: past one, ClickHouse resets the column to its default (the headroom
    and the TTL check count them as deadlines)."""
    ttl_headroom_seconds: float | None = None
    ttl_deadline: float | None = None
    """Epoch seconds when the TTL deletes the oldest row not yet in Iceberg (None: nothing pending)."""
    ttl_span_seconds: float | None = None
    """How long the TTL keeps a row (the headroom of a row that arrives now)."""
    data_files: int = 0
    repairs: int = 0
    """Reconcile repairs (late rows, duplicates) in the retained Iceberg history, and the rows they added."""
    repaired_rows: int = 0
    compactions: int = 0
    late_rows: int | None = None
    """Rows behind the watermark found missing from Iceberg and not yet added (None: not known here)."""
    late_oldest_ns: int | None = None
    """Start of the oldest hour holding such rows: the TTL headroom counts it."""
    error: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """payloads.TableState: the deadline as a time, the late rows' hour beside its nanoseconds."""
        out = asdict(self)
        out["ttl_deadline"] = None if self.ttl_deadline is None else utc_s(self.ttl_deadline)
        out["late_oldest"] = utc_or_none(self.late_oldest_ns)
        return out


def cold_status(cfg: TableSettings, sink: Sink, st: TableStatus, table: Table | None = None) -> Watermark | None:
    """The Iceberg half: watermark, rows, commits and their running totals, from snapshot summaries (of
    `table`, the target as the caller just loaded it, else loaded here)."""
    table = table if table is not None else sink.load(cfg.target)
    if table is None:
        return None
    history = sink.history(table)
    wm, last = sink.watermark(table)
    offloads = [c for c in history if names.RUN_ID in c.props]
    st.commits = len(offloads)
    if offloads:
        st.last_commit_at = utc_ms(offloads[0].timestamp_ms)
        st.last_commit_seconds = int(offloads[0].props.get(names.DURATION_MS, 0)) / 1000
    if last is not None:
        st.rows_total, st.commits_total = last.totals
    snap = table.current_snapshot()
    if snap is not None and snap.summary is not None:
        st.cold_rows = int(snap.summary.additional_properties.get("total-records", 0))
        st.data_files = int(snap.summary.additional_properties.get("total-data-files", 0))
    ops: dict[str, dict[str, Commit]] = {"repair": {}, "compact": {}}
    for c in history:  # a repair is two snapshots (delete, append) with one commit id
        op = c.props.get(names.OPERATION, "")
        if op in ops:
            ops[op][c.props.get(names.COMMIT_ID) or str(c.snapshot_id)] = c
    st.repairs, st.compactions = len(ops["repair"]), len(ops["compact"])
    st.repaired_rows = sum(int(c.props.get(names.REPAIR_ROWS_ADDED, 0)) for c in ops["repair"].values())
    if wm is not None:
        st.watermark = wm.as_dict()
    return wm


def hot_status(
    settings: Settings, cfg: TableSettings, source: Source, st: TableStatus, wm: Watermark | None, now: int
) -> TablePlan:
    """The ClickHouse half: hot rows and bounds, rows waiting, the TTL and its deadline."""
    plan = TablePlan.build(source, cfg)
    key, tsql = plan.key, plan.info.qualified
    count, oldest, newest = _bounds(source, tsql + (" FINAL" if cfg.final else ""), key)
    st.hot_rows = count
    if count:
        st.oldest_hot, st.oldest_hot_ns, st.newest_hot, st.newest_hot_ns = utc(oldest), oldest, utc(newest), newest
    upper = upper_bound(now, settings.offload.settle_seconds, cfg.closed_after_seconds)
    st.ttl = plan.info.ttl
    st.column_ttl = dict(plan.info.column_ttls) or None
    deadline = plan.info.row_deadline  # the table TTL per row, and every column TTL
    fsql = tsql + (" FINAL" if cfg.final else "")
    st.pending_rows, st.ttl_deadline = _waiting(source, fsql, key, wm, upper, deadline)
    if deadline:
        spans = plan.ttl_spans(source)  # from the expressions: known also when the TTL left no row
        span = min((x.span for x in spans if x.span is not None), default=None)
        rows_span = _newest_span(source, tsql, key, deadline)
        st.ttl_span_seconds = min((x for x in (rows_span, span) if x is not None), default=None)
        plan.check_ttl(settings, spans)
    return plan


def table_status(
    settings: Settings, cfg: TableSettings, source: Source | None, sink: Sink, now_ns: int | None = None
) -> TableStatus:
    """Both halves; without a source (the engine is busy), only the Iceberg half."""
    now = _now_ns(now_ns)
    st = TableStatus(cfg.target, cfg.layer, cfg.source)
    try:
        table = sink.load(cfg.target)
        wm = cold_status(cfg, sink, st, table)
        if source is not None:
            plan = hot_status(settings, cfg, source, st, wm, now)
            plan.check_source(table)  # a mixed target is this table's error
    except OffloadError as exc:
        st.error = exc.as_dict()
    derive(st, now / NS)
    return st


def derive(st: TableStatus, now: float) -> None:
    """The values that move with the clock: lag and TTL headroom."""
    if st.watermark is not None:
        st.lag_seconds = round(now - st.watermark["ts_ns"] / NS, 3)
    if st.ttl_deadline is not None:
        st.ttl_headroom_seconds = round(st.ttl_deadline - now, 3)
    elif st.ttl_span_seconds is not None:
        st.ttl_headroom_seconds = st.ttl_span_seconds
    if st.late_rows and st.late_oldest_ns is not None and st.ttl_span_seconds is not None:
        late = round(st.late_oldest_ns / NS + st.ttl_span_seconds - now, 3)  # the late row goes first
        st.ttl_headroom_seconds = late if st.ttl_headroom_seconds is None else min(late, st.ttl_headroom_seconds)


def _bounds(source: Source, tsql: str, key: Any) -> tuple[int, int, int]:
    """Rows, oldest and newest timestamp (ns). Read in milliseconds: a row stamped after 2262 (DateTime64
    reaches 2299) has no Int64 nanoseconds."""
    ts = quote(key.ts)
    ms = [key.ts_ms_of(f"{f}({ts})") for f in ("min", "max")]
    count, oldest, newest = source.rows(f"SELECT count(), {ms[0]}, {ms[1]} FROM {tsql}")[0]
    return int(count), int(oldest or 0) * 1_000_000, int(newest or 0) * 1_000_000


def _waiting(
    source: Source, tsql: str, key: Any, wm: Watermark | None, upper_ns: int, ttl: str | None
) -> tuple[int, float | None]:
    """(rows in the next window, when the TTL deletes the first row not yet offloaded), in one query. The
    deadline is the table's per-row one, the earliest over every row waiting, not the oldest row's (a `WHERE`
    rule may spare it, or the TTL may be on another column); of a `final` table, over the rows FINAL keeps."""
    ttl_s = f"toInt64(toUnixTimestamp(toDateTime({ttl})))" if ttl else "0"
    pending, n, first = source.rows(
        f"SELECT countIf({key.not_after(upper_ns)}), count(), min({ttl_s}) FROM {tsql} WHERE {key.after(wm)}"
    )[0]
    return int(pending), (float(first) if n and ttl else None)


def _newest_span(source: Source, tsql: str, key: Any, ttl: str) -> float | None:
    """How long the TTL keeps the newest row."""
    ttl_s = f"toInt64(toUnixTimestamp(toDateTime({ttl})))"
    span = source.rows(
        f"SELECT {ttl_s} - toInt64(intDiv({key.ts_ms_of(quote(key.ts))}, 1000)) FROM {tsql} "
        f"ORDER BY {key.order_by(desc=True)} LIMIT 1"
    )
    return float(span[0][0]) if span else None


def status(settings: Settings, names: list[str] | None = None, now_ns: int | None = None) -> list[TableStatus]:
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    with open_source(settings.source) as source:
        return [table_status(settings, cfg, source, sink, now_ns) for cfg in settings.select(names)]
