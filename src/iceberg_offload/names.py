"""The names the outside world sees, defined once: Prefect objects, artifact keys, and the keys our commits
write into the Iceberg snapshot summary (readers, runbooks and older tables depend on them; never rename).
Metric names live with their exporter (ops/metrics.py) and are listed in docs/metrics.md."""

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
"""The keys of an `offload-cycle` artifact's rows, one row per table (`artifacts.cycle_row` writes them): copied
from the table's outcome (`status` ok or failed), its late-row sweep (the exporter's offload_late_rows and TTL
headroom read them), the error's message and JSON type ("" and None when it went through: the exporter counts
offload_errors_total{error_type} and the cycle's status from these), the view's error message."""


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
