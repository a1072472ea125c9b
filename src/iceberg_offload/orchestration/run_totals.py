"""Counters of finished Prefect runs that never fall while the exporter lives (`offload_cycles_total`,
`offload_errors_total`).

The first refresh counts the whole retained history; later ones read only the runs that ended since the last
one and add them. Prefect's `end_time` is the final state's timestamp, taken by the process that set it, so a
run can land a little after the instant it says it ended: every refresh reads back LOOKBACK_SECONDS and skips
the ids it already counted in that span. A refresh that fails part way changes nothing.

What a cycle adds is read as data, never from a message or a run's name: its final state type, and the rows of
the `offload-cycle` artifact it wrote before ending (`with_rows`: one artifact call per page of runs).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from iceberg_offload.orchestration.artifacts import run_status, table_errors
from iceberg_offload.orchestration.prefect_api import PAGE

LOOKBACK_SECONDS = 600.0
ROWS = "cycle_rows"
"""Where `with_rows` puts a run's artifact rows (None: it made no artifact, or it Completed and none was read)."""

Run = dict[str, Any]
Pager = Callable[[dict[str, Any], dict[str, str], int], list[Run]]  # (where, end_time, offset) -> newest first
Counter = Callable[[dict[str, Any], dict[str, str]], int]  # (where, end_time) -> how many
Artifacts = Callable[[list[str]], dict[str, list[dict[str, Any]]]]  # flow-run ids -> each one's artifact rows
K = TypeVar("K", bound=Hashable)
Outcome = tuple[str, ...]
"""A count one cycle adds: ("cycles", status) or ("errors", table, error type)."""
CYCLES, ERRORS = "cycles", "errors"


def with_rows(page: Pager, artifacts: Artifacts) -> Pager:
    """`page`, each run with its artifact's rows under ROWS, read in one call per page. A Completed cycle's
    are not read: it is a success and every table went through (a failed table fails the flow run)."""

    def paged(where: dict[str, Any], end_time: dict[str, str], offset: int) -> list[Run]:
        runs = page(where, end_time, offset)
        ids = [r["id"] for r in runs if (r.get("state") or {}).get("type") != "COMPLETED"]
        found = artifacts(ids) if ids else {}
        return [{**r, ROWS: found.get(r["id"])} for r in runs]

    return paged


def cycle_outcomes(run: Run) -> list[Outcome]:
    """One ("cycles", status), and one ("errors", table, type) per failed table of its artifact (none without
    one: a crashed run is a failed cycle with no table errors)."""
    rows = run.get(ROWS)
    status = run_status((run.get("state") or {}).get("type"), rows)
    return [(CYCLES, status)] + [(ERRORS, table, kind) for table, kind in table_errors(rows)]


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ended(
    page: Pager, where: dict[str, Any], after: datetime | None = None, before: datetime | None = None
) -> Iterator[Run]:
    """Every run matching `where` that ended in [after, before], each once: pages keyed on the end time
    (the bounds are inclusive, so each page starts at the last one's oldest instant and skips what it gave)."""
    seen: set[str] = set()
    upper = before
    while True:
        bounds = {k: _iso(v) for k, v in (("after_", after), ("before_", upper)) if v is not None}
        batch = page(where, bounds, 0)
        fresh = [r for r in batch if r["id"] not in seen]
        if batch and not fresh:  # a whole page ended at one instant: page through that instant by offset
            instant = _when(batch[-1]["end_time"])
            offset = 0
            while len(batch) == PAGE:
                offset += PAGE
                batch = page(where, {"after_": _iso(instant), "before_": _iso(instant)}, offset)
                fresh = [r for r in batch if r["id"] not in seen]
                seen.update(r["id"] for r in fresh)
                yield from fresh
            upper = instant - timedelta(microseconds=1)
            continue
        seen.update(r["id"] for r in fresh)
        yield from fresh
        if len(batch) < PAGE:
            return
        upper = _when(batch[-1]["end_time"])


class RunTotals(Generic[K]):
    """Runs counted by `keys(run)` (one count per key it gives; none: not counted), over `where` (the state
    types that count).

    `counted` names keys whose runs need no reading: before the first floor they are counted with /count over
    their state types, and those runs add no other key (`offload_cycles_total{status="success"}` over a year
    of cycles is one call instead of 175 pages).
    """

    def __init__(
        self,
        page: Pager,
        where: Callable[[list[str]], dict[str, Any]],
        types: list[str],
        keys: Callable[[Run], Iterable[K]],
        count: Counter | None = None,
        counted: dict[K, str] | None = None,
    ):
        self.page, self.where, self.types, self.keys = page, where, types, keys
        self.count, self.counted = count, counted or {}
        self.totals: dict[K, int] = {}
        self.floor: datetime | None = None  # every run that ended before it is counted
        self.seen: dict[str, datetime] = {}  # ids counted that ended at or after the floor

    def refresh(self, now: float) -> dict[K, int]:
        totals, seen = dict(self.totals), dict(self.seen)
        floor = datetime.fromtimestamp(now - LOOKBACK_SECONDS, UTC)
        start = self.floor
        if start is None:  # the history before the floor, once
            before = floor - timedelta(microseconds=1)
            read = [t for t in self.types if t not in self.counted.values()]
            for run in ended(self.page, self.where(read), before=before) if read else ():
                self._add(totals, run)
            for k, state_type in self.counted.items():
                assert self.count is not None
                totals[k] = totals.get(k, 0) + self.count(self.where([state_type]), {"before_": _iso(before)})
            start = floor
        for run in ended(self.page, self.where(self.types), after=start):
            if run["id"] not in seen:
                seen[run["id"]] = _when(run["end_time"])
                self._add(totals, run)
        floor = max(floor, start)
        self.totals, self.floor = totals, floor
        self.seen = {i: t for i, t in seen.items() if t >= floor}
        return totals

    def _add(self, totals: dict[K, int], run: Run) -> None:
        for k in self.keys(run):
            totals[k] = totals.get(k, 0) + 1
