"""End to end with Debian's Prometheus: a real worker's endpoint scraped every second, the alert rules
(with short `for`) firing and resolving, and every dashboard panel's query answered with data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import TRADES_DDL, insert_trades
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.engine.offload import run_cycle
from stackutil import (
    cli,
    cli_json,
    free_port,
    start_process,
    start_server,
    stop,
    stop_flow_runs,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "iceberg-offload.json"


def prom_query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def firing(port: int) -> dict[str, set[str]]:
    body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=10).read())
    out: dict[str, set[str]] = {}
    for a in body["data"]["alerts"]:
        if a["state"] == "firing":
            out.setdefault(a["labels"]["alertname"], set()).add(a["labels"].get("table", ""))
    return out


def test_alerts_fire_and_resolve_and_dashboard_queries_return_data(tmp_path):
    now = int(time.time())
    settings = write_config(
        tmp_path,
        [],
        extra_tables=[
            {"source": "trades", "layer": "bronze", "timestamp_column": "ts", "sequence_column": "seq"},
            {"source": "aging", "layer": "bronze", "timestamp_column": "ts", "sequence_column": "seq"},
        ],
    )
    metrics_port = settings.metrics.port
    env = {"OFFLOAD__METRICS__REFRESH_SECONDS": "1", "OFFLOAD__METRICS__HOT_REFRESH_SECONDS": "1"}
    with open_source(settings.source) as ch:
        ch.command("CREATE DATABASE IF NOT EXISTS k2")
        for name in ("trades", "aging"):
            # 400 days: longer than a row could wait under the harness's (never firing) yearly cron
            ch.command(TRADES_DDL.format(name=name) + " TTL toDateTime(ts) + INTERVAL 400 DAY")
        insert_trades(ch, "trades", (now - 3600) * 1000, 500)
    run_cycle(settings)  # trades offloaded; aging empty (no watermark yet)
    with open_source(settings.source) as ch:  # a row 400 days - 2.4 h old, not offloaded: the TTL deletes it soon
        ch.command(
            f"INSERT INTO k2.aging VALUES (fromUnixTimestamp64Milli(toInt64({(now - 34551360) * 1000})), 99, 'BTC', 1)"
        )

    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/iceberg-offload.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["for"] = "1s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(tmp_path / "rules.yml")],
                "scrape_configs": [
                    {"job_name": "iceberg-scheduler", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
                ],
            }
        )
    )

    server = start_server(settings, tmp_path / "server.log")
    procs = []
    try:
        cli(settings, "deploy")
        worker = start_process(settings, ["worker"], tmp_path / "worker.log", env=env)
        procs.append(worker)
        log = open(tmp_path / "prometheus.log", "ab")  # noqa: SIM115
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(prom)
        wait_for(lambda: prom_query(prom_port, 'up{job="iceberg-scheduler"} == 1'), 60, "the worker scraped")

        # TTL headroom small -> IcebergOffloadTTLRisk for that table only
        wait_for(lambda: "aging" in firing(prom_port).get("IcebergOffloadTTLRisk", set()), 60, "TTLRisk")
        assert "trades" not in firing(prom_port).get("IcebergOffloadTTLRisk", set())

        # pause the schedule -> IcebergOffloadSchedulePaused; resume -> resolved
        cli(settings, "schedule", "pause")
        wait_for(lambda: "IcebergOffloadSchedulePaused" in firing(prom_port), 60, "SchedulePaused")
        cli(settings, "schedule", "resume")
        wait_for(lambda: "IcebergOffloadSchedulePaused" not in firing(prom_port), 60, "SchedulePaused resolved")

        # offload the old row -> TTLRisk resolves
        run = cli_json(settings, "trigger", "--wait", timeout=240)
        assert run["state"] == "COMPLETED", run
        wait_for(lambda: "IcebergOffloadTTLRisk" not in firing(prom_port), 60, "TTLRisk resolved")

        # every dashboard panel's query parses and returns data (the variables at their defaults: the
        # provisioned datasource, All tables), on a grid that fits
        dash = json.loads(DASHBOARD.read_text())
        assert dash["uid"] == "iceberg-offload"
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        default_uid = variables["datasource"]["current"]["value"]
        table_query = variables["table"]["query"]["query"]
        tables = prom_query(prom_port, table_query.removeprefix("label_values(").split(",")[0])
        assert {r["metric"]["table"] for r in tables} == {"trades", "aging"}, table_query
        cells: set[tuple[int, int]] = set()
        for panel in dash["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & mine, f"panel {panel['title']} overlaps another"
            cells |= mine
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                expr = target["expr"].replace("$table", variables["table"]["allValue"])
                assert "$" not in expr, target["expr"]
                result = wait_for(lambda e=expr: prom_query(prom_port, e), 30, f"data for {expr}")
                assert result, expr
        provisioning = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
        assert provisioning["datasources"][0]["uid"] == default_uid == "prometheus-k2"

        # kill the worker -> IcebergOffloadSchedulerDown; start it again -> resolved
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        wait_for(lambda: "IcebergOffloadSchedulerDown" in firing(prom_port), 60, "SchedulerDown")
        procs.append(start_process(settings, ["worker"], tmp_path / "worker.log", env=env))
        wait_for(lambda: "IcebergOffloadSchedulerDown" not in firing(prom_port), 90, "SchedulerDown resolved")
    finally:
        for p in procs:
            stop(p)
        stop(server)
        stop_flow_runs(tmp_path)  # a flow run of the killed worker outlives it
