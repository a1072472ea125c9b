"""The Prometheus endpoint on port 8000 (job `iceberg-scheduler`), computed from durable state.

Flow runs are subprocesses of the worker, so nothing here comes from a flow run's memory. A refresher
thread reads Iceberg snapshot summaries and the Prefect API every `refresh_seconds` (10 s) and the
ClickHouse hot tier every `hot_refresh_seconds` (30 s) — the embedded engine only when its lock is free,
so a scrape never waits on it. A scrape serves that cache and derives what moves with the clock (lag,
TTL headroom) at scrape time: lag keeps growing while nothing runs. `offload_exporter_refresh_age_seconds`
says how old each part of the cache is.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from iceberg_offload import __version__, names
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.clickhouse.window import Watermark
from iceberg_offload.config import Settings
from iceberg_offload.errors import (
    CatalogUnavailable,
    ConfigError,
    EngineBusy,
    OffloadError,
    SourceUnavailable,
    WarehouseError,
)
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.ops.status import TableStatus, cold_status, derive, hot_status
from iceberg_offload.orchestration import prefect_api
from iceberg_offload.orchestration.artifacts import LateRows, late_rows, reconcile_metrics
from iceberg_offload.orchestration.run_totals import CYCLES, ERRORS, Outcome, RunTotals, cycle_outcomes, with_rows

NS = 1_000_000_000
FINAL = ["COMPLETED", "FAILED", "CRASHED"]


@dataclass
class TableRuns:
    last_success: float | None = None
    last_duration: float | None = None
    consecutive_failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class Snapshot:
    tables: dict[str, TableStatus] = field(default_factory=dict)
    runs: dict[str, TableRuns] = field(default_factory=dict)
    catalog_up: int = 0
    source_up: int = 0
    prefect_up: int = 0
    workers_online: int = 0
    schedule_active: dict[str, int] = field(default_factory=dict)
    late_runs: dict[str, int] = field(default_factory=dict)
    cycles: dict[str, int] = field(default_factory=lambda: {"success": 0, "partial": 0, "failed": 0})
    cycle_duration: float | None = None
    reconcile: list[dict[str, Any]] = field(default_factory=list)
    late: dict[str, LateRows] = field(default_factory=dict)
    refreshed: dict[str, float] = field(default_factory=dict)


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


class Exporter(Collector):
    def __init__(self, settings: Settings, refresh_seconds: float = 10.0, hot_refresh_seconds: float = 30.0):
        self.settings = settings
        self.refresh_seconds = refresh_seconds
        self.hot_refresh_seconds = hot_refresh_seconds
        self.snap = Snapshot()
        self._sink: Sink | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cycle_totals: dict[str, RunTotals[Outcome]] = {}  # by deployment id: a recreated one counts on

    def _pager(self, kind: str) -> Any:
        return lambda where, end_time, offset: prefect_api.runs_page(self.settings, kind, where, end_time, offset)

    def _cycle_rows(self, flow_run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        return prefect_api.run_artifacts(self.settings, names.CYCLE_ARTIFACT, flow_run_ids)

    def _counter(self, kind: str) -> Any:
        return lambda where, end_time: prefect_api.runs_count(self.settings, kind, where, end_time)

    # -- refreshing ---------------------------------------------------------------------------------------
    def refresh(self, hot: bool = True) -> None:
        snap = Snapshot(
            runs=self.snap.runs,
            cycles=self.snap.cycles,
            refreshed=dict(self.snap.refreshed),
            source_up=self.snap.source_up,
            late=self.snap.late,
        )
        previous = self.snap.tables
        snap.tables = {t.target: TableStatus(t.target, t.layer, t.source) for t in self.settings.tables}
        self._refresh_cold(snap)
        if hot:
            self._refresh_hot(snap)
        for name, st in snap.tables.items():  # keep the last hot values while the engine is busy
            old = previous.get(name)
            if old is not None and st.hot_rows is None:
                for attr in (
                    "hot_rows",
                    "oldest_hot",
                    "newest_hot",
                    "pending_rows",
                    "ttl",
                    "column_ttl",
                    "ttl_deadline",
                    "ttl_span_seconds",
                ):
                    setattr(st, attr, getattr(old, attr))
        self._refresh_prefect(snap)
        for name, late in snap.late.items():
            if name in snap.tables:
                snap.tables[name].late_rows, snap.tables[name].late_oldest_ns = late.rows, late.oldest_ns
        with self._lock:
            self.snap = snap

    def _refresh_cold(self, snap: Snapshot) -> None:
        try:
            if self._sink is None:
                self._sink = Sink(open_catalog(self.settings.catalog), self.settings.catalog.namespace)
            for cfg in self.settings.tables:
                try:
                    cold_status(cfg, self._sink, snap.tables[cfg.target])
                except WarehouseError as exc:  # the catalog answers; this table's files are gone or refused
                    snap.tables[cfg.target].error = exc.as_dict()
            snap.catalog_up = 1
            snap.refreshed["catalog"] = time.time()
        except CatalogUnavailable:
            snap.catalog_up, self._sink = 0, None
            for name, st in self.snap.tables.items():  # serve the last known Iceberg state
                if name in snap.tables:
                    snap.tables[name] = st

    def _refresh_hot(self, snap: Snapshot) -> None:
        src = self.settings.source.model_copy(update={"lock_timeout_seconds": 0.0})
        try:
            with open_source(src) as source:
                now = time.time_ns()
                for cfg in self.settings.tables:
                    st = snap.tables[cfg.target]
                    wm = Watermark(st.watermark["ts_ns"], st.watermark["seq"]) if st.watermark else None
                    try:
                        hot_status(self.settings, cfg, source, st, wm, now)
                    except SourceUnavailable:
                        raise
                    except OffloadError as exc:
                        st.error = exc.as_dict()
            snap.source_up = 1
            snap.refreshed["source"] = time.time()
        except EngineBusy:
            pass  # an offload holds the embedded engine: keep the last values, never wait
        except SourceUnavailable:
            snap.source_up = 0

    def _refresh_prefect(self, snap: Snapshot) -> None:
        s = self.settings
        try:
            if not prefect_api.ready(s):
                raise OSError("not ready")
            snap.workers_online = prefect_api.online_workers(s)
            for flow, name in names.SCHEDULED:
                full = f"{flow}/{name}"
                dep = prefect_api.deployment(s, flow, name)
                snap.schedule_active[full] = int(prefect_api.schedule_active(dep))
                snap.late_runs[full] = prefect_api.count_runs(s, dep["id"], ["Late"]) if dep else 0
                if name == names.MAIN_DEPLOYMENT and dep:
                    self._cycles(snap, dep["id"])
            totals: dict[Outcome, int] = {}
            for t in self._cycle_totals.values():
                for k, n in t.totals.items():
                    totals[k] = totals.get(k, 0) + n
            snap.cycles = {k: totals.get((CYCLES, k), 0) for k in ("success", "partial", "failed")}
            snap.runs = self._table_runs(prefect_api.table_task_runs(s))
            for key, count in totals.items():  # (ERRORS, table, error type)
                if key[0] == ERRORS and key[1] in snap.runs:
                    snap.runs[key[1]].errors[key[2]] = count
            reconciled_at, snap.reconcile = prefect_api.latest_artifact(s, names.RECONCILE_ARTIFACT)
            snap.late = late_rows(
                snap.late, prefect_api.latest_artifact(s, names.CYCLE_ARTIFACT), (reconciled_at, snap.reconcile)
            )
            snap.prefect_up = 1
            snap.refreshed["prefect"] = time.time()
        except prefect_api.API_ERRORS:
            snap.prefect_up = 0

    def _cycles(self, snap: Snapshot, deployment_id: str) -> None:
        """The deployment's cycles by outcome and their failed tables by error type, over its whole history
        (run_totals, from each cycle's state type and `offload-cycle` artifact), and the last one's duration."""
        totals = self._cycle_totals.get(deployment_id) or RunTotals(
            with_rows(self._pager("flow_runs"), self._cycle_rows),
            lambda types: prefect_api.deployment_run_filter(deployment_id, types),
            FINAL,
            cycle_outcomes,
            self._counter("flow_runs"),
            {(CYCLES, "success"): "COMPLETED"},
        )
        totals.refresh(time.time())
        self._cycle_totals[deployment_id] = totals
        last = prefect_api.flow_runs(self.settings, deployment_id, FINAL, limit=1)
        if last:
            snap.cycle_duration = float(last[0].get("total_run_time") or 0.0)

    def _table_runs(self, task_runs: list[dict[str, Any]]) -> dict[str, TableRuns]:
        out = {t.target: TableRuns() for t in self.settings.tables}
        streak_open = {name: True for name in out}
        for run in task_runs:  # newest first
            name = run["name"].removeprefix(names.TABLE_RUN_PREFIX)
            if name not in out or not run["name"].startswith(names.TABLE_RUN_PREFIX):
                continue
            r, state = out[name], run.get("state") or {}
            if state.get("type") == "COMPLETED":
                if r.last_success is None:
                    r.last_success = _ts(run.get("end_time"))
                streak_open[name] = False
            elif streak_open[name]:
                r.consecutive_failures += 1
            if r.last_duration is None:
                r.last_duration = float(run.get("total_run_time") or 0.0)
        return out

    def run(self) -> None:
        last_hot = 0.0
        while not self._stop.wait(self.refresh_seconds):
            hot = time.monotonic() - last_hot >= self.hot_refresh_seconds
            with contextlib.suppress(Exception):  # a refresh must never kill the endpoint
                self.refresh(hot=hot)
                if hot:
                    last_hot = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    # -- scraping -----------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        with self._lock:
            snap = self.snap
        now = time.time()
        s, n = self.settings, names
        sched = (
            f"every {s.schedule.offload_interval_seconds}s"
            if s.schedule.offload_interval_seconds
            else s.schedule.offload_cron
        )
        info = GaugeMetricFamily(n.METRIC_INFO, "iceberg-offload metadata", labels=["version", "schedule", "tables"])
        info.add_metric([__version__, sched, str(len(s.tables))], 1)
        yield info
        yield GaugeMetricFamily(n.METRIC_TABLES_CONFIGURED, "Tables in the config", value=len(s.tables))
        g = {
            name: GaugeMetricFamily(name, h, labels=["table"])
            for name, h in (
                (n.METRIC_LAG_SECONDS, "Now minus the table's watermark"),
                (n.METRIC_LAG_MINUTES, "Now minus the table's watermark, in minutes (kept for the seed runbook)"),
                (n.METRIC_WATERMARK, "The table's watermark (Unix time, seconds)"),
                (n.METRIC_LAST_SUCCESS, "Last time the table's offload completed (new rows or not)"),
                (n.METRIC_CONSECUTIVE_FAILURES, "Failed offloads of the table since its last success"),
                (n.METRIC_LAST_DURATION, "Duration of the table's last offload"),
                (n.METRIC_TTL_HEADROOM, "Time before the ClickHouse TTL deletes a row not yet offloaded"),
                (n.METRIC_HOT_ROWS, "Rows in the ClickHouse table"),
                (n.METRIC_COLD_ROWS, "Rows in the Iceberg table"),
                (n.METRIC_PENDING_ROWS, "Settled rows waiting for the next offload"),
                (n.METRIC_DATA_FILES, "Data files in the Iceberg table's current snapshot"),
                (
                    n.METRIC_RETAINED_REPAIRS,
                    "Reconcile repairs (late rows, duplicates) in the retained Iceberg history",
                ),
                (n.METRIC_RETAINED_REPAIRED_ROWS, "Rows those repairs added to Iceberg"),
                (n.METRIC_RETAINED_COMPACTIONS, "Compactions in the retained Iceberg history"),
                (
                    n.METRIC_LATE_ROWS,
                    "Rows behind the watermark the last late-row sweep or reconcile found missing "
                    "from Iceberg and could not add",
                ),
            )
        }
        rows = CounterMetricFamily(n.METRIC_ROWS, "Rows offloaded into Iceberg", labels=["table", "layer"])
        commits = CounterMetricFamily(n.METRIC_COMMITS, "Offload commits into Iceberg", labels=["table"])
        errors = CounterMetricFamily(
            n.METRIC_ERRORS, "Failed table offloads by error type", labels=["table", "error_type"]
        )
        for name, st in snap.tables.items():
            derive(st, now)
            runs = snap.runs.get(name, TableRuns())
            if st.watermark is not None:
                g[n.METRIC_LAG_SECONDS].add_metric([name], st.lag_seconds or 0.0)
                g[n.METRIC_LAG_MINUTES].add_metric([name], (st.lag_seconds or 0.0) / 60)
                g[n.METRIC_WATERMARK].add_metric([name], st.watermark["ts_ns"] / NS)
            last_ok = runs.last_success or _ts(st.last_commit_at)
            if last_ok is not None:
                g[n.METRIC_LAST_SUCCESS].add_metric([name], last_ok)
            g[n.METRIC_CONSECUTIVE_FAILURES].add_metric([name], runs.consecutive_failures)
            duration = runs.last_duration if runs.last_duration is not None else st.last_commit_seconds
            if duration is not None:
                g[n.METRIC_LAST_DURATION].add_metric([name], duration)
            if st.ttl_headroom_seconds is not None:
                g[n.METRIC_TTL_HEADROOM].add_metric([name], st.ttl_headroom_seconds)
            for metric, value in (
                (n.METRIC_HOT_ROWS, st.hot_rows),
                (n.METRIC_COLD_ROWS, st.cold_rows),
                (n.METRIC_PENDING_ROWS, st.pending_rows),
                (n.METRIC_DATA_FILES, st.data_files),
                (n.METRIC_RETAINED_REPAIRS, st.repairs),
                (n.METRIC_RETAINED_REPAIRED_ROWS, st.repaired_rows),
                (n.METRIC_RETAINED_COMPACTIONS, st.compactions),
                (n.METRIC_LATE_ROWS, st.late_rows or 0),
            ):
                if value is not None:
                    g[metric].add_metric([name], value)
            rows.add_metric([name, st.layer], st.rows_total)
            commits.add_metric([name], st.commits_total)
            for kind, count in sorted((runs.errors or {"none": 0}).items()):
                errors.add_metric([name, kind], count)
        yield from g.values()
        yield from (rows, commits, errors)
        cycles = CounterMetricFamily(n.METRIC_CYCLES, "Offload cycles by outcome", labels=["status"])
        for status in ("success", "partial", "failed"):
            cycles.add_metric([status], snap.cycles.get(status, 0))
        yield cycles
        yield GaugeMetricFamily(
            n.METRIC_LAST_CYCLE_DURATION,
            "Duration of the last offload cycle through Prefect (0 before the first)",
            value=snap.cycle_duration or 0.0,
        )
        workers = GaugeMetricFamily(n.METRIC_WORKERS_ONLINE, "ONLINE workers in the pool", labels=["pool"])
        workers.add_metric([names.POOL], snap.workers_online)
        yield workers
        active = GaugeMetricFamily(
            n.METRIC_SCHEDULE_ACTIVE,
            "1 when the deployment exists, is not paused and its schedule is active",
            labels=["deployment"],
        )
        yield from reconcile_metrics(snap.reconcile)
        late = GaugeMetricFamily(n.METRIC_LATE_RUNS, "Runs of the deployment in state Late", labels=["deployment"])
        for dep in (names.MAIN, names.MAINT):
            active.add_metric([dep], snap.schedule_active.get(dep, 0))
            late.add_metric([dep], snap.late_runs.get(dep, 0))
        yield active
        yield late
        for name, value in (
            (n.METRIC_SOURCE_UP, snap.source_up),
            (n.METRIC_CATALOG_UP, snap.catalog_up),
            (n.METRIC_PREFECT_API_UP, snap.prefect_up),
        ):
            yield GaugeMetricFamily(name, f"1 when the {name.split('_')[1]} answered the last refresh", value=value)
        age = GaugeMetricFamily(n.METRIC_REFRESH_AGE, "Age of the exporter's cached state", labels=["part"])
        for part in ("catalog", "source", "prefect"):
            if part in snap.refreshed:
                age.add_metric([part], now - snap.refreshed[part])
        yield age


def serve(settings: Settings, keep_trying: bool = False) -> Any:
    """Refresh once, then serve on a daemon thread and keep refreshing; returns a handle with .shutdown().

    A busy port raises ConfigError, unless `keep_trying` (the worker): offloads matter more than metrics, so
    the worker runs on and binds the port as soon as its holder lets go (checked every BIND_RETRY_SECONDS).
    """
    exporter = Exporter(settings, settings.metrics.refresh_seconds, settings.metrics.hot_refresh_seconds)
    with contextlib.suppress(Exception):
        exporter.refresh()
    registry = CollectorRegistry()
    registry.register(exporter)
    handle = _Handle(None, exporter)
    try:
        handle.server = _bind(settings, registry)
    except ConfigError as exc:
        if not keep_trying:
            raise
        print(f"error: {exc.message}; serving no metrics until it is free. fix: {exc.fix}", flush=True)
        threading.Thread(target=handle.bind_later, args=(settings, registry), name="metrics-bind", daemon=True).start()
    handle.refresher = threading.Thread(target=exporter.run, name="metrics-refresh", daemon=True)
    handle.refresher.start()
    return handle


BIND_RETRY_SECONDS = 5.0


def _bind(settings: Settings, registry: CollectorRegistry) -> Any:
    m = settings.metrics
    try:
        server, _thread = start_http_server(m.port, addr=m.host, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fix = f"find the holder with `ss -ltnp 'sport = :{m.port}'`, stop it, or set [metrics] port"
            raise ConfigError(f"metrics port {m.host}:{m.port} is already in use", fix) from exc
        raise
    return server


@dataclass
class _Handle:
    server: Any
    exporter: Exporter
    stopped: threading.Event = field(default_factory=threading.Event)
    refresher: threading.Thread | None = None

    def bind_later(self, settings: Settings, registry: CollectorRegistry) -> None:
        while not self.stopped.wait(BIND_RETRY_SECONDS):
            with contextlib.suppress(ConfigError):
                self.server = _bind(settings, registry)
                print(f"metrics now served on {settings.metrics.host}:{settings.metrics.port}", flush=True)
                return

    def shutdown(self) -> None:
        """Stop serving, and wait for a refresh in flight: after this returns nothing of ours holds the engine."""
        self.stopped.set()
        self.exporter.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.refresher is not None:
            self.refresher.join(self.exporter.settings.source.lock_timeout_seconds + 60)
