"""A catalog that lists files the warehouse lacks (a deleted folder, a wrong mount, an emptied bucket) is
`warehouse_missing`, naming the file; and `doctor` without an orchestrator checks the engine alone.
Real chdb and a real SQLite catalog."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import TRADES_DDL, clickhouse, insert_trades, sink_for, trades_table
from iceberg_offload import config
from iceberg_offload.cli import main as cli

START_MS = (int(time.time()) - 3 * 3600) * 1000
ENGINE_CHECKS = ["clickhouse", "catalog", "table trades", "warehouse", "history"]


def run_cli(capsys, *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def offloaded(make_settings, sqlite_uri, monkeypatch):
    """30 rows offloaded in 3 commits; the metrics port is one nothing listens on."""
    s = make_settings([trades_table()], catalog_uri=sqlite_uri, max_rows_per_commit=10)
    Path(s.path).write_text(
        Path(s.path).read_text().replace("[offload]", f"[metrics]\nport = {_closed_port()}\n\n[offload]")
    )
    s = config.load(s.path, env={})
    for key in config.prefect_env(s):  # doctor sets them for this process: restore them after
        monkeypatch.setenv(key, os.environ.get(key, ""))
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 30)
    assert cli.main(["run", "--config", s.path]) == 0
    return s


def _location(s) -> Path:
    return Path(sink_for(s).load("trades").location().removeprefix("file://"))


def test_lost_metadata_file_is_warehouse_missing_in_run_status_and_doctor(offloaded, capsys):
    metadata = sink_for(offloaded).load("trades").metadata_location.removeprefix("file://")
    os.remove(metadata)
    capsys.readouterr()
    code, run = run_cli(capsys, "run", "--config", offloaded.path)
    err = run["tables"][0]["error"]
    assert code == 1 and run["tables"][0]["status"] == "failed"
    assert (err["type"], err["transient"]) == ("warehouse_missing", False), err
    assert metadata in err["message"] and "metadata file" in err["message"]
    assert "[catalog] warehouse" in err["fix"] and "docs/runbooks/warehouse-lost.md" in err["fix"]
    code, status = run_cli(capsys, "status", "--config", offloaded.path)
    assert code == 1 and status["tables"][0]["error"]["type"] == "warehouse_missing"
    assert metadata in status["tables"][0]["error"]["message"]
    code, report = run_cli(capsys, "doctor", "--config", offloaded.path)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and checks["catalog"]["status"] == "ok"
    assert checks["warehouse"]["status"] == "fail" and metadata in checks["warehouse"]["saw"]
    assert (report["scenario"], report["runbook"]) == ("warehouse lost", "docs/runbooks/warehouse-lost.md")
    from iceberg_offload.ops.metrics import Exporter

    exporter = Exporter(offloaded)
    exporter.refresh(hot=False)  # the catalog answers: not offload_catalog_up 0
    assert exporter.snap.catalog_up == 1 and exporter.snap.tables["trades"].error["type"] == "warehouse_missing"


def test_lost_manifest_list_fails_doctor_and_the_next_commit(offloaded, capsys):
    snap = sink_for(offloaded).load("trades").current_snapshot()
    manifest_list = snap.manifest_list.removeprefix("file://")
    os.remove(manifest_list)
    with clickhouse(offloaded) as ch:
        insert_trades(ch, "trades", START_MS + 60_000, 5, seq0=100)
    capsys.readouterr()
    code, report = run_cli(capsys, "doctor", "--config", offloaded.path)
    warehouse = next(c for c in report["checks"] if c["name"] == "warehouse")
    assert code == 1 and warehouse["status"] == "fail" and manifest_list in warehouse["saw"]
    assert "manifest list" in warehouse["saw"] and report["scenario"] == "warehouse lost"
    code, run = run_cli(capsys, "run", "--config", offloaded.path)
    err = run["tables"][0]["error"]
    assert code == 1 and (err["type"], err["transient"]) == ("warehouse_missing", False), err
    assert manifest_list in err["message"]
    assert len(sink_for(offloaded).load("trades").metadata.snapshots) == 3  # nothing committed


def test_lost_data_file_is_named_by_verify_and_run(offloaded, capsys):
    data = sorted((_location(offloaded) / "data").rglob("*.parquet"))[0]
    data.unlink()
    capsys.readouterr()
    code, verify = run_cli(capsys, "verify", "--config", offloaded.path)
    err = verify["tables"][0]["error"]
    assert code == 1 and not verify["ok"]
    assert (err["type"], err["transient"]) == ("warehouse_missing", False), err
    assert str(data) in err["message"] and "a data file" in err["message"]
    code, run = run_cli(capsys, "run", "--config", offloaded.path)  # the late-row sweep reads cold
    t = run["tables"][0]
    assert code == 1 and t["status"] == "failed" and t["error"]["type"] == "warehouse_missing"
    assert str(data) in t["error"]["message"]


def test_lost_data_file_fails_doctors_warehouse_check_naming_it(offloaded, capsys):
    files = sorted((_location(offloaded) / "data").rglob("*.parquet"))
    assert len(files) >= 2, files
    files[0].unlink()
    capsys.readouterr()
    code, report = run_cli(capsys, "doctor", "--config", offloaded.path)
    warehouse = next(c for c in report["checks"] if c["name"] == "warehouse")
    assert code == 1 and warehouse["status"] == "fail", warehouse
    assert str(files[0]) in warehouse["saw"] and "a data file" in warehouse["saw"], warehouse
    assert "docs/runbooks/warehouse-lost.md" in warehouse["fix"] and report["scenario"] == "warehouse lost"

    for f in files[1:]:
        f.unlink()
    code, report = run_cli(capsys, "doctor", "--config", offloaded.path)
    warehouse = next(c for c in report["checks"] if c["name"] == "warehouse")
    assert code == 1 and warehouse["status"] == "fail", warehouse
    assert f"{len(files)} of the {len(files)} data files" in warehouse["saw"], warehouse
    assert str(files[0]) in warehouse["saw"] and str(files[1]) in warehouse["saw"], warehouse


def test_doctor_without_a_stack_checks_the_engine_and_exits_0(offloaded, capsys):
    capsys.readouterr()
    code, report = run_cli(capsys, "doctor", "--config", offloaded.path)
    assert code == 0 and report["ok"] and report["scenario"] is None, report
    names = [c["name"] for c in report["checks"]]
    assert names == ["orchestrator", *ENGINE_CHECKS]
    assert all(c["status"] == "ok" for c in report["checks"])
    assert "not used" in report["checks"][0]["saw"] and "iceberg-offload up" in report["checks"][0]["saw"]

    # the state file of a stack that died: the stack is used here, and down
    stack = Path(offloaded.prefect.home).parent / "stack"
    stack.mkdir(parents=True)
    dead = {"pid": 2**22 + 12345, "restarts": 0, "started_at": 0}
    (stack / "state.json").write_text(
        json.dumps({"supervisor_pid": os.getpid(), "stopped": False, "children": {"server": dead, "worker": dead}})
    )
    code, report = run_cli(capsys, "doctor", "--config", offloaded.path)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and "orchestrator" not in checks and "prefect server" in checks
    assert (checks["processes"]["status"], checks["processes"]["scenario"]) == ("fail", "server down")
    assert all(checks[n]["status"] == "ok" for n in ENGINE_CHECKS)

    code, report = run_cli(capsys, "doctor", "--engine-only", "--config", offloaded.path)
    assert code == 0 and [c["name"] for c in report["checks"]] == ["orchestrator", *ENGINE_CHECKS]
    assert report["checks"][0]["saw"] == "not checked (--engine-only)"


def test_an_s3_warehouse_without_a_region_takes_the_environments_or_us_east_1_with_an_endpoint():
    """Without a region pyiceberg asks AWS where the bucket is (seconds, and wrong off AWS)."""
    from iceberg_offload.config import CatalogSettings
    from iceberg_offload.iceberg.catalog import access_denied, s3_region

    def region(warehouse: str, env: dict[str, str], **props: str) -> dict[str, str]:
        return s3_region(CatalogSettings(warehouse=warehouse, properties=props), env)

    endpoint = {"s3.endpoint": "http://minio:9000"}
    assert region("s3://b/w", {"AWS_REGION": "eu-west-1"}, **endpoint) == {"s3.region": "eu-west-1"}
    assert region("s3://b/w", {"AWS_DEFAULT_REGION": "eu-north-1"}) == {"s3.region": "eu-north-1"}
    assert region("s3://b/w", {}, **endpoint) == {"s3.region": "us-east-1"}
    assert region("s3://b/w", {}) == {}  # on AWS, pyiceberg finds the bucket's region
    assert region("s3://b/w", {"AWS_REGION": "eu-west-1"}, **{"s3.region": "ap-south-1"}) == {}
    assert region("file:///w", {"AWS_REGION": "eu-west-1"}) == {}
    assert access_denied(OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body."))
    assert not access_denied(OSError("AWS Error NETWORK_CONNECTION during HeadObject operation"))
