"""The exporter's run counters against a real Prefect server holding more finished runs than one page (200):
`offload_cycles_total` and `offload_errors_total` equal the true totals, a restarted exporter counts the
same, and they only rise as runs are added. Each cycle carries its outcome as the flow writes it (the
`offload-cycle` artifact, rows by `artifacts.cycle_row`) and a message for people, worded so that parsing it
would count wrong."""

from __future__ import annotations

import json
import time
import urllib.error
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest

from iceberg_offload import names
from iceberg_offload.engine.offload import TableResult
from iceberg_offload.errors import OffloadError, SourceError, SourceUnavailable, ValueOutOfRange
from iceberg_offload.ops.metrics import Exporter
from iceberg_offload.orchestration import prefect_api
from iceberg_offload.orchestration.artifacts import cycle_row
from stackutil import cli, start_server, stop, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def prefect(tmp_path):
    settings = write_config(tmp_path, ["t_a", "t_b"])
    server = start_server(settings, tmp_path / "server.log")
    try:
        cli(settings, "deploy")
        yield settings
    finally:
        stop(server)


def _post(s, path: str, body: dict) -> dict:
    """POST, again while SQLite is busy (the server answers 503; Prefect's own client retries them too)."""

    def attempt() -> dict | None:
        try:
            return prefect_api.request(s, "POST", path, body)
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise AssertionError(f"POST {path}: {exc}") from exc
            return None

    return wait_for(attempt, 30, f"POST {path}", every=0.1)


def _table(table: str, error: OffloadError | None = None, view_error: str = "") -> dict[str, Any]:
    """A table's outcome as the engine reports it."""
    return TableResult(
        table,
        "bronze",
        status="failed" if error else "ok",
        rows=0 if error else 7,
        error=error.as_dict() if error else None,
        view_error={"type": "source_error", "message": view_error} if view_error else None,
    ).as_dict()


def _cycle(i: int) -> tuple[str, str, list[dict[str, Any]] | None, str]:
    """The i-th cycle's (state type, message, table outcomes (None: no artifact), status): mostly successes,
    some partial, failed and crashed. No message says "N of M tables failed" the way the flow once did."""
    if i % 7 == 0:
        return (
            "FAILED",
            "t_a failed (1/2): ClickHouse unreachable",
            [_table("t_a", SourceUnavailable("ClickHouse unreachable", "start it")), _table("t_b")],
            "partial",
        )
    if i % 11 == 0:
        return (
            "FAILED",
            "1 of 2 tables failed, and then the other",
            [
                _table("t_a", ValueOutOfRange("t_a.x: 1e300 out of range", "widen it")),
                _table("t_b", SourceError("no such table", "fix the config")),
            ],
            "failed",
        )
    if i % 13 == 0:
        return "CRASHED", "1 of 2 tables failed [source_error]", None, "failed"  # the process died: no artifact
    if i % 17 == 0:
        return (
            "FAILED",
            "view k2.t_a_all not re-pointed",
            [_table("t_a", view_error="NOT_ENOUGH_SPACE"), _table("t_b")],
            "partial",
        )
    return "COMPLETED", "2 of 2 tables failed? no: 14 rows offloaded", [_table("t_a"), _table("t_b")], "success"


def add_cycles(s, dep_id: str, n: int, truth: Counter) -> None:
    """n finished runs of the offload deployment, each with the artifact its flow would have written."""

    def one(i: int) -> None:
        state_type, message, outcomes, _status = _cycle(i)
        run = _post(s, f"/deployments/{dep_id}/create_flow_run", {"state": {"type": state_type, "message": message}})
        assert run["state"]["type"] == state_type and run["end_time"], run
        if outcomes is not None:
            _post(
                s,
                "/artifacts/",
                {
                    "key": names.CYCLE_ARTIFACT,
                    "type": "table",
                    "flow_run_id": run["id"],
                    "data": json.dumps([cycle_row(o) for o in outcomes]),
                },
            )

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(n)))
    for i in range(n):
        _state, _message, outcomes, status = _cycle(i)
        truth[("offload_cycles_total", status)] += 1
        truth.update(
            ("offload_errors_total", o["table"], o["error"]["type"]) for o in outcomes or [] if o["status"] != "ok"
        )


def counters(exporter: Exporter) -> dict[tuple[str, ...], float]:
    def refreshed() -> bool:  # a refresh the busy SQLite answered 503 changes no count: the next one counts
        exporter.refresh(hot=False)
        return exporter.snap.prefect_up == 1

    wait_for(refreshed, 30, "a refresh with Prefect answering", every=0.1)
    out: dict[tuple[str, ...], float] = {}
    for family in exporter.collect():
        for sample in family.samples:
            if sample.name == "offload_cycles_total":
                out[(sample.name, sample.labels["status"])] = sample.value
            elif sample.name == "offload_errors_total" and sample.labels["error_type"] != "none":
                out[(sample.name, sample.labels["table"], sample.labels["error_type"])] = sample.value
    return out


def test_run_counters_count_every_retained_run_and_only_rise(prefect, monkeypatch):
    s = prefect
    dep = prefect_api.deployment(s, names.MAIN_FLOW, names.MAIN_DEPLOYMENT)
    truth: Counter = Counter()
    t0 = time.monotonic()
    add_cycles(s, dep["id"], 260, truth)
    print(f"created 260 flow runs and their artifacts in {time.monotonic() - t0:.1f}s")
    assert sum(v for k, v in truth.items() if k[0] == "offload_cycles_total") > 250  # more than a page (200)
    assert truth[("offload_cycles_total", "partial")] and truth[("offload_errors_total", "t_b", "source_error")]
    assert sum(v for k, v in truth.items() if k[0] == "offload_errors_total") > 0

    live = Exporter(s)
    t0 = time.monotonic()
    first = counters(live)
    print(f"first refresh {time.monotonic() - t0:.2f}s", end="; ")
    assert first == truth
    t0 = time.monotonic()
    assert counters(live) == truth  # nothing new: nothing counted twice
    print(f"next refresh {time.monotonic() - t0:.2f}s")

    # a restarted exporter whose look-back is shorter than the runs' age counts them from the history
    # (/count for successes, pages of the failed runs) and agrees
    monkeypatch.setattr("iceberg_offload.orchestration.run_totals.LOOKBACK_SECONDS", 0.5)
    newest = time.time()
    wait_for(lambda: time.time() > newest + 1, 5, "the runs to be older than the look-back")
    restarted = Exporter(s)
    assert counters(restarted) == truth

    add_cycles(s, dep["id"], 30, truth)
    for exporter in (live, restarted):
        after = counters(exporter)
        assert after == truth
        assert all(after[k] >= v for k, v in first.items())
    assert counters(Exporter(s)) == truth


def per_table(exporter: Exporter) -> dict[tuple[str, str], float]:
    """(metric, table) -> value of the per-table run outcomes, after a refresh with Prefect answering."""
    counters(exporter)
    wanted = (names.METRIC_LAST_SUCCESS, names.METRIC_CONSECUTIVE_FAILURES, names.METRIC_LAST_DURATION)
    return {
        (sample.name, sample.labels["table"]): sample.value
        for family in exporter.collect()
        for sample in family.samples
        if sample.name in wanted
    }


def test_table_outcomes_come_from_the_cycle_rows_never_from_run_names(prefect):
    """Last success, failure streak and last duration per table, from the cycles' `offload-cycle` rows (and
    the table deployment's own runs), whatever the runs are named: here no task run is named like a table's
    offload except a decoy that says t_a went through, and the exporter must not believe it."""
    s = prefect
    main = prefect_api.deployment(s, names.MAIN_FLOW, names.MAIN_DEPLOYMENT)
    table = prefect_api.deployment(s, names.TABLE_FLOW, names.TABLE_DEPLOYMENT)
    down = SourceUnavailable("ClickHouse unreachable", "start it")

    def outcome(name: str, seconds: float, error: OffloadError | None = None) -> dict[str, Any]:
        return _table(name, error) | {"duration_seconds": seconds}

    def run(dep_id: str, state_type: str, parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body = {"state": {"type": state_type, "message": "t_a ok"}, "parameters": parameters, **extra}
        found = _post(s, f"/deployments/{dep_id}/create_flow_run", body)
        assert found["state"]["type"] == state_type and found["end_time"], found
        return found

    def cycle(state_type: str, outcomes: list[dict[str, Any]] | None, old: bool = False) -> dict[str, Any]:
        found = run(main["id"], state_type, {})
        if outcomes is not None:
            rows = [cycle_row(o) for o in outcomes]
            if old:  # written before rows carried their duration
                rows = [{k: v for k, v in r.items() if k != "duration_seconds"} for r in rows]
            data = json.dumps(rows)
            _post(
                s,
                "/artifacts/",
                {"key": names.CYCLE_ARTIFACT, "type": "table", "flow_run_id": found["id"], "data": data},
            )
        return found

    first = cycle("COMPLETED", [outcome("t_a", 1.5), outcome("t_b", 2.5)], old=True)
    cycle("FAILED", [outcome("t_a", 0.25, down), outcome("t_b", 3.0)])
    cycle("CRASHED", None)  # the process died before it wrote its artifact: no table went through
    last = cycle("FAILED", [outcome("t_a", 0.5, down), outcome("t_b", 4.0)])
    decoy = _post(
        s,
        "/task_runs/",
        {
            "flow_run_id": last["id"],
            "task_key": "offload-table",
            "dynamic_key": "0",
            "name": names.TABLE_RUN_NAME.format(table="t_a"),
            "state": {"type": "COMPLETED"},
        },
    )
    # the table deployment as a cycle's subflow (fan_out = "deployments"): its cycle's row speaks for it
    run(table["id"], "COMPLETED", {"table": "t_a"}, parent_task_run_id=decoy["id"])
    by_hand = run(table["id"], "FAILED", {"table": "t_b"})  # started alone: it counts

    def when(found: dict[str, Any]) -> float:
        return datetime.fromisoformat(found["end_time"].replace("Z", "+00:00")).timestamp()

    want = {
        (names.METRIC_LAST_SUCCESS, "t_a"): pytest.approx(when(first)),
        (names.METRIC_CONSECUTIVE_FAILURES, "t_a"): 3,
        (names.METRIC_LAST_DURATION, "t_a"): 0.5,
        (names.METRIC_LAST_SUCCESS, "t_b"): pytest.approx(when(last)),
        (names.METRIC_CONSECUTIVE_FAILURES, "t_b"): 1,
        (names.METRIC_LAST_DURATION, "t_b"): float(by_hand.get("total_run_time") or 0.0),
    }
    exporter = Exporter(s)
    assert per_table(exporter) == want
    assert per_table(exporter) == want  # the next refresh reads its cached rows: the same

    cycle("COMPLETED", [outcome("t_a", 0.75), outcome("t_b", 1.25)])
    now = per_table(exporter)
    assert now[(names.METRIC_CONSECUTIVE_FAILURES, "t_a")] == now[(names.METRIC_CONSECUTIVE_FAILURES, "t_b")] == 0
    assert (now[(names.METRIC_LAST_DURATION, "t_a")], now[(names.METRIC_LAST_DURATION, "t_b")]) == (0.75, 1.25)
    assert now[(names.METRIC_LAST_SUCCESS, "t_a")] > when(by_hand)
