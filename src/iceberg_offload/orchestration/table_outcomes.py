"""Each table's last success, failure streak and last duration (`offload_last_success_timestamp_seconds`,
`offload_consecutive_failures`, `offload_last_duration_seconds`), read as data, never from a run's name or
message: the newest finished cycles of the offload deployment with the rows of their `offload-cycle` artifact,
and the finished runs of the table deployment started on their own.

What counts as one offload of a table (an `Attempt`):
- a cycle's row for the table: ok or not, its `duration_seconds` (absent from older rows: no duration);
- a cycle without an artifact, for every table it was to run (its `tables` parameter; every configured table
  when none): failed when it did not complete (it crashed, or failed before any table), succeeded when it
  completed (a cycle from before cycles wrote artifacts); no duration either way. A cycle whose artifact has
  no row for a table (it was not selected) says nothing of it;
- a run of the table deployment with no parent task run (started by hand, not as a cycle's subflow: that one
  is in its cycle's row): its `table` parameter, Completed or not, its `total_run_time`.

Bounded: a refresh reads the newest RECENT cycles and RECENT table runs (two pages) and the artifacts only of
cycles it has not read before (rows are cached per flow run id: a finished run's artifact no longer changes).
A streak longer than what they show reads as the attempts they hold (at most 2 x RECENT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from iceberg_offload import names
from iceberg_offload.orchestration.prefect_api import FINAL, deployment_run_filter

RECENT = 50
"""Newest cycles (and table runs) read per refresh; the alert fires at 3."""

Run = dict[str, Any]
Rows = list[dict[str, Any]]
Page = Callable[[dict[str, Any], int], list[Run]]  # (where, limit) -> finished runs, newest end first
Artifacts = Callable[[list[str]], dict[str, Rows]]  # flow-run ids -> each one's artifact rows


@dataclass
class TableRuns:
    last_success: float | None = None
    last_duration: float | None = None
    consecutive_failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    table: str
    at: float  # when it ended (Unix seconds)
    ok: bool
    seconds: float | None = None


def timestamp(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _seconds(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def cycle_attempts(cycle: Run, rows: Rows | None, tables: list[str]) -> list[Attempt]:
    """What one finished cycle says of each table (module docstring)."""
    at = timestamp(cycle.get("end_time"))
    if at is None:
        return []
    if rows is None:
        ok = (cycle.get("state") or {}).get("type") == "COMPLETED"
        selected = (cycle.get("parameters") or {}).get("tables") or tables
        return [Attempt(str(t), at, ok) for t in selected]
    return [
        Attempt(str(r.get("table")), at, r["status"] == "ok", _seconds(r.get(names.CYCLE_DURATION)))
        for r in rows
        if "status" in r
    ]


def table_run_attempt(run: Run) -> Attempt | None:
    """A run of the table deployment started on its own: its `table` parameter, its state type."""
    table, at = (run.get("parameters") or {}).get("table"), timestamp(run.get("end_time"))
    if not table or at is None:
        return None
    ok = (run.get("state") or {}).get("type") == "COMPLETED"
    return Attempt(str(table), at, ok, _seconds(run.get("total_run_time")))


def table_runs(attempts: Iterable[Attempt], tables: list[str]) -> dict[str, TableRuns]:
    """Per configured table, newest attempt first: the newest success's end, the failures before it, the newest
    attempt's duration (the newest that has one)."""
    out = {t: TableRuns() for t in tables}
    open_streak = set(tables)
    for a in sorted(attempts, key=lambda a: a.at, reverse=True):
        r = out.get(a.table)
        if r is None:
            continue
        if a.ok:
            if r.last_success is None:
                r.last_success = a.at
            open_streak.discard(a.table)
        elif a.table in open_streak:
            r.consecutive_failures += 1
        if r.last_duration is None and a.seconds is not None:
            r.last_duration = a.seconds
    return out


class RecentOutcomes:
    """The per-table outcomes of the newest cycles and table runs, refreshed in a bounded number of calls."""

    def __init__(self, page: Page, artifacts: Artifacts):
        self.page, self.artifacts = page, artifacts
        self.rows: dict[str, Rows | None] = {}  # by cycle id, the cycles of the last page only
        self.last_success: dict[str, float] = {}  # the newest seen while the exporter runs

    def refresh(self, main_id: str | None, table_id: str | None, tables: list[str]) -> dict[str, TableRuns]:
        cycles = self.page(deployment_run_filter(main_id, FINAL), RECENT) if main_id else []
        alone = {"parent_task_run_id": {"is_null_": True}}  # not a cycle's subflow
        singles = self.page({**deployment_run_filter(table_id, FINAL), **alone}, RECENT) if table_id else []
        new = [c["id"] for c in cycles if c["id"] not in self.rows]
        found = self.artifacts(new) if new else {}
        rows = {c["id"]: self.rows[c["id"]] if c["id"] in self.rows else found.get(c["id"]) for c in cycles}
        attempts = [a for c in cycles for a in cycle_attempts(c, rows[c["id"]], tables)]
        attempts += [a for r in singles if (a := table_run_attempt(r)) is not None]
        # a full page stops somewhere in the past: nothing older than where either page stops is read
        horizon = max(
            (timestamp(p[-1].get("end_time")) or 0.0 for p in (cycles, singles) if len(p) >= RECENT), default=0.0
        )
        out = table_runs((a for a in attempts if a.at >= horizon), tables)
        for name, r in out.items():
            if r.last_success is not None or name in self.last_success:
                r.last_success = max(r.last_success or 0.0, self.last_success.get(name, 0.0))
                self.last_success[name] = r.last_success
        self.rows = rows
        return out
