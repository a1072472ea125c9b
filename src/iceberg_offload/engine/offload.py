"""One table, one cycle: read the watermark -> cut the window -> read -> commit, until caught up.

This module knows nothing of Prefect: the flows wrap it, the CLI calls it, the tests call it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from iceberg_offload import __version__, names
from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.clickhouse.window import (
    NS,
    Window,
    count_query,
)
from iceberg_offload.config import LAYERS, Settings, TableSettings
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.engine.stream import Stream
from iceberg_offload.errors import (
    CatalogUnavailable,
    CommitConflict,
    CommitOutcomeUnknown,
    WarehouseMissing,
    as_error,
    reported_as,
)
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import COMMIT_ID, Sink
from iceberg_offload.process import gc_paused
from iceberg_offload.times import utc_or_none

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from iceberg_offload.engine.compare import Progress as Progress

MAX_CONFLICTS = 3


@dataclass
class TableResult:
    table: str
    layer: str
    status: str = "ok"  # ok | failed
    rows: int = 0
    commits: int = 0
    watermark_before: dict[str, Any] | None = None
    watermark_after: dict[str, Any] | None = None
    pending_rows: int = 0
    late_rows: int = 0  # rows found missing behind the watermark by this cycle's late-row sweep
    late_rows_added: int = 0  # of those, repaired in this cycle
    late_rows_left: int = 0  # of those, still missing after it (skipped, or the sweep failed)
    late_oldest_ns: int | None = None  # start of the oldest hour still missing rows
    late_checked: bool = False  # the sweep ran (the figures above are this cycle's)
    late_since_ns: int | None = None  # the first key it compared (None: it compared nothing)
    late_error: dict[str, Any] | None = None  # the sweep's own failure (the offload itself went through)
    view: str | None = None  # the hot + cold view re-pointed after this cycle (one exists)
    view_error: dict[str, Any] | None = None  # it could not be: it stays at the old watermark (the cycle: partial)
    duration_seconds: float = 0.0
    error: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """payloads.TableRun (also each row of the cycle's artifact, artifacts.cycle_row)."""
        out = asdict(self)
        out["late_oldest"], out["late_since"] = utc_or_none(self.late_oldest_ns), utc_or_none(self.late_since_ns)
        return out


@dataclass
class CycleResult:
    run_id: str
    tables: list[TableResult] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def status(self) -> str:
        return cycle_status(t.as_dict() for t in self.tables)

    def note_views(self, outcomes: list[dict[str, Any]]) -> None:
        """Record `view.refresh_views` outcomes on their tables."""
        by_table = {t.table: t for t in self.tables}
        for o in outcomes:
            if (t := by_table.get(o["table"])) is not None:
                t.view, t.view_error = o["view"], o["error"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.status == "success",
            "run_id": self.run_id,
            "status": self.status,
            "duration_seconds": round(self.duration_seconds, 3),
            "rows": sum(t.rows for t in self.tables),
            "tables": [t.as_dict() for t in self.tables],
        }


def cycle_status(tables: Iterable[dict[str, Any]]) -> str:
    """success; failed when every table failed; partial otherwise (some table failed, or a view was left
    behind although its table went through)."""
    outcomes = [(t["status"] != "ok", bool(t.get("view_error"))) for t in tables]
    failed = sum(f for f, _ in outcomes)
    if outcomes and failed == len(outcomes):
        return "failed"
    return "partial" if failed or any(v for _, v in outcomes) else "success"


def offload_table(
    settings: Settings,
    cfg: TableSettings,
    source: Source,
    sink: Sink,
    run_id: str,
    now_ns: int | None = None,
    progress: Progress | None = None,
) -> TableResult:
    """Offload one table until its window is empty. Errors are returned in the result, never raised."""
    started = time.monotonic()
    result = TableResult(cfg.target, cfg.layer)
    try:
        _offload(settings, cfg, source, sink, run_id, now_ns or time.time_ns(), progress, result)
    except Exception as exc:  # noqa: BLE001 - one table's failure, whatever it is, never ends the cycle
        result.status = "failed"
        result.error = as_error(exc, cfg.target).as_dict()
        source.discard()  # nothing this table left on the connection reaches the next table
    result.duration_seconds = round(time.monotonic() - started, 3)
    return result


def _offload(
    settings: Settings,
    cfg: TableSettings,
    source: Source,
    sink: Sink,
    run_id: str,
    now_ns: int,
    progress: Progress | None,
    result: TableResult,
) -> None:
    plan = TablePlan.build(source, cfg)
    plan.check_ttl(settings, plan.ttl_spans(source))
    existing = sink.load(cfg.target)
    if existing is not None:  # before the schema evolves: a refused config changes nothing
        plan.check_source(existing)
        plan.check_lineage(sink.watermark(existing)[1])
    table = plan.ensure(sink, existing)  # records the source identity (created now, or before it was recorded)
    plan.check_source(table)  # another offload may have created it first
    lower, last = sink.watermark(table)
    plan.check_lineage(last)
    totals = last.totals if last is not None else (0, 0)
    result.watermark_before = result.watermark_after = lower.as_dict() if lower else None
    window = plan.window(settings, lower, now_ns)
    total = 0  # the window's rows, for a progress bar only: counting them reads the key columns of the backlog
    if progress:
        total = int(source.rows(count_query(plan.info.qualified, cfg.final, plan.key, window))[0][0])
        progress(cfg.target, 0, total)
    conflicts = 0
    stream = Stream(source, plan, table, window, settings)
    try:
        while (cut := stream.next_commit()) is not None:
            commit_id = f"{run_id}/{uuid.uuid4().hex[:12]}"
            props = {
                **cut.to_props(),
                **plan.lineage(),
                names.RUN_ID: run_id,
                COMMIT_ID: commit_id,
                names.WINDOW_LOWER_NS: str(window.lower.ts_ns) if window.lower else "",
                names.WINDOW_UPPER_NS: str(window.upper_ns),
                names.VERSION: __version__,
                names.COMMITS_TOTAL: str(totals[1] + 1),
                names.ROWS_TOTAL: str(totals[0]),
            }
            try:
                table, rows = sink.commit(table, stream.chunks(), props, time.monotonic(), sorted_by=plan.sort_columns)
            except CommitConflict:
                conflicts += 1
                if conflicts > MAX_CONFLICTS:
                    raise
                stream.close()  # its read-ahead starts from a cut that did not land
                table = sink.load(cfg.target) or table
                plan.check_source(table)
                lower, last = sink.watermark(table)
                plan.check_lineage(last)
                totals = last.totals if last is not None else (0, 0)
                window = plan.window(settings, lower, now_ns)
                stream = Stream(source, plan, table, window, settings)
                continue
            except CommitOutcomeUnknown as unknown:
                try:
                    landed = sink.find_commit(cfg.target, commit_id)
                except CatalogUnavailable as exc:
                    raise CommitOutcomeUnknown(
                        f"{unknown.message}; settling it failed too: {exc.message}",
                        "none needed once the catalog answers ([catalog] uri): the next run "
                        "settles it by its commit id",
                    ) from exc
                if landed is None:
                    raise
                table = sink.load(cfg.target) or table
                rows = int(props.get(names.ROWS, 0))
            result.rows += rows
            result.commits += 1
            totals = (totals[0] + rows, totals[1] + 1)
            result.watermark_after = cut.as_dict()
            window = Window(cut, window.upper_ns)
            if progress:
                progress(cfg.target, result.rows, max(total, result.rows))
    finally:
        stream.close()
    result.pending_rows = 0
    if result.watermark_after is not None and settings.offload.late_lookback_seconds:
        _sweep_late_rows(settings, cfg, source, sink, result, plan, table)


def _last_skip(sink: Sink, target: str, table: Table | None = None) -> int | None:
    """The timestamp (ns) up to which the newest `watermark set` moved the watermark, if any is in history
    (of `table`, the target as loaded just now, else loaded here)."""
    table = table if table is not None else sink.load(target)
    for c in sink.history(table) if table is not None else []:
        if c.props.get(names.SET_BY) == "watermark set" and c.watermark is not None:
            return c.watermark.ts_ns
    return None


def late_since(
    settings: Settings, cfg: TableSettings, sink: Sink, wm_ns: int, table: Table | None = None
) -> int | None:
    """Where the late-row sweep starts: `late_lookback_seconds` behind the watermark, but after the rows an
    operator skipped with `watermark set` (they are not late). None: nothing to sweep. `table`: the target
    as just loaded, if the caller has it."""
    if not settings.offload.late_lookback_seconds:
        return None
    since = wm_ns - settings.offload.late_lookback_seconds * NS
    skipped = _last_skip(sink, cfg.target, table)
    if skipped is not None and skipped >= since:
        since = (skipped // NS // 3600 + 1) * 3600 * NS  # from the next whole hour
    return since if since <= wm_ns else None


def _sweep_late_rows(
    settings: Settings,
    cfg: TableSettings,
    source: Source,
    sink: Sink,
    result: TableResult,
    plan: TablePlan,
    table: Table,
) -> None:
    """Rows that arrived after their hour was offloaded, up to `late_lookback_seconds` behind the watermark:
    compared per key with the hot tier and repaired now (the same CAS bucket replacement as the daily
    reconcile; its rules hold: never a bucket the TTL may be deleting, never shrinking cold)."""
    assert result.watermark_after is not None
    result.late_checked = True
    since = result.late_since_ns = late_since(settings, cfg, sink, int(result.watermark_after["ts_ns"]), table)
    if since is None:
        return
    # Here, not with this module: compare and repair (pyarrow.compute; pyiceberg's pyarrow module, which imports
    # pandas through pyarrow.dataset) are not needed before `run`'s first ClickHouse read (bench/cli_start.py
    # --run; tests/test_cli_front.py checks what is loaded by then).
    from iceberg_offload.engine.repair import reconcile as repair_buckets  # noqa: PLC0415 - see above

    if source.definition(cfg.source) != plan.info.definition:  # changed while the offload ran: plan it again
        plan = TablePlan.build(source, cfg)
    rec = repair_buckets(settings, cfg, source, sink, apply=True, values=False, since_ns=since, plan=plan, table=table)
    result.late_rows, result.late_rows_added = rec.rows_missing, rec.rows_added if rec.applied else 0
    result.late_rows_left, result.late_oldest_ns = rec.rows_left_missing, rec.oldest_left_ns
    result.late_error = rec.error
    if reported_as(rec.error, WarehouseMissing):  # cold lost files: the table is not ok
        result.status, result.error = "failed", rec.error


def new_run_id() -> str:
    return f"cli-{uuid.uuid4().hex[:16]}"


def run_cycle(
    settings: Settings,
    names: list[str] | None = None,
    run_id: str | None = None,
    now_ns: int | None = None,
    progress: Progress | None = None,
) -> CycleResult:
    """One cycle over the configured (or named) tables, bronze then silver then gold."""
    started = time.monotonic()
    tables = settings.select(names)
    cycle = CycleResult(run_id or new_run_id())
    with gc_paused():  # a cycle ends: its imports and batches without the cyclic GC's traversals
        sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
        with open_source(settings.source) as source:
            for layer in LAYERS:
                for cfg in (t for t in tables if t.layer == layer):
                    cycle.tables.append(offload_table(settings, cfg, source, sink, cycle.run_id, now_ns, progress))
    cycle.duration_seconds = time.monotonic() - started
    return cycle
