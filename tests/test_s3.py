"""An S3 warehouse: moto's S3 server on 127.0.0.1 (tests/conftest.py `s3_server`, authentication enforced),
a bucket per test, the endpoint in the config and the credentials in the environment or in `_file` keys.
Offload and verify, kills and a lost commit answer, every maintenance step, the hot + cold view read by
chdb's icebergS3, status, doctor and the exporter. What only AWS can show: docs/reliability.md "S3"."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from conftest import S3Server, clickhouse, cold, sink_for
from iceberg_offload.cli import demo
from iceberg_offload.cli import main as cli

pytestmark = pytest.mark.integration

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
    """Every object in the bucket: key -> LastModified."""
    out: dict[str, Any] = {}
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out |= {o["Key"]: o["LastModified"] for o in page.get("Contents", [])}
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
