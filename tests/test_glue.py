"""A Glue catalog: moto's Glue API (the same moto server as the S3 warehouse, tests/conftest.py `s3_server`,
signed requests enforced) with the warehouse on its S3. Offload, verify and an incremental run; a commit
that lost the race refused by Glue's optimistic version check (the catalog's compare-and-swap, on which
exactly-once rests), its files removed. What only AWS Glue can show: docs/reliability.md "Glue"."""

from __future__ import annotations

import time

import pytest

from conftest import TRADES_DDL, S3Server, clickhouse, cold, insert_trades, sink_for, trades_table
from iceberg_offload.cli import main as cli
from iceberg_offload.engine.offload import run_cycle
from test_exactly_once import assert_the_racing_loser_is_refused

pytestmark = pytest.mark.integration
START_MS = (int(time.time()) - 4 * 3600) * 1000


@pytest.fixture
def glue(make_settings, s3_bucket: str, s3_server: S3Server):
    def make(**kw):
        return make_settings(
            [trades_table()],
            catalog_type="glue",
            warehouse=f"s3://{s3_bucket}/warehouse",
            catalog_properties={"s3.endpoint": s3_server.endpoint, "glue.endpoint": s3_server.endpoint},
            namespace=f"cold_{s3_bucket[-8:]}",  # one Glue catalog per account and region: a database per test
            **kw,
        )

    return make


def test_glue_catalog_offloads_verifies_and_continues(glue, capsys):
    s = glue(max_rows_per_commit=1000)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 2500)
    first = run_cycle(s).tables[0]
    assert (first.status, first.rows, first.commits) == ("ok", 2500, 3), first.error
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + 2500 * 1000, 40, seq0=2500)
    assert run_cycle(s).tables[0].rows == 40  # from the watermark Glue's metadata location points at
    seqs = cold(s, "trades").column("seq").to_pylist()
    assert sorted(seqs) == list(range(2540))
    assert cli.main(["verify", "--values", "-c", s.path, "--json"]) == 0, capsys.readouterr().out
    table = sink_for(s).load("trades")
    assert table.metadata_location.startswith("s3://") and len(table.metadata.snapshots) == 4


def test_glue_refuses_a_commit_that_lost_the_race_and_its_files_go(glue):
    s = glue()
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 10)
    assert run_cycle(s).tables[0].rows == 10
    assert_the_racing_loser_is_refused(s)


def test_glue_refusing_the_credentials_is_a_config_error_naming_them(glue, monkeypatch, capsys):
    """Not `catalog_unavailable` (transient: retried with the same credentials, and a fix about the uri)."""
    s = glue()
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 10)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    res = run_cycle(s).tables[0]
    assert res.status == "failed" and res.error["type"] == "config", res.error
    assert "refused access" in res.error["message"] and "glue:GetTable" in res.error["fix"]
    assert cli.main(["status", "-c", s.path, "--json"]) == 1
    assert '"type": "config"' in capsys.readouterr().out
