"""The exporter against real state: values after an offload, the same after a restart, never waiting on the
embedded engine, answering with Prefect down; the alert rules against promtool and the exporter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import TRADES_DDL, clickhouse, insert_trades, sink_for, trades_table
from iceberg_offload.engine.offload import run_cycle

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules" / "iceberg-offload.yml"


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


@pytest.fixture
def offloaded(make_settings, sqlite_uri):
    from stackutil import free_port

    now = int(time.time())
    s = make_settings([trades_table(), trades_table("quiet")], catalog_uri=sqlite_uri)
    s = s.model_copy(
        update={
            "metrics": s.metrics.model_copy(
                update={"port": free_port(), "refresh_seconds": 0.5, "hot_refresh_seconds": 0.5}
            ),
            "prefect": s.prefect.model_copy(update={"api_url": f"http://127.0.0.1:{free_port()}/api"}),
        }
    )
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades") + " TTL toDateTime(ts) + INTERVAL 7 DAY")
        ch.command(TRADES_DDL.format(name="quiet"))
        insert_trades(ch, "trades", (now - 3 * 3600) * 1000, 1000)
    run_cycle(s)
    return s


def test_exporter_serves_durable_state_and_survives_restart(offloaded):
    from iceberg_offload.ops.metrics import serve

    s, port = offloaded, offloaded.metrics.port
    wm, last = sink_for(s).watermark(sink_for(s).load("trades"))
    handle = serve(s)
    try:
        first = scrape(port)
    finally:
        handle.shutdown()
    t = '{table="trades"}'
    assert first[f"watermark_timestamp_seconds{t}"] == pytest.approx(wm.ts_ns / 1e9)
    assert first['offload_rows_total{layer="bronze",table="trades"}'] == 1000
    assert first[f"offload_commits_total{t}"] == last.totals[1] == 1
    assert first[f"offload_cold_rows{t}"] == first[f"offload_hot_rows{t}"] == 1000
    assert first[f"offload_pending_rows{t}"] == 0
    assert first[f"offload_ttl_headroom_seconds{t}"] == 7 * 86400  # nothing pending: the whole TTL span
    assert first[f"offload_lag_seconds{t}"] == pytest.approx(time.time() - wm.ts_ns / 1e9, abs=5)
    assert first["offload_tables_configured"] == 2 and first["offload_catalog_up"] == 1
    assert first["offload_source_up"] == 1 and first["offload_prefect_api_up"] == 0  # no server here
    assert 'offload_info{schedule="*/15 * * * *",tables="2",version="0.1.0"}' in first
    assert 'watermark_timestamp_seconds{table="quiet"}' not in first  # nothing offloaded yet

    time.sleep(1.5)
    handle = serve(s)  # a new process would see exactly this: nothing lives in memory
    try:
        second = scrape(port)
    finally:
        handle.shutdown()
    for key in (
        f"watermark_timestamp_seconds{t}",
        'offload_rows_total{layer="bronze",table="trades"}',
        f"offload_commits_total{t}",
        f"offload_cold_rows{t}",
        f"offload_hot_rows{t}",
    ):
        assert second[key] == first[key], key
    assert second[f"offload_lag_seconds{t}"] >= first[f"offload_lag_seconds{t}"] + 1  # lag keeps growing


HOLDER = """
import sys, time
from iceberg_offload import config
from iceberg_offload.clickhouse.client import open_source
with open_source(config.load(sys.argv[1], env={}).source):
    print("held", flush=True)
    time.sleep(120)
"""


def test_scrape_never_waits_for_the_embedded_engine(offloaded):
    from iceberg_offload.ops.metrics import serve

    s = offloaded
    handle = serve(s)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, s.path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(1.5)  # several refreshes try the engine while it is held
        t0 = time.monotonic()
        values = scrape(s.metrics.port)
        waited = time.monotonic() - t0
        assert waited < 5  # lock_timeout_seconds is 20 here: a scrape that waited would take that long
        assert values['offload_hot_rows{table="trades"}'] == 1000  # served from the last refresh
        assert values["offload_source_up"] == 1  # busy is not down
    finally:
        holder.kill()
        holder.wait()
        handle.shutdown()
    # a refresh that was waiting for the engine has ended: nothing of the exporter opens it after shutdown
    # (the next test's engine at another path would be refused)
    assert not handle.refresher.is_alive()


def exported_names(values: dict[str, float]) -> set[str]:
    return {re.split(r"[{ ]", k)[0] for k in values}


def test_alert_rules_pass_promtool_and_only_use_exported_series(offloaded):
    from iceberg_offload.ops.metrics import serve

    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", "tests/iceberg-offload.test.yml"],
        capture_output=True,
        text=True,
        cwd=ROOT / "deploy" / "prometheus",
    )
    assert test.returncode == 0, test.stdout + test.stderr

    handle = serve(offloaded)
    try:
        names = exported_names(scrape(offloaded.metrics.port)) | {"up"}
    finally:
        handle.shutdown()
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    tested = (ROOT / "deploy" / "prometheus" / "tests" / "iceberg-offload.test.yml").read_text()
    required = {
        "IcebergOffloadSchedulerDown",
        "IcebergOffloadConsecutiveFailures",
        "IcebergOffloadLagElevated",
        "IcebergOffloadLagCritical",
        "IcebergOffloadWatermarkStale",
        "IcebergOffloadCycleSlow",
        "IcebergOffloadTTLRisk",
        "IcebergOffloadWorkerOffline",
        "IcebergOffloadSchedulePaused",
        "IcebergOffloadNoRecentRuns",
        "IcebergOffloadSourceDown",
        "IcebergOffloadCatalogDown",
    }
    assert required <= {r["alert"] for r in rules}
    seed = next(r for r in rules if r["alert"] == "IcebergOffloadSchedulerDown")
    assert seed["expr"].strip() == 'up{job="iceberg-scheduler"} == 0'
    for rule in rules:
        runbook = rule["annotations"]["runbook_url"]
        assert (ROOT / runbook).is_file(), f"{rule['alert']}: {runbook} does not exist"
        series = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[|>|<|=|\)|$|\s)", rule["expr"]))
        metrics = {m for m in series if m.startswith(("offload_", "watermark_")) or m == "up"}
        assert metrics and metrics <= names, f"{rule['alert']} queries {metrics - names}, never exported"
        for window in re.findall(r"\[(\d+)m\]", rule["expr"]):
            assert int(window) >= 30, f"{rule['alert']}: a [{window}m] window is shorter than two cycles"
        if "table" in rule["expr"] or any(
            m in rule["expr"] for m in ("offload_lag", "offload_ttl", "offload_consecutive", "offload_last")
        ):
            assert "$labels.table" in rule["annotations"]["summary"], f"{rule['alert']} summary lacks the table"
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test"
