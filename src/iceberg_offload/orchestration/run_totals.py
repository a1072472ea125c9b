"""Counters of finished Prefect runs that never fall while the exporter lives (`offload_cycles_total`,
`offload_errors_total`).

The first refresh counts the whole retained history; later ones read only the runs that ended since the last
one and add them. Prefect's `end_time` is the final state's timestamp, taken by the process that set it, so a
run can land a little after the instant it says it ended: every refresh reads back LOOKBACK_SECONDS and skips
the ids it already counted in that span. A refresh that fails part way changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from iceberg_offload.orchestration.prefect_api import PAGE

LOOKBACK_SECONDS = 600.0
_ERROR_TYPE = re.compile(r"\[([a-z_]+)\]")
_PARTIAL = re.compile(r"(\d+) of (\d+) tables failed")

Run = dict[str, Any]
Pager = Callable[[dict[str, Any], dict[str, str], int], list[Run]]  # (where, end_time, offset) -> newest first
Counter = Callable[[dict[str, Any], dict[str, str]], int]  # (where, end_time) -> how many
K = TypeVar("K", bound=Hashable)


def cycle_status(run: Run) -> str:
    """success, partial (some tables failed: the flow's message says how many) or failed."""
    state = run.get("state") or {}
    if state.get("type") == "COMPLETED":
        return "success"
    m = _PARTIAL.search(state.get("message") or "")
    return "partial" if m and int(m.group(1)) < int(m.group(2)) else "failed"


def table_error(run: Run) -> tuple[str, str]:
    """(table, error type) of a failed `offload <table>` task run: the `[type]` its message starts with."""
    state = run.get("state") or {}
    kind = _ERROR_TYPE.search(state.get("message") or "")
    return run["name"].removeprefix("offload "), kind.group(1) if kind else str(state.get("type", "failed")).lower()


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ended(page: Pager, where: dict[str, Any], after: datetime | None = None,
          before: datetime | None = None) -> Iterator[Run]:
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
    """Runs counted by `key(run)` (None: not counted), over `where` (the state types that count).

    `counted` names keys whose runs need no reading (no message): before the first floor they are counted
    with /count over their state types (`offload_cycles_total{status="success"}` over a year of cycles is one
    call instead of 175 pages).
    """

    def __init__(self, page: Pager, where: Callable[[list[str]], dict[str, Any]], types: list[str],
                 key: Callable[[Run], K | None], count: Counter | None = None,
                 counted: dict[K, str] | None = None):
        self.page, self.where, self.types, self.key = page, where, types, key
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
        k = self.key(run)
        if k is not None:
            totals[k] = totals.get(k, 0) + 1
