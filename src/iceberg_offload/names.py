"""The names the outside world sees, defined once: Prefect objects, artifact keys, the keys our commits write
into the Iceberg snapshot summary (readers, runbooks and older tables depend on them; never rename), and the
Prometheus metric names (alert rules and the dashboard query them; docs/metrics.md lists them)."""

from __future__ import annotations

DEFAULT_CONFIG = "offload.toml"
"""The config file read when --config is not given (in the working directory)."""

# -- Prefect ----------------------------------------------------------------------------------------------------
POOL = "iceberg-offload"
"""The work pool (type process)."""
MAIN_FLOW, MAIN_DEPLOYMENT = "iceberg-offload-main", "iceberg-offload-15min"
TABLE_FLOW, TABLE_DEPLOYMENT = "iceberg-offload-table", "iceberg-offload-table"
MAINT_FLOW, MAINT_DEPLOYMENT = "iceberg-maintenance", "iceberg-maintenance-daily"
MAIN, MAINT = f"{MAIN_FLOW}/{MAIN_DEPLOYMENT}", f"{MAINT_FLOW}/{MAINT_DEPLOYMENT}"
TABLE = f"{TABLE_FLOW}/{TABLE_DEPLOYMENT}"
"""The deployments as the Prefect CLI and `schedule --deployment` name them."""
SCHEDULED = ((MAIN_FLOW, MAIN_DEPLOYMENT), (MAINT_FLOW, MAINT_DEPLOYMENT))
"""The deployments with a schedule, as (flow, deployment)."""
DEPLOYMENT_TAG = "iceberg-offload"
CYCLE_ARTIFACT, RECONCILE_ARTIFACT = "offload-cycle", "reconcile"
"""Table artifacts: each cycle's outcome per table (with its late-row sweep), the daily reconcile's figures."""
CYCLE_COPIED = ("table", "layer", "status", "rows", "commits")
LATE_FIGURES = ("late_checked", "late_rows", "late_rows_added", "late_rows_left", "late_oldest_ns", "late_since_ns")
CYCLE_ERROR, CYCLE_ERROR_TYPE, CYCLE_VIEW_ERROR = "error", "error_type", "view_error"
CYCLE_DURATION = "duration_seconds"
"""The keys of an `offload-cycle` artifact's rows, one row per table (`artifacts.cycle_row` writes them): copied
from the table's outcome (`status` ok or failed), its late-row sweep (the exporter's offload_late_rows and TTL
headroom read them), the error's message and JSON type ("" and None when it went through: the exporter counts
offload_errors_total{error_type} and the cycle's status from these), the view's error message, and how long the
table took (offload_last_duration_seconds; absent from rows written before it was added)."""


S3_COLLECTION = "{catalog}_warehouse"
"""The ClickHouse named collection holding the S3 credentials of [catalog.properties] for the hot + cold views
(`maintenance/view.py`); the views name it, so renaming it breaks views made before."""


TABLE_RUN_NAME = "offload {table}"
"""The display name of a table's offload run (the task in a cycle, the flow of the table deployment), for people:
nothing reads it back (the exporter reads the cycles' `offload-cycle` rows and the table runs' parameters)."""


RUNBOOKS = {
    "worker down": "scheduler-down.md (scenario 1)",
    "server down": "scheduler-down.md (scenario 2)",
    "no runs": "scheduler-down.md (scenario 3)",
    "metrics unreachable": "scheduler-down.md (scenario 4)",
    "full restart": "scheduler-down.md (scenario 5)",
    "offload failing": "offload-failure.md",
    "warehouse lost": "warehouse-lost.md",
    "lag": "lag.md",
    "watermark": "watermark-recovery.md",
    "ttl risk": "ttl-risk.md",
}
"""doctor's scenarios and the runbook (docs/runbooks/) of each."""


def runbook(scenario: str | None) -> str | None:
    return f"docs/runbooks/{RUNBOOKS[scenario]}" if scenario else None


def table_limit(name: str) -> str:
    """The per-table concurrency tag / global limit: one offload of a table in flight, anywhere."""
    return f"offload-table:{name}"


# -- the Iceberg snapshot summary ---------------------------------------------------------------------------------
PREFIX = "offload."
WATERMARK_PREFIX = PREFIX + "watermark."
RUN_ID = PREFIX + "run-id"
COMMIT_ID = PREFIX + "commit-id"
OPERATION = PREFIX + "operation"
ROWS = PREFIX + "rows"
ROWS_TOTAL = PREFIX + "rows-total"
COMMITS_TOTAL = PREFIX + "commits-total"
DURATION_MS = PREFIX + "duration-ms"
SOURCE = PREFIX + "source"
VERSION = PREFIX + "version"
SET_BY = PREFIX + "set-by"
WINDOW_LOWER_NS = PREFIX + "window.lower-ns"
WINDOW_UPPER_NS = PREFIX + "window.upper-ns"
WATERMARK_TS = PREFIX + "watermark.ts"
WATERMARK_TS_NS = PREFIX + "watermark.ts-ns"
WATERMARK_SEQ = PREFIX + "watermark.seq"
WATERMARK_TIMESTAMP_COLUMN = PREFIX + "watermark.timestamp-column"
WATERMARK_SEQUENCE_COLUMN = PREFIX + "watermark.sequence-column"
WATERMARK_SOURCE = PREFIX + "watermark.source"
REPAIR_BUCKETS = PREFIX + "repair.buckets"
REPAIR_FIRST_BUCKET_NS = PREFIX + "repair.first-bucket-ns"
REPAIR_LAST_BUCKET_NS = PREFIX + "repair.last-bucket-ns"
REPAIR_ROWS_DELETED = PREFIX + "repair.rows-deleted"
REPAIR_ROWS_ADDED = PREFIX + "repair.rows-added"
COMPACT_FILES_ADDED = PREFIX + "compact.files-added"
COMPACT_FILES_REMOVED = PREFIX + "compact.files-removed"
COMPACT_ROWS = PREFIX + "compact.rows"

# -- the Iceberg table's properties ----------------------------------------------------------------------------
SOURCE_SERVER, SOURCE_DATABASE, SOURCE_TABLE, SOURCE_UUID = (
    f"{PREFIX}source.{k}" for k in ("server", "database", "table", "uuid")
)
"""The source identity (engine/identity.py): where the table's rows come from."""


# -- Prometheus metrics (ops/metrics.py and orchestration/artifacts.py serve them; docs/metrics.md) ------------
# By https://prometheus.io/docs/practices/naming/: the `offload_` prefix, base units, `_total` only on counters
# (spelt here as served; CounterMetricFamily takes the name with or without it), `_timestamp_seconds` for Unix
# times, `last` on a gauge holding the last value of something, `retained` on a count of the Iceberg history
# (it falls when snapshots expire). Every name below is served; METRICS collects them.
METRIC_INFO = "offload_info"
"""version, schedule, tables; the seed runbook greps it (`curl .../metrics | grep offload_info`)."""
METRIC_TABLES_CONFIGURED = "offload_tables_configured"
METRIC_LAG_SECONDS = "offload_lag_seconds"
METRIC_LAG_MINUTES = "offload_lag_minutes"
"""offload_lag_seconds / 60, kept only because the seed runbook greps it; rules and the dashboard read seconds."""
METRIC_WATERMARK = "offload_watermark_timestamp_seconds"
METRIC_LAST_SUCCESS = "offload_last_success_timestamp_seconds"
METRIC_CONSECUTIVE_FAILURES = "offload_consecutive_failures"
METRIC_LAST_DURATION = "offload_last_duration_seconds"
METRIC_TTL_HEADROOM = "offload_ttl_headroom_seconds"
METRIC_HOT_ROWS = "offload_hot_rows"
METRIC_COLD_ROWS = "offload_cold_rows"
METRIC_PENDING_ROWS = "offload_pending_rows"
METRIC_DATA_FILES = "offload_data_files"
METRIC_RETAINED_REPAIRS = "offload_retained_repair_commits"
METRIC_RETAINED_REPAIRED_ROWS = "offload_retained_repaired_rows"
METRIC_RETAINED_COMPACTIONS = "offload_retained_compaction_commits"
METRIC_LATE_ROWS = "offload_late_rows"
METRIC_ROWS = "offload_rows_total"
METRIC_COMMITS = "offload_commits_total"
METRIC_ERRORS = "offload_errors_total"
METRIC_CYCLES = "offload_cycles_total"
METRIC_LAST_CYCLE_DURATION = "offload_last_cycle_duration_seconds"
METRIC_WORKERS_ONLINE = "offload_workers_online"
METRIC_SCHEDULE_ACTIVE = "offload_schedule_active"
METRIC_LATE_RUNS = "offload_late_runs"
METRIC_SOURCE_UP = "offload_source_up"
METRIC_CATALOG_UP = "offload_catalog_up"
METRIC_PREFECT_API_UP = "offload_prefect_api_up"
METRIC_REFRESH_AGE = "offload_exporter_refresh_age_seconds"
METRIC_LAST_RECONCILE_MISSING_ROWS = "offload_last_reconcile_missing_rows"
METRIC_LAST_RECONCILE_DUPLICATE_BUCKETS = "offload_last_reconcile_duplicate_buckets"
METRIC_LAST_RECONCILE_REPAIRED_BUCKETS = "offload_last_reconcile_repaired_buckets"
METRIC_LAST_RECONCILE_ADDED_ROWS = "offload_last_reconcile_added_rows"
METRIC_LAST_RECONCILE_REMOVED_DUPLICATE_ROWS = "offload_last_reconcile_removed_duplicate_rows"
METRIC_LAST_RECONCILE_SKIPPED_BUCKETS = "offload_last_reconcile_skipped_buckets"
METRICS = tuple(v for k, v in dict(globals()).items() if k.startswith("METRIC_"))
"""Every metric name the exporter serves (test_metrics.py compares them with a scrape)."""

RENAMED_METRICS = {
    "watermark_timestamp_seconds": METRIC_WATERMARK,
    "offload_duration_seconds": METRIC_LAST_DURATION,
    "offload_cycle_duration_seconds": METRIC_LAST_CYCLE_DURATION,
    "offload_repairs": METRIC_RETAINED_REPAIRS,
    "offload_repaired_rows": METRIC_RETAINED_REPAIRED_ROWS,
    "offload_compactions": METRIC_RETAINED_COMPACTIONS,
    "offload_reconcile_missing_rows": METRIC_LAST_RECONCILE_MISSING_ROWS,
    "offload_reconcile_duplicate_buckets": METRIC_LAST_RECONCILE_DUPLICATE_BUCKETS,
    "offload_reconcile_repaired_buckets": METRIC_LAST_RECONCILE_REPAIRED_BUCKETS,
    "offload_reconcile_added_rows": METRIC_LAST_RECONCILE_ADDED_ROWS,
    "offload_reconcile_removed_duplicate_rows": METRIC_LAST_RECONCILE_REMOVED_DUPLICATE_ROWS,
    "offload_reconcile_skipped_buckets": METRIC_LAST_RECONCILE_SKIPPED_BUCKETS,
}
"""Old name to new, for operators upgrading (docs/metrics.md "Renamed in this version"): nothing serves the
old names any more, so alerts and dashboards of one's own that query them must change."""
