"""Schema evolution by name: added columns flow into Iceberg; dropped or retyped ones stop the table."""

from __future__ import annotations

import time

from conftest import TRADES_DDL, clickhouse, cold, insert_trades, sink_for, trades_table
from iceberg_offload.engine.offload import run_cycle

START_MS = (int(time.time()) - 3 * 3600) * 1000


def _setup(make_settings, uri, **table):
    s = make_settings([trades_table(**table)], catalog_uri=uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 10)
    assert run_cycle(s).tables[0].rows == 10
    return s


def test_added_column_is_added_to_iceberg(make_settings, catalog_uri):
    s = _setup(make_settings, catalog_uri)
    with clickhouse(s) as ch:
        ch.command("ALTER TABLE k2.trades ADD COLUMN venue LowCardinality(String) DEFAULT 'x'")
        insert_trades(ch, "trades", START_MS + 10_000, 5, seq0=10)
    res = run_cycle(s).tables[0]
    assert (res.status, res.rows) == ("ok", 5), res.error
    field = sink_for(s).load("trades").schema().find_field("venue")
    assert str(field.field_type) == "string" and not field.required
    rows = cold(s, "trades").to_pylist()
    assert sorted((r["seq"], r["venue"]) for r in rows) == [(i, None) for i in range(10)] + [
        (i, "x") for i in range(10, 15)
    ]


def test_dropped_column_stops_the_table_and_writes_nothing(make_settings, sqlite_uri):
    s = _setup(make_settings, sqlite_uri)
    with clickhouse(s) as ch:
        ch.command("ALTER TABLE k2.trades DROP COLUMN symbol")
        insert_trades_no_symbol = (
            "INSERT INTO k2.trades (ts, seq, price) SELECT fromUnixTimestamp64Milli(toInt64("
            f"{START_MS + 20_000} + number)), 100 + number, 1 FROM numbers(3)"
        )
        ch.command(insert_trades_no_symbol)
    res = run_cycle(s).tables[0]
    assert res.status == "failed" and res.error["type"] == "schema_drift"
    assert "'symbol'" in res.error["message"] and "dropped" in res.error["message"]
    assert "columns = [...]" in res.error["fix"]
    assert cold(s, "trades").num_rows == 10


def test_retyped_column_stops_the_table(make_settings, sqlite_uri):
    s = _setup(make_settings, sqlite_uri)
    with clickhouse(s) as ch:
        ch.command("ALTER TABLE k2.trades MODIFY COLUMN price String")
        insert_trades(ch, "trades", START_MS + 10_000, 5, seq0=10)
    res = run_cycle(s).tables[0]
    assert res.status == "failed" and res.error["type"] == "schema_drift"
    assert "'price' is string in ClickHouse but decimal(18, 8) in Iceberg" in res.error["message"]
    assert cold(s, "trades").num_rows == 10


def test_explicit_columns_offload_only_those(make_settings, sqlite_uri):
    s = _setup(make_settings, sqlite_uri, columns=["ts", "seq", "price"])
    assert cold(s, "trades").schema.names == ["ts", "seq", "price"]
    with clickhouse(s) as ch:
        ch.command("ALTER TABLE k2.trades ADD COLUMN venue String DEFAULT 'x'")
        insert_trades(ch, "trades", START_MS + 10_000, 5, seq0=10)
    assert run_cycle(s).tables[0].rows == 5
    assert cold(s, "trades").schema.names == ["ts", "seq", "price"]
