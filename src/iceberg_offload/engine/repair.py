"""Reconcile and repair: replace bad hour buckets of the cold tier with the hot tier's rows.

A bucket is bad when cold lacks keys hot has (late arrivals behind the watermark, a lost commit) or holds
extra copies of a key. Repair deletes the bucket's rows from Iceberg and appends the hot tier's rows for
that hour (up to the watermark) in ONE catalog commit per table, compare-and-swap on the snapshot the
comparison read (an offload committing meanwhile makes the repair fail transient and write nothing).
The commit carries the current watermark forward unchanged, so offloads continue where they were.

Never shrink cold: a bucket the hot tier's TTL has begun to delete (or the hot tier's oldest hour, which
may be partly expired) is skipped, and so is any bucket where cold holds a key hot does not.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import BooleanExpression, Or
from pyiceberg.manifest import ManifestEntryStatus
from pyiceberg.table import Table

from iceberg_offload import __version__, names
from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.clickhouse.window import NS, Watermark
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.buckets import HOUR, Bucket
from iceberg_offload.engine.compare import PAGE_ROWS, Progress, compare, labelled
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.engine.tiers import TTL_MARGIN_SECONDS, expiring_hours, hot_rows, ts_range
from iceberg_offload.errors import (
    CommitConflict,
    CommitOutcomeUnknown,
    HotTierChanged,
    SchemaDrift,
    as_error,
    redact,
)
from iceberg_offload.iceberg.cas import CasTransaction, discard_files
from iceberg_offload.iceberg.catalog import catalog_errors, open_catalog
from iceberg_offload.iceberg.datafiles import DataFileWriter
from iceberg_offload.iceberg.history import Commit
from iceberg_offload.iceberg.sink import COMMIT_ID, Sink
from iceberg_offload.times import utc, utc_or_none


@dataclass
class ReconcileResult:
    table: str
    applied: bool = False
    watermark: dict[str, Any] | None = None
    buckets_compared: int = 0
    buckets_missing: int = 0
    buckets_duplicates: int = 0
    buckets_repaired: int = 0
    buckets_skipped_ttl: int = 0
    buckets_skipped_cold_ahead: int = 0
    buckets_changed: int = 0
    values: bool = False
    rows_missing: int = 0
    rows_changed: int = 0
    rows_added: int = 0
    duplicate_rows_removed: int = 0
    rows_left_missing: int = 0
    """Missing rows still missing after this reconcile (skipped, failed, or a preview)."""
    oldest_left_ns: int | None = None
    """Start of the oldest hour still missing rows: the TTL deletes them from there first."""
    left_buckets: list[list[int]] = field(default_factory=list)
    """[hour start ns, rows] of each hour still missing rows."""
    rows_deleted: int = 0
    rows_written: int = 0
    snapshot_id: int | None = None
    buckets: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        """payloads_maint.Reconcile (less `seconds`): times also as RFC 3339 (also the reconcile artifact's
        row; artifacts.late_rows reads `left_buckets` in this form and in the older [ns, rows] pairs)."""
        out = asdict(self)
        out["oldest_left"] = utc_or_none(self.oldest_left_ns)
        out["left_buckets"] = [{"hour": utc(t), "hour_ns": t, "rows": n} for t, n in self.left_buckets]
        return out


def reconcile(
    settings: Settings,
    cfg: TableSettings,
    source: Source,
    sink: Sink,
    apply: bool,
    page_rows: int = PAGE_ROWS,
    ttl_margin_seconds: int = TTL_MARGIN_SECONDS,
    values: bool | None = None,
    since_ns: int | None = None,
    progress: Progress | None = None,
    plan: TablePlan | None = None,
    table: Table | None = None,
) -> ReconcileResult:
    """Compare one table's tiers per hour bucket and (with apply) replace the bad buckets it may replace.
    With `values` (default: the table's `final`, whose rows may change after their window was offloaded)
    every column of every row is compared, not only the keys. Without apply nothing changes; the result
    says what would be done. Errors are returned, not raised. `progress` hears the rows compared
    ("<table> reconcile") and the rows written by the repair ("<table> repair"). `plan` and `table`: the
    table's plan and Iceberg table as the caller (the cycle's sweep) has them just now."""
    res = ReconcileResult(cfg.target, values=cfg.final if values is None else values)
    try:
        _reconcile(cfg, source, sink, apply, page_rows, ttl_margin_seconds, res, since_ns, progress, plan, table)
    except Exception as exc:  # noqa: BLE001 - one table's failure never ends the others' reconcile
        res.error = as_error(exc, cfg.target).as_dict()
        source.discard()
    left = [b for b in res.buckets if b["missing"] and not (res.applied and b["action"] == "repair")]
    res.rows_left_missing = sum(b["missing"] for b in left)
    res.oldest_left_ns = min((b["bucket_ns"] for b in left), default=None)
    res.left_buckets = [[b["bucket_ns"], b["missing"]] for b in left]
    return res


def reconcile_all(
    settings: Settings, names: list[str] | None = None, apply: bool = False, values: bool | None = None
) -> list[ReconcileResult]:
    sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    with open_source(settings.source) as source:
        return [reconcile(settings, cfg, source, sink, apply, values=values) for cfg in settings.select(names)]


def _reconcile(
    cfg: TableSettings,
    source: Source,
    sink: Sink,
    apply: bool,
    page_rows: int,
    margin: int,
    res: ReconcileResult,
    since_ns: int | None = None,
    progress: Progress | None = None,
    plan: TablePlan | None = None,
    table: Table | None = None,
) -> None:
    table = table if table is not None else sink.load(cfg.target)
    wm, last = sink.watermark(table) if table is not None else (None, None)
    if table is None or wm is None or last is None:
        return
    res.watermark = wm.as_dict()
    plan = plan if plan is not None else TablePlan.build(source, cfg)
    plan.check_source(table)
    plan.check_lineage(last)
    buckets = list(
        compare(
            plan,
            source,
            table,
            wm,
            page_rows,
            values=res.values,
            since_ns=since_ns,
            progress=labelled(progress, f"{cfg.target} reconcile"),
        )
    )
    res.buckets_compared = len(buckets)
    bad = [b for b in buckets if b.bad]
    if not bad:
        return
    expiring = expiring_hours(plan, source, [b.start for b in bad], margin)
    chosen: list[Bucket] = []
    for b in bad:
        res.buckets_missing += b.missing > 0
        res.buckets_duplicates += b.duplicates > 0
        res.buckets_changed += b.changed > 0
        res.rows_missing += b.missing
        res.rows_changed += b.changed
        if b.start in expiring:
            action = "skipped_ttl"
            res.buckets_skipped_ttl += 1
        elif b.extra:
            action = "skipped_cold_ahead"  # cold holds keys hot no longer has: replacing would lose them
            res.buckets_skipped_cold_ahead += 1
        else:
            action = "repair"
            chosen.append(b)
        res.buckets.append({**b.as_dict(), "action": action})
    res.buckets_repaired = len(chosen)
    res.rows_deleted = sum(b.cold for b in chosen)
    res.rows_written = sum(b.hot for b in chosen)
    res.rows_added = sum(b.missing for b in chosen)
    res.duplicate_rows_removed = res.rows_deleted + res.rows_added - res.rows_written
    if not apply or not chosen:
        return
    _check_schema(plan, table)
    new_table, written = _replace(
        sink, source, table, plan, wm, last, chosen, labelled(progress, f"{cfg.target} repair")
    )
    res.rows_written = written
    res.duplicate_rows_removed = res.rows_deleted + res.rows_added - written
    res.applied = True
    snap = new_table.current_snapshot()
    res.snapshot_id = snap.snapshot_id if snap is not None else None


def _check_schema(plan: TablePlan, table: Table) -> None:
    have = {f.name for f in table.schema().fields}
    want = {p.name for p in plan.columns}
    if have != want:
        raise SchemaDrift(
            f"{plan.cfg.target}: Iceberg columns {sorted(have)} differ from the offloaded ClickHouse "
            f"columns {sorted(want)}; nothing was repaired",
            f"run `iceberg-offload run --table {plan.cfg.target}` first (it evolves the schema or names the drift)",
        )


def _props(plan: TablePlan, last: Commit, chosen: list[Bucket]) -> dict[str, str]:
    """The repair commit's summary: the current watermark carried forward, totals, what was replaced."""
    carried = {k: v for k, v in last.props.items() if k.startswith(names.WATERMARK_PREFIX)}
    rows_total, commits_total = last.totals
    return {
        **carried,
        COMMIT_ID: f"repair/{uuid.uuid4().hex[:12]}",
        names.OPERATION: "repair",
        names.SOURCE: plan.info.qualified,
        names.VERSION: __version__,
        names.ROWS_TOTAL: str(rows_total + sum(b.missing for b in chosen)),
        names.COMMITS_TOTAL: str(commits_total),
        names.REPAIR_BUCKETS: str(len(chosen)),
        names.REPAIR_FIRST_BUCKET_NS: str(chosen[0].start * NS),
        names.REPAIR_LAST_BUCKET_NS: str(chosen[-1].start * NS),
        names.REPAIR_ROWS_DELETED: str(sum(b.cold for b in chosen)),
        names.REPAIR_ROWS_ADDED: str(sum(b.missing for b in chosen)),
    }


def _ranges(table: Table, ts: str, chosen: list[Bucket]) -> BooleanExpression:
    """The chosen hours as few timestamp ranges (adjacent hours merged), OR-ed."""
    spans: list[list[int]] = []
    for b in chosen:
        if spans and spans[-1][1] == b.start:
            spans[-1][1] = b.start + HOUR
        else:
            spans.append([b.start, b.start + HOUR])
    exprs = [ts_range(table, ts, lo * NS, hi * NS - 1) for lo, hi in spans]
    out = exprs[0]
    for e in exprs[1:]:
        out = Or(out, e)
    return out


def _replace(
    sink: Sink,
    source: Source,
    table: Table,
    plan: TablePlan,
    wm: Watermark,
    last: Commit,
    chosen: list[Bucket],
    progress: Progress | None = None,
) -> tuple[Table, int]:
    """Delete the chosen buckets from Iceberg and append the hot tier's rows for them: one commit,
    compare-and-swap on `table`'s snapshot. Returns the new table state and the rows written."""
    props = _props(plan, last, chosen)
    name = ".".join(table.name())
    txn = CasTransaction(table)
    target = table.schema().as_arrow()
    written, added = 0, []
    try:
        with catalog_errors(f"repairing {name}"):
            with warnings.catch_warnings():  # a bucket cold lacks entirely matches no rows: expected
                warnings.simplefilter("ignore")
                txn.delete(_ranges(table, plan.cfg.timestamp_column, chosen), snapshot_properties=props)
            added += _staged_files(txn, table)  # files the delete rewrote without the bucket's rows
            with (
                txn.update_snapshot(snapshot_properties=props).fast_append() as append,
                DataFileWriter(txn.table_metadata, table.io, append.commit_uuid, added) as files,
            ):
                for b in chosen:
                    rows = hot_rows(plan, source, wm, b.start, plan.columns, target)
                    if rows.num_rows < b.hot:
                        raise HotTierChanged(
                            f"{name}: the hot tier's hour {b.as_dict()['bucket']} shrank from "
                            f"{b.hot} to {rows.num_rows} rows while repairing (TTL or a delete); "
                            f"nothing was written",
                            "none needed: the next reconcile compares again",
                        )
                    written += rows.num_rows
                    files.submit(rows)
                    if progress:
                        progress(name, written, max(written, sum(c.hot for c in chosen)))
                files.finish(append)
    except BaseException:
        discard_files(table, added)
        raise
    try:
        new_table = txn.commit_transaction()
    except CommitFailedException as exc:
        discard_files(table, added)
        raise CommitConflict(
            f"{name}: another writer committed while the repair was prepared ({exc}); the repair "
            f"was discarded, nothing changed",
            f"none needed: run the reconcile again (`iceberg-offload verify --table "
            f"{plan.cfg.target}` shows what is left)",
        ) from exc
    except Exception as exc:
        if sink.find_commit(plan.cfg.target, props[COMMIT_ID]) is not None:
            return sink.load(plan.cfg.target) or table, written
        raise CommitOutcomeUnknown(
            f"{name}: repair commit {props[COMMIT_ID]} outcome unknown: {redact(str(exc)).splitlines()[0][:300]}",
            "none needed: the next reconcile compares again",
        ) from exc
    return new_table, written


def _staged_files(txn: CasTransaction, table: Table) -> list[str]:
    """Data files the transaction's new snapshots add (ours and the delete's rewrites), to remove them
    should the commit be refused."""
    base = {s.snapshot_id for s in table.metadata.snapshots}
    out = []
    for snap in txn.table_metadata.snapshots:
        if snap.snapshot_id in base:
            continue
        for manifest in snap.manifests(table.io):
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snap.snapshot_id:
                    out.append(entry.data_file.file_path)
    return out
