"""What the exporter reads from Prefect's table artifacts: the daily reconcile's figures and, per table, the
late rows the newest sweep (each cycle's `offload-cycle` artifact) or reconcile left missing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily


@dataclass(frozen=True)
class LateRows:
    """Rows behind the watermark the newest late-row sweep (each cycle) or daily reconcile left missing."""

    rows: int
    oldest_ns: int | None
    at: float  # when that sweep or reconcile reported


RECONCILE_METRICS = (
    ("rows_missing", "offload_reconcile_missing_rows", "Rows the last reconcile found missing from Iceberg"),
    ("buckets_duplicates", "offload_reconcile_duplicate_buckets", "Hours with duplicates found by the last reconcile"),
    ("buckets_repaired", "offload_reconcile_repaired_buckets", "Hours the last reconcile replaced"),
    ("rows_added", "offload_reconcile_added_rows", "Rows the last reconcile added to Iceberg"),
    ("duplicate_rows_removed", "offload_reconcile_removed_duplicate_rows", "Duplicate rows the last reconcile removed"),
    ("buckets_skipped_ttl", "offload_reconcile_skipped_buckets", "Bad hours the last reconcile left alone (TTL)"),
)


def late_rows(known: dict[str, LateRows], cycle: tuple[float | None, list[dict[str, Any]]],
               reconcile: tuple[float | None, list[dict[str, Any]]]) -> dict[str, LateRows]:
    """Per table, the newer of the last cycle's sweep and the last reconcile; a table whose sweep did not run
    (its offload failed) keeps what was known."""
    out = dict(known)
    for (at, rows), left, oldest, ran in ((cycle, "late_rows_left", "late_oldest_ns", "late_checked"),
                                          (reconcile, "rows_left_missing", "oldest_left_ns", None)):
        for row in rows:
            name = str(row.get("table"))
            if at is None or (ran is not None and not row.get(ran)) or (name in out and out[name].at > at):
                continue
            with contextlib.suppress(TypeError, ValueError):
                first = row.get(oldest)
                out[name] = LateRows(int(row.get(left) or 0), int(first) if first is not None else None, at)
    return out


def reconcile_metrics(rows: list[dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    """What the last daily reconcile found and repaired (its Prefect artifact), per table."""
    for key, name, help_ in RECONCILE_METRICS:
        g = GaugeMetricFamily(name, help_, labels=["table"])
        for row in rows:
            with contextlib.suppress(TypeError, ValueError, KeyError):
                g.add_metric([str(row["table"])], float(row.get(key) or 0))
        yield g
