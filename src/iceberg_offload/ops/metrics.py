"""The Prometheus endpoint on port 8000 (job `iceberg-scheduler`), computed from durable state.

Flow runs are subprocesses of the worker, so nothing here comes from a flow run's memory. A refresher
thread reads Iceberg snapshot summaries and the Prefect API every `refresh_seconds` (10 s) and the
ClickHouse hot tier every `hot_refresh_seconds` (30 s) — the embedded engine only when its lock is free,
so a scrape never waits on it. After each refresh the refresh thread renders the answer (`ops.endpoint`),
deriving what moves with the clock (lag, TTL headroom) then; a scrape writes it, or renders its own when the
last is older than two refresh intervals: lag keeps growing while nothing runs.
`offload_exporter_refresh_age_seconds` says how old each part of the cache is.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.registry import Collector

from iceberg_offload import names
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
from iceberg_offload.ops import endpoint
from iceberg_offload.ops.metric_families import Snapshot, families
from iceberg_offload.ops.status import TableStatus, cold_status, hot_status
from iceberg_offload.orchestration import prefect_api
from iceberg_offload.orchestration.artifacts import late_rows
from iceberg_offload.orchestration.prefect_api import FINAL
from iceberg_offload.orchestration.run_totals import CYCLES, ERRORS, Outcome, RunTotals, cycle_outcomes, with_rows
from iceberg_offload.orchestration.table_outcomes import RecentOutcomes


class Exporter(Collector):
    def __init__(self, settings: Settings, refresh_seconds: float = 10.0, hot_refresh_seconds: float = 30.0):
        self.settings = settings
        self.refresh_seconds = refresh_seconds
        self.hot_refresh_seconds = hot_refresh_seconds
        self.snap = Snapshot()
        self._sink: Sink | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.on_refresh: Callable[[], None] = lambda: None
        """Called on the refresh thread after each refresh: the endpoint renders its answers."""
        self._cycle_totals: dict[str, RunTotals[Outcome]] = {}  # by deployment id: a recreated one counts on
        self._outcomes = RecentOutcomes(
            lambda where, limit: prefect_api.runs_page(settings, "flow_runs", where, {}, limit=limit), self._cycle_rows
        )

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
            main_id = None
            for flow, name in names.SCHEDULED:
                full = f"{flow}/{name}"
                dep = prefect_api.deployment(s, flow, name)
                snap.schedule_active[full] = int(prefect_api.schedule_active(dep))
                snap.late_runs[full] = prefect_api.count_runs(s, dep["id"], ["Late"]) if dep else 0
                if name == names.MAIN_DEPLOYMENT and dep:
                    main_id = dep["id"]
                    self._cycles(snap, main_id)
            totals: dict[Outcome, int] = {}
            for t in self._cycle_totals.values():
                for k, n in t.totals.items():
                    totals[k] = totals.get(k, 0) + n
            snap.cycles = {k: totals.get((CYCLES, k), 0) for k in ("success", "partial", "failed")}
            table_dep = prefect_api.deployment(s, names.TABLE_FLOW, names.TABLE_DEPLOYMENT)
            tables = [t.target for t in s.tables]
            snap.runs = self._outcomes.refresh(main_id, table_dep["id"] if table_dep else None, tables)
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

    def run(self) -> None:
        last_hot = 0.0
        while not self._stop.wait(self.refresh_seconds):
            hot = time.monotonic() - last_hot >= self.hot_refresh_seconds
            with contextlib.suppress(Exception):  # a refresh must never kill the endpoint
                self.refresh(hot=hot)
                if hot:
                    last_hot = time.monotonic()
            with contextlib.suppress(Exception):
                self.on_refresh()

    def stop(self) -> None:
        self._stop.set()

    # -- scraping -----------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        with self._lock:
            snap = self.snap
        yield from families(self.settings, snap, time.time())


def serve(settings: Settings, keep_trying: bool = False) -> Any:
    """Refresh once, then serve on a daemon thread and keep refreshing; returns a handle with .shutdown().

    A busy port raises ConfigError, unless `keep_trying` (the worker): offloads matter more than metrics, so
    the worker runs on and binds the port as soon as its holder lets go (checked every BIND_RETRY_SECONDS).
    """
    exporter = Exporter(settings, settings.metrics.refresh_seconds, settings.metrics.hot_refresh_seconds)
    with contextlib.suppress(Exception):
        exporter.refresh()
    answers = endpoint.Answers(exporter, 2 * settings.metrics.refresh_seconds)
    exporter.on_refresh = answers.render_all
    handle = _Handle(None, exporter)
    try:
        handle.server = _bind(settings, answers)
    except ConfigError as exc:
        if not keep_trying:
            raise
        print(f"error: {exc.message}; serving no metrics until it is free. fix: {exc.fix}", flush=True)
        threading.Thread(target=handle.bind_later, args=(settings, answers), name="metrics-bind", daemon=True).start()
    handle.refresher = threading.Thread(target=exporter.run, name="metrics-refresh", daemon=True)
    handle.refresher.start()
    return handle


BIND_RETRY_SECONDS = 5.0


def _bind(settings: Settings, answers: endpoint.Answers) -> Any:
    m = settings.metrics
    try:
        server = endpoint.start(m.host, m.port, answers)
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

    def bind_later(self, settings: Settings, answers: endpoint.Answers) -> None:
        while not self.stopped.wait(BIND_RETRY_SECONDS):
            with contextlib.suppress(ConfigError):
                self.server = _bind(settings, answers)
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
