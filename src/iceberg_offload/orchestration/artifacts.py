"""Prefect's table artifacts, as data: the rows each cycle writes (`offload-cycle`, one per table) and what the
exporter reads back: each cycle's status and failed tables (the run counters), the daily reconcile's figures
and, per table, the late rows the newest sweep or reconcile left missing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from iceberg_offload import names
from iceberg_offload.engine.offload import cycle_status as outcomes_status

HOUR_NS = 3600 * 1_000_000_000
UNKNOWN_TYPE = "unknown"
"""The error type of a failed row without one (written before rows carried `error_type`)."""


def cycle_row(outcome: dict[str, Any]) -> dict[str, Any]:
    """A table's outcome (`TableResult.as_dict()`) as its row of the cycle's `offload-cycle` artifact."""
    error, view_error = outcome.get("error") or {}, outcome.get("view_error") or {}
    return (
        {k: outcome[k] for k in names.CYCLE_COPIED}
        | {k: outcome.get(k) for k in names.LATE_FIGURES}
        | {
            names.CYCLE_ERROR: error.get("message", ""),
            names.CYCLE_ERROR_TYPE: error.get("type"),
            names.CYCLE_VIEW_ERROR: view_error.get("message", ""),
            names.CYCLE_DURATION: outcome.get(names.CYCLE_DURATION),
        }
    )


def run_status(state_type: str | None, rows: list[dict[str, Any]] | None) -> str:
    """A finished cycle's status from its final state type and its artifact's rows (None: it wrote none):
    success when Completed; else partial when some but not all tables failed or a view was left behind
    (`engine.offload.cycle_status` over the rows), failed otherwise (every table failed, no artifact: crashed)."""
    if state_type == "COMPLETED":
        return "success"
    status = outcomes_status(r for r in rows or [] if "status" in r)
    return "failed" if status == "success" else status


def table_errors(rows: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """(table, error type) of each failed table of a cycle's artifact rows (none without an artifact)."""
    return [
        (str(r.get("table")), str(r.get(names.CYCLE_ERROR_TYPE) or UNKNOWN_TYPE))
        for r in rows or []
        if "status" in r and r["status"] != "ok"
    ]


@dataclass(frozen=True)
class Report:
    """What one late-row sweep or reconcile left missing: (hour start ns, rows) per hour."""

    at: float  # when it reported
    left: tuple[tuple[int, int], ...]
    since_ns: int | None = None
    """A sweep's first hour (it looked at no hour before; None: at none). A reconcile looked at all."""


@dataclass(frozen=True)
class LateRows:
    """Rows behind the watermark the newest sweep (each cycle, `late_lookback_seconds`) and the newest daily
    reconcile left missing: the sweep speaks for the hours it looked at, the reconcile for the others, and
    for all of them when it is the newer."""

    sweep: Report | None = None
    reconcile: Report | None = None

    @property
    def _left(self) -> list[tuple[int, int]]:
        sweep, rec = self.sweep, self.reconcile
        if sweep is None or (rec is not None and rec.at >= sweep.at):
            return list(rec.left) if rec is not None else []
        first = None if sweep.since_ns is None else sweep.since_ns // HOUR_NS * HOUR_NS
        older = [b for b in rec.left if first is None or b[0] < first] if rec is not None else []
        return list(sweep.left) + older

    @property
    def rows(self) -> int:
        return sum(n for _, n in self._left)

    @property
    def oldest_ns(self) -> int | None:
        return min((start for start, n in self._left if n), default=None)


RECONCILE_METRICS = (
    ("rows_missing", names.METRIC_LAST_RECONCILE_MISSING_ROWS, "Rows the last reconcile found missing from Iceberg"),
    (
        "buckets_duplicates",
        names.METRIC_LAST_RECONCILE_DUPLICATE_BUCKETS,
        "Hours with duplicates found by the last reconcile",
    ),
    ("buckets_repaired", names.METRIC_LAST_RECONCILE_REPAIRED_BUCKETS, "Hours the last reconcile replaced"),
    ("rows_added", names.METRIC_LAST_RECONCILE_ADDED_ROWS, "Rows the last reconcile added to Iceberg"),
    (
        "duplicate_rows_removed",
        names.METRIC_LAST_RECONCILE_REMOVED_DUPLICATE_ROWS,
        "Duplicate rows the last reconcile removed",
    ),
    (
        "buckets_skipped_ttl",
        names.METRIC_LAST_RECONCILE_SKIPPED_BUCKETS,
        "Bad hours the last reconcile left alone (TTL)",
    ),
)


def late_rows(
    known: dict[str, LateRows],
    cycle: tuple[float | None, list[dict[str, Any]]],
    reconcile: tuple[float | None, list[dict[str, Any]]],
) -> dict[str, LateRows]:
    """Per table, the newest sweep (from the last cycle's artifact: a table whose sweep did not run, its
    offload having failed, keeps the one known) and the newest reconcile."""
    out = dict(known)
    for kind, (at, rows) in (("sweep", cycle), ("reconcile", reconcile)):
        for row in rows if at is not None else []:
            assert at is not None
            name = str(row.get("table"))
            old = out.get(name, LateRows())
            prev = old.sweep if kind == "sweep" else old.reconcile
            if (prev is not None and prev.at >= at) or (kind == "sweep" and not row.get("late_checked")):
                continue
            with contextlib.suppress(TypeError, ValueError, KeyError):
                out[name] = (
                    LateRows(_sweep(at, row), old.reconcile)
                    if kind == "sweep"
                    else LateRows(old.sweep, Report(at, tuple(_hour_left(b) for b in row.get("left_buckets") or ())))
                )
    return out


def _hour_left(b: Any) -> tuple[int, int]:
    """(hour start ns, rows) of a `left_buckets` entry: {hour_ns, rows}, or [ns, rows] as older rows wrote it."""
    return (int(b["hour_ns"]), int(b["rows"])) if isinstance(b, dict) else (int(b[0]), int(b[1]))


def _sweep(at: float, row: dict[str, Any]) -> Report:
    first, n, since = row.get("late_oldest_ns"), int(row.get("late_rows_left") or 0), row.get("late_since_ns")
    return Report(at, ((int(first), n),) if first is not None and n else (), int(since) if since is not None else None)


def reconcile_metrics(rows: list[dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    """What the last daily reconcile found and repaired (its Prefect artifact), per table."""
    for key, name, help_ in RECONCILE_METRICS:
        g = GaugeMetricFamily(name, help_, labels=["table"])
        for row in rows:
            with contextlib.suppress(TypeError, ValueError, KeyError):
                g.add_metric([str(row["table"])], float(row.get(key) or 0))
        yield g
