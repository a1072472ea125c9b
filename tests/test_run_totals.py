"""The run counters' derivation from each cycle's state type and `offload-cycle` artifact rows, without a
server: a fake pager serves flow runs the way Prefect's `/flow_runs/filter` does (end time descending, bounds
inclusive, pages of 200) and a fake artifact reader the rows the flow writes (`artifacts.cycle_row`)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from iceberg_offload.engine.offload import TableResult
from iceberg_offload.errors import OffloadError, OrchestrationError, SourceError, SourceUnavailable
from iceberg_offload.orchestration.artifacts import cycle_row
from iceberg_offload.orchestration.prefect_api import PAGE
from iceberg_offload.orchestration.run_totals import ROWS, RunTotals, cycle_outcomes, with_rows

T0 = datetime(2025, 1, 1, tzinfo=UTC)
VIEW_ERROR = {"type": "source_error", "message": "NOT_ENOUGH_SPACE"}


def row(table: str, error: OffloadError | None = None, view_error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A table's row as the flow writes it: its outcome (TableResult) through `cycle_row`."""
    outcome = TableResult(
        table,
        "bronze",
        status="failed" if error else "ok",
        rows=0 if error else 10,
        error=error.as_dict() if error else None,
        view_error=view_error,
    )
    return cycle_row(outcome.as_dict())


OK = [row("a"), row("b")]
PARTIAL = [row("a", SourceUnavailable("ClickHouse unreachable", "start it")), row("b")]
ALL_FAILED = [
    row("a", SourceError("no such table", "fix the config")),
    row("b", OrchestrationError("the task run crashed", "see its logs")),
]
VIEW_LEFT = [row("a", view_error=VIEW_ERROR), row("b")]


def run(i: int, state: str, message: str = "", end: datetime | None = None) -> dict[str, Any]:
    when = end or T0 + timedelta(seconds=i)
    return {
        "id": f"run-{i}",
        "end_time": when.isoformat().replace("+00:00", "Z"),
        "state": {"type": state, "message": message},
    }


def test_a_cycles_status_and_errors_are_its_state_type_and_artifact_rows_never_its_message():
    cases = [  # (state, message that would have fooled a parser, rows, status, errors)
        ("COMPLETED", "2 of 2 tables failed", OK, "success", []),
        ("FAILED", "tables failed: 1 of 2 (a)", PARTIAL, "partial", [("a", "source_unavailable")]),
        ("FAILED", "1 of 2 tables failed", ALL_FAILED, "failed", [("a", "source_error"), ("b", "orchestration")]),
        ("FAILED", "view k2.a_all not re-pointed", VIEW_LEFT, "partial", []),  # its table went through
        ("CRASHED", "1 of 2 tables failed [source_error]", None, "failed", []),  # no artifact: no table errors
        ("FAILED", "the flow raised before any table", None, "failed", []),
        ("FAILED", "", OK, "failed", []),  # a failed run whose rows say nothing failed is still not a success
        (
            "FAILED",
            "",
            [{"table": "a", "status": "failed", "error": "old row"}, row("b")],
            "partial",
            [("a", "unknown")],
        ),  # a row written before rows carried error_type
    ]
    for state, message, rows, status, errors in cases:
        got = cycle_outcomes({**run(0, state, message), ROWS: rows})
        assert got == [("cycles", status)] + [("errors", t, k) for t, k in errors], (state, message, rows)


def test_rows_are_read_in_one_call_per_page_only_for_runs_that_did_not_complete():
    runs = [run(i, "COMPLETED" if i % 3 else "FAILED") for i in range(5)]
    calls: list[list[str]] = []

    def artifacts(ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        calls.append(ids)
        return {i: PARTIAL for i in ids if i != "run-3"}

    paged = with_rows(lambda where, end_time, offset: runs, artifacts)({}, {}, 0)
    assert calls == [["run-0", "run-3"]]
    assert [r[ROWS] for r in paged] == [PARTIAL, None, None, None, None]
    assert with_rows(lambda where, end_time, offset: [run(9, "COMPLETED")], artifacts)({}, {}, 0)[0][ROWS] is None
    assert len(calls) == 1  # a page of successes reads no artifact


class FakePrefect:
    """Finished flow runs and their artifact rows, paged like the server."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.artifact_calls = 0

    def add(self, r: dict[str, Any], rows: list[dict[str, Any]] | None) -> None:
        self.runs.append(r)
        if rows is not None:
            self.rows[r["id"]] = rows

    def _match(self, where: dict[str, Any], end_time: dict[str, str]) -> list[dict[str, Any]]:
        types = where["state"]["type"]["any_"]
        after, before = (
            datetime.fromisoformat(end_time[k].replace("Z", "+00:00")) if k in end_time else None
            for k in ("after_", "before_")
        )
        out = [r for r in self.runs if r["state"]["type"] in types]
        out = [r for r in out if (after is None or _end(r) >= after) and (before is None or _end(r) <= before)]
        return sorted(out, key=_end, reverse=True)

    def page(self, where: dict[str, Any], end_time: dict[str, str], offset: int) -> list[dict[str, Any]]:
        return self._match(where, end_time)[offset : offset + PAGE]

    def count(self, where: dict[str, Any], end_time: dict[str, str]) -> int:
        return len(self._match(where, end_time))

    def artifacts(self, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        self.artifact_calls += 1
        assert len(ids) <= PAGE
        return {i: self.rows[i] for i in ids if i in self.rows}


def _end(r: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(r["end_time"].replace("Z", "+00:00"))


KINDS = [
    ("COMPLETED", OK, "success"),
    ("FAILED", PARTIAL, "partial"),
    ("FAILED", ALL_FAILED, "failed"),
    ("CRASHED", None, "failed"),
    ("FAILED", VIEW_LEFT, "partial"),
]


def _add(fake: FakePrefect, truth: Counter, start: int, n: int, same_instant: datetime | None = None) -> None:
    for i in range(start, start + n):
        state, rows, status = KINDS[i % len(KINDS)] if i % 4 else KINDS[0]  # 3 in 4 not Completed
        fake.add(run(i, state, "0 of 2 tables failed", same_instant), rows)
        truth[("cycles", status)] += 1
        for r in rows or []:
            if r["status"] != "ok":
                truth[("errors", r["table"], r["error_type"])] += 1


def test_totals_from_artifacts_count_each_run_once_over_pages_and_only_rise():
    fake = FakePrefect()
    truth: Counter = Counter()
    _add(fake, truth, 0, 450)  # more than two pages
    _add(fake, truth, 450, 400, same_instant=T0 + timedelta(seconds=460))  # over a page ending at one instant
    totals = RunTotals(
        with_rows(fake.page, fake.artifacts),
        lambda types: {"state": {"type": {"any_": types}}},
        ["COMPLETED", "FAILED", "CRASHED"],
        cycle_outcomes,
        fake.count,
        {("cycles", "success"): "COMPLETED"},
    )
    now = (T0 + timedelta(seconds=2000)).timestamp()
    first = totals.refresh(now)
    assert fake.artifact_calls >= 4  # the history: pages of failed and crashed runs, one artifact call each
    assert first == truth and first[("errors", "b", "orchestration")] > 0 and first[("cycles", "partial")] > 0
    assert totals.refresh(now + 1) == truth  # nothing new: nothing counted twice
    _add(fake, truth, 850, 40, same_instant=T0 + timedelta(seconds=1995))  # ended within the look-back
    after = totals.refresh(now + 2)
    assert after == truth and all(after[k] >= v for k, v in first.items())
    calls = fake.artifact_calls
    assert totals.refresh(now + 3) == truth and fake.artifact_calls == calls + 1  # one page, one artifact call


def test_table_outcomes_read_a_bounded_page_and_each_cycles_rows_once():
    """Per-table outcomes (table_outcomes): newest RECENT cycles per refresh, each cycle's artifact read once;
    a crashed cycle fails only the tables it was to run; a streak longer than the page reads as the page."""
    from iceberg_offload.orchestration import table_outcomes as to

    down = SourceUnavailable("ClickHouse unreachable", "start it")
    cycles: list[dict[str, Any]] = []  # oldest first
    rows: dict[str, list[dict[str, Any]]] = {}
    asked: list[list[str]] = []

    def page(where: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        if "parent_task_run_id" in where:
            return []  # no table deployment runs here
        return sorted(cycles, key=lambda r: r["end_time"], reverse=True)[:limit]

    def artifacts(ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        asked.append(ids)
        return {i: rows[i] for i in ids if i in rows}

    def cycle(state: str, found: list[dict[str, Any]] | None, tables: list[str] | None = None) -> None:
        r = run(len(cycles), state) | {"parameters": {"tables": tables} if tables else {}}
        cycles.append(r)
        if found is not None:
            rows[r["id"]] = found

    outcomes = to.RecentOutcomes(page, artifacts)
    cycle("COMPLETED", [row("a"), row("b")])
    cycle("CRASHED", None, tables=["b"])  # it was to run b only: a's streak is not its business
    cycle("FAILED", [row("a", down), row("b")])
    got = outcomes.refresh("main", "table", ["a", "b"])
    assert (got["a"].consecutive_failures, got["b"].consecutive_failures) == (1, 0)
    assert got["a"].last_success == datetime.fromisoformat(cycles[0]["end_time"]).timestamp()
    assert asked == [[c["id"] for c in reversed(cycles)]]
    outcomes.refresh("main", "table", ["a", "b"])
    assert len(asked) == 1  # nothing new: no artifact call

    for _ in range(to.RECENT + 10):  # a streak longer than one page
        cycle("FAILED", [row("a", down), row("b")])
    got = outcomes.refresh("main", "table", ["a", "b"])
    assert asked[-1] == [c["id"] for c in reversed(cycles[-to.RECENT :])]  # only the page's new cycles
    assert got["a"].consecutive_failures == to.RECENT and got["b"].consecutive_failures == 0
    assert got["a"].last_success == datetime.fromisoformat(cycles[0]["end_time"]).timestamp()  # kept from before
    assert len(outcomes.rows) == to.RECENT  # the cache holds one page
