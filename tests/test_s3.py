"""An S3 warehouse: moto's S3 server on 127.0.0.1 (tests/conftest.py `s3_server`, authentication enforced),
a bucket per test, the endpoint in the config and the credentials in the environment or in `_file` keys.
Offload and verify, kills and a lost commit answer, every maintenance step, the hot + cold view read by
chdb's icebergS3, status, doctor and the exporter. What only AWS can show: docs/reliability.md "S3"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pyarrow.compute as pc
import pytest

from conftest import (
    TRADES_DDL,
    S3Server,
    _free_port,
    clickhouse,
    cold,
    insert_trades,
    sink_for,
    trades_table,
    warehouse_files,
)
from iceberg_offload import config, names
from iceberg_offload.cli import demo
from iceberg_offload.cli import main as cli
from iceberg_offload.maintenance.orphans import orphans, referenced_files
from iceberg_offload.ops.metrics import Exporter
from test_exactly_once import CRASHER

pytestmark = pytest.mark.integration
DAY = 86400
START_MS = (int(time.time()) - 4 * 3600) * 1000

BRONZE = {
    "source": "bronze_trades_binance",
    "layer": "bronze",
    "timestamp_column": "exchange_timestamp",
    "sequence_column": "sequence_number",
    "partition_by": "day",
}
SILVER = {
    "source": "silver_trades",
    "layer": "silver",
    "timestamp_column": "exchange_timestamp",
    "sequence_column": "sequence_number",
    "partition_by": "day",
}
OHLCV = {
    "source": "ohlcv_1m",
    "layer": "gold",
    "timestamp_column": "window_start",
    "partition_by": "day",
    "final": True,
    "closed_after_seconds": 60,
    "key_columns": ["window_start", "exchange", "symbol"],
}


def run_cli(capsys, *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = cli.main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def s3_settings(make_settings, server: S3Server, bucket: str, tables: list[dict[str, Any]], **kw: Any):
    props = {"s3.endpoint": server.endpoint, **kw.pop("catalog_properties", {})}
    return make_settings(tables, warehouse=f"s3://{bucket}/warehouse", catalog_properties=props, **kw)


def objects(server: S3Server, bucket: str) -> dict[str, Any]:
    """Every object in the bucket but directory markers: key -> LastModified. Arrow's S3 file system puts an
    empty `<folder>/` object after each delete (it keeps the parent "directory"); they are no files."""
    out: dict[str, Any] = {}
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            if o["Key"].endswith("/"):
                assert o["Size"] == 0, o
            else:
                out[o["Key"]] = o["LastModified"]
    return out


@pytest.fixture
def demo_s3(make_settings, s3_env, s3_bucket, monkeypatch):
    """Demo tables (bronze trades, silver trades with arrays, maps, UUIDs and NULLs, FINAL candles) with
    20 minutes of trades, in a config whose warehouse is the test's bucket."""
    monkeypatch.setattr(demo, "FIRST_SLICE_SECONDS", 1200)
    s = s3_settings(make_settings, s3_env, s3_bucket, [BRONZE, SILVER, OHLCV])
    with clickhouse(s) as ch:
        demo.create_tables(ch)
        demo.insert_slice(ch, time.time() - 300)
    return s


def test_offload_to_s3_lands_every_row_and_verify_compares_values(demo_s3, s3_env, s3_bucket, capsys):
    s = demo_s3
    code, run = run_cli(capsys, "run", "--config", s.path)
    assert code == 0 and run["ok"], run
    rows = {t["table"]: t["rows"] for t in run["tables"]}
    assert rows["bronze_trades_binance"] == 2400 and rows["silver_trades"] == 7200 and rows["ohlcv_1m"] > 0
    with clickhouse(s) as ch:
        for cfg in s.tables:
            final = " FINAL" if cfg.final else ""
            hot = int(ch.rows(f"SELECT count() FROM k2.{cfg.source}{final}")[0][0])
            assert cold(s, cfg.target).num_rows == hot == rows[cfg.target], cfg.target
    keys = objects(s3_env, s3_bucket)
    for cfg in s.tables:  # data and metadata are objects in the bucket, under the table's location
        table = sink_for(s).load(cfg.target)
        assert table.location() == f"s3://{s3_bucket}/warehouse/cold/{cfg.target}"
        prefix = table.location().removeprefix(f"s3://{s3_bucket}/")
        assert any(k.startswith(f"{prefix}/data/") and k.endswith(".parquet") for k in keys)
        assert table.metadata_location.removeprefix(f"s3://{s3_bucket}/") in keys
    code, verify = run_cli(capsys, "verify", "--values", "--config", s.path)
    assert code == 0 and verify["ok"], verify


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_sigkill_on_s3_then_rerun_lands_every_row_once(make_settings, s3_env, s3_bucket, tmp_path, capsys, point):
    """test_exactly_once's crasher (SIGKILL before the commit, after it) on an S3 warehouse;
    what a killed writer left in the bucket is unreferenced, and orphans removes it past the safety age."""
    s = s3_settings(
        make_settings, s3_env, s3_bucket, [trades_table()], max_rows_per_commit=2000, batch_rows=1000, read_rows=1000
    )
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades") + " SETTINGS index_granularity = 256")
        insert_trades(ch, "trades", START_MS, 6000, step_ms=100)
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the AWS_* keys of s3_env included
    crashed = subprocess.run(
        [sys.executable, str(script), point, s.path], env=env, capture_output=True, text=True, timeout=300
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    before = sink_for(s).load("trades")
    assert (before.scan().to_arrow().num_rows if before is not None else 0) == (2000 if point == "after_commit" else 0)
    code, run = run_cli(capsys, "run", "--config", s.path)
    assert code == 0 and run["tables"][0]["rows"] == (4000 if point == "after_commit" else 6000), run
    _exactly_once(s, 6000)
    code, verify = run_cli(capsys, "verify", "--config", s.path)
    assert code == 0 and verify["ok"], verify
    sink = sink_for(s)
    table = sink.load("trades")
    left = warehouse_files(table) - referenced_files(table)  # what the killed writer wrote and never committed
    assert any(p.endswith(".parquet") for p in left) == (point == "before_commit"), left
    now = orphans(s, s.tables[0], sink, apply=True)
    assert now.deleted == 0 and now.too_young == len(left)
    later = orphans(s, s.tables[0], sink, apply=True, now=time.time() + 4 * DAY)
    assert {o["path"] for o in later.orphans} == left and later.deleted == len(left)
    assert warehouse_files(table) == referenced_files(table) & warehouse_files(table)
    _exactly_once(s, 6000)


def _exactly_once(s, n: int) -> None:
    seqs = cold(s, "trades").column("seq")
    assert len(seqs) == n and pc.count_distinct(seqs).as_py() == n, f"{len(seqs)} rows, want {n} distinct"


def test_every_maintenance_step_on_s3(make_settings, s3_env, s3_bucket, capsys):
    """maintain reconcile, compact, expire and orphans --yes on an S3 warehouse: late rows added, small
    files compacted, snapshots expired, and orphans listed from the bucket's real objects, kept while younger
    than the safety age, and only they deleted once older."""
    s = s3_settings(make_settings, s3_env, s3_bucket, [trades_table()], max_rows_per_commit=50)
    with open(s.path, "a") as f:
        f.write("\n[maintenance]\nsnapshot_retention_days = 0.00001\nkeep_last_snapshots = 1\n")
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 500, step_ms=27_000)  # 3.75 hours, 10 commits of 50 rows
    code, run = run_cli(capsys, "run", "--config", s.path)
    assert code == 0 and run["tables"][0]["commits"] == 10, run
    with clickhouse(s) as ch:  # late rows behind the watermark, at timestamps already offloaded
        insert_trades(ch, "trades", START_MS + 500, 20, seq0=10_000)

    def step(name: str) -> dict[str, Any]:
        code, out = run_cli(capsys, "maintain", name, "--yes", "--config", s.path)
        assert code == 0 and out["ok"], out
        result = out["tables"][0]["steps"][name]
        assert result["error"] is None and (result["applied"] or name == "orphans"), result
        return result

    assert step("reconcile")["rows_added"] == 20
    _exactly_once(s, 520)
    compacted = step("compact")
    assert compacted["files_rewritten"] >= 5 and compacted["data_files_after"] < compacted["data_files_before"]
    expired = step("expire")
    assert expired["snapshots_after"] <= 2 < expired["snapshots_before"] and expired["expired"], expired
    table = sink_for(s).load("trades")
    prefix = f"{s3_bucket}/"
    in_bucket = {prefix + k for k in objects(s3_env, s3_bucket) if k.startswith("warehouse/cold/trades/")}
    unreferenced = in_bucket - referenced_files(table)
    assert any(p.endswith(".parquet") for p in unreferenced)  # the compacted files, no longer referenced
    young = step("orphans")  # the safety age (3 days): every orphan is too young
    assert young["files_listed"] == len(in_bucket) and young["too_young"] == len(unreferenced), young
    assert young["deleted"] == 0 and young["orphans"] == []
    assert {prefix + k for k in objects(s3_env, s3_bucket)} >= in_bucket
    old = orphans(s, s.tables[0], sink_for(s), apply=True, now=time.time() + 4 * DAY)
    assert {o["path"] for o in old.orphans} == unreferenced and old.deleted == len(unreferenced)
    left = {prefix + k for k in objects(s3_env, s3_bucket)}
    assert left == in_bucket - unreferenced and referenced_files(table) <= left
    _exactly_once(s, 520)
    code, verify = run_cli(capsys, "verify", "--values", "--config", s.path)
    assert code == 0 and verify["ok"], verify


@pytest.mark.parametrize("credentials", ["environment", "secret_files"])
def test_view_reads_cold_rows_from_s3_without_credentials_in_its_ddl(
    make_settings, s3_env, s3_bucket, tmp_path, monkeypatch, capsys, credentials
):
    """`iceberg-offload view` on an S3 warehouse: chdb's icebergS3 reads the pinned metadata from the moto
    endpoint. With the keys in the environment the view names none (ClickHouse reads the environment);
    with them in `_file` keys of [catalog.properties] (and none in the environment) they go into a named
    collection, never into the view's DDL. Each row of either tier is read once."""
    props: dict[str, str] = {}
    if credentials == "secret_files":
        (tmp_path / "key-id").write_text(s3_env.access_key_id + "\n")
        (tmp_path / "secret").write_text(s3_env.secret_access_key + "\n")
        props = {"s3.access-key-id_file": "key-id", "s3.secret-access-key_file": "secret"}
    s = s3_settings(make_settings, s3_env, s3_bucket, [trades_table()], catalog_properties=props)
    if credentials == "secret_files":  # nothing in the environment: only the config's files can work
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 300)
    code, run = run_cli(capsys, "run", "--config", s.path)
    assert code == 0 and run["tables"][0]["rows"] == 300, run
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + 300_000, 100, seq0=300)  # hot only
    code, made = run_cli(capsys, "view", "--config", s.path)
    assert code == 0 and made["ok"], made
    with clickhouse(s) as ch:
        ddl = str(ch.rows("SELECT create_table_query FROM system.tables WHERE name = 'trades_all'")[0][0])
        assert "icebergS3(" in ddl and f"'{s3_env.endpoint}/{s3_bucket}/warehouse/cold/trades/'" in ddl, ddl
        assert s3_env.secret_access_key not in ddl and s3_env.access_key_id not in ddl, ddl
        assert ("icebergS3(offload_warehouse, url = " in ddl) == (credentials == "secret_files"), ddl
        # the TTL took the offloaded rows from the hot tier: only the cold branch (S3) can serve them now
        ch.command("ALTER TABLE k2.trades DELETE WHERE seq < 300 SETTINGS mutations_sync = 2")
        count, distinct, low = ch.rows("SELECT count(), uniqExact(seq), countIf(seq < 300) FROM k2.trades_all")[0]
    assert (int(count), int(distinct), int(low)) == (400, 400, 300)


def test_status_doctor_and_exporter_read_the_s3_warehouse(make_settings, s3_env, s3_bucket, monkeypatch, capsys):
    """status, doctor --engine-only (every metadata, manifest and data file present in the bucket) and the
    exporter's cold-side refresh against S3; a data object deleted from the bucket fails doctor naming it;
    with a wrong secret in the environment each says the warehouse refused access (terminal, not the catalog)."""
    s = s3_settings(make_settings, s3_env, s3_bucket, [trades_table()], max_rows_per_commit=100)
    with open(s.path, "a") as f:  # a Prefect API nobody serves: the exporter's Prefect side fails at once
        f.write(f'\n[prefect]\napi_url = "http://127.0.0.1:{_free_port()}/api"\n')
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 300)
    code, run = run_cli(capsys, "run", "--config", s.path)
    assert code == 0 and run["tables"][0]["commits"] == 3, run
    code, status = run_cli(capsys, "status", "--config", s.path)
    assert code == 0, status
    (st,) = status["tables"]
    assert (st["cold_rows"], st["hot_rows"], st["commits"], st["pending_rows"]) == (300, 300, 3, 0), st
    assert st["watermark"]["seq"] == 299
    code, report = run_cli(capsys, "doctor", "--engine-only", "--config", s.path)
    assert code == 0 and report["ok"], report
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert "3 data files of 1 tables present under s3://" in checks["warehouse"]["saw"], checks["warehouse"]

    exporter = Exporter(config.load(s.path))
    exporter.refresh(hot=False)
    samples = {(m.name, tuple(sorted(x.labels.items()))): x.value for m in exporter.collect() for x in m.samples}
    assert samples[(names.METRIC_CATALOG_UP, ())] == 1
    assert samples[(names.METRIC_COLD_ROWS, (("table", "trades"),))] == 300

    data = sorted(k for k in objects(s3_env, s3_bucket) if k.endswith(".parquet"))
    s3_env.client().delete_object(Bucket=s3_bucket, Key=data[0])  # a data file lost from the bucket
    code, report = run_cli(capsys, "doctor", "--engine-only", "--config", s.path)
    warehouse = next(c for c in report["checks"] if c["name"] == "warehouse")
    assert code == 1 and (warehouse["status"], warehouse["scenario"]) == ("fail", "warehouse lost"), warehouse
    assert data[0] in warehouse["saw"], warehouse

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # the bucket refuses every request now
    code, status = run_cli(capsys, "status", "--config", s.path)
    assert code == 1 and '"warehouse_error"' in json.dumps(status) and "refused access" in json.dumps(status), status
    code, report = run_cli(capsys, "doctor", "--engine-only", "--config", s.path)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and checks["warehouse"]["status"] == "fail" and "S3 credentials" in checks["warehouse"]["fix"]
    assert "refused access" in checks["warehouse"]["saw"] and checks["catalog"]["status"] == "ok", checks
    exporter.refresh(hot=False)  # the catalog answers (up); the table's error says the warehouse refused
    error = exporter.snap.tables["trades"].error
    assert exporter.snap.catalog_up == 1 and error["type"] == "warehouse_error" and not error["transient"], error
