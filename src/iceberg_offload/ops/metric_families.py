"""What a scrape serves: the metric families of the exporter's cached state (`Snapshot`, which the refresher in
`ops.metrics` fills), with what moves with the clock (lag, TTL headroom) derived at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from iceberg_offload import __version__, names
from iceberg_offload.config import Settings
from iceberg_offload.ops.status import TableStatus, derive
from iceberg_offload.orchestration.artifacts import LateRows, reconcile_metrics
from iceberg_offload.orchestration.table_outcomes import TableRuns, timestamp

NS = 1_000_000_000


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


def families(settings: Settings, snap: Snapshot, now: float) -> Iterator[Any]:
    """Every metric family of `snap` at time `now` (docs/metrics.md)."""
    s = settings
    n = names
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
    errors = CounterMetricFamily(n.METRIC_ERRORS, "Failed table offloads by error type", labels=["table", "error_type"])
    for name, st in snap.tables.items():
        derive(st, now)
        runs = snap.runs.get(name, TableRuns())
        if st.watermark is not None:
            g[n.METRIC_LAG_SECONDS].add_metric([name], st.lag_seconds or 0.0)
            g[n.METRIC_LAG_MINUTES].add_metric([name], (st.lag_seconds or 0.0) / 60)
            g[n.METRIC_WATERMARK].add_metric([name], st.watermark["ts_ns"] / NS)
        last_ok = runs.last_success or timestamp(st.last_commit_at)
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
