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
