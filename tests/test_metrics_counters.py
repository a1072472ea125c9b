"""The exporter's run counters against a real Prefect server holding more finished runs than one page (200):
`offload_cycles_total` and `offload_errors_total` equal the true totals, a restarted exporter counts the
same, and they only rise as runs are added."""

from __future__ import annotations

import time
import urllib.error
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from iceberg_offload import names
from iceberg_offload.ops.metrics import Exporter
from iceberg_offload.orchestration import prefect_api
from stackutil import cli, start_server, stop, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TASK_MESSAGE = "Task run encountered an exception TableFailed: [{kind}] {table}: failed"


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


def _cycle(i: int) -> tuple[str, str, str]:
    """The i-th cycle's (state type, message, status): mostly successes, some partial, failed and crashed."""
    if i % 7 == 0:
        return "FAILED", "1 of 2 tables failed: t_a", "partial"
    if i % 11 == 0:
        return "FAILED", "2 of 2 tables failed: t_a, t_b", "failed"
    if i % 13 == 0:
        return "CRASHED", "the worker's process died", "failed"
    return "COMPLETED", "0 rows offloaded", "success"


def add_cycles(s, dep_id: str, n: int, truth: Counter) -> None:
    """n finished runs of the offload deployment."""
    def one(i: int) -> None:
        state_type, message, _status = _cycle(i)
        run = _post(s, f"/deployments/{dep_id}/create_flow_run", {"state": {"type": state_type, "message": message}})
        assert run["state"]["type"] == state_type and run["end_time"], run

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(n)))
    truth.update(("offload_cycles_total", _cycle(i)[2]) for i in range(n))


def _task(i: int) -> tuple[str, str | None]:
    """The i-th `offload <table>` task's (table, error type): most failed, some crashed, some completed."""
    return ("t_a", "t_b")[i % 2], None if i % 10 == 9 else ("source_unavailable", "value_out_of_range", "crashed")[i % 3]


def add_task_runs(s, n: int, truth: Counter) -> None:
    def one(i: int) -> None:
        table, kind = _task(i)
        state_type, message = ("COMPLETED", "done") if kind is None else ("CRASHED", "the process died") \
            if kind == "crashed" else ("FAILED", TASK_MESSAGE.format(kind=kind, table=table))
        run = _post(s, "/task_runs/", {"name": f"offload {table}", "task_key": "offload-table",
                                       "dynamic_key": uuid.uuid4().hex,
                                       "state": {"type": state_type, "message": message}})
        assert run["state"]["type"] == state_type and run["end_time"], run

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(n)))
    truth.update(("offload_errors_total", *_task(i)) for i in range(n) if _task(i)[1] is not None)


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
    add_task_runs(s, 240, truth)
    print(f"created 260 flow runs and 240 task runs in {time.monotonic() - t0:.1f}s")
    assert sum(v for k, v in truth.items() if k[0] == "offload_cycles_total") > 250  # more than a page (200)

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
    add_task_runs(s, 30, truth)
    for exporter in (live, restarted):
        after = counters(exporter)
        assert after == truth
        assert all(after[k] >= v for k, v in first.items())
    assert counters(Exporter(s)) == truth
