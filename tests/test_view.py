"""The hot + cold view on the embedded engine: every row of either tier exactly once, across an offload,
pinned to the catalog's metadata file rather than the newest file in the folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from conftest import TRADES_DDL, clickhouse, cold, insert_trades, keys_of, sink_for, trades_table
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.maintenance.view import create_view, view_sql

H = 3600 * 1000
START_MS = (int(time.time()) // 3600 - 5) * H


@pytest.fixture
def trades(make_settings, tmp_path, monkeypatch):
    # chdb's icebergLocal reads only below the engine's user_files_path, which is the working directory
    monkeypatch.chdir(tmp_path)
    s = make_settings([trades_table()], max_rows_per_commit=1000)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 3000, step_ms=3600)
    assert run_cycle(s).tables[0].rows == 3000
    with clickhouse(s) as ch:  # the hot tier lost its first hour; 500 new rows are not offloaded yet
        ch.command(
            f"ALTER TABLE k2.trades DELETE WHERE ts < fromUnixTimestamp64Milli({START_MS + H}) "
            f"SETTINGS mutations_sync = 2"
        )
        insert_trades(ch, "trades", START_MS + 3 * H, 500, seq0=3000, step_ms=3600)
    return s


def _view(s) -> tuple[int, list[tuple[int]]]:
    with clickhouse(s) as ch:
        n = int(ch.rows("SELECT count() FROM k2.trades_all")[0][0])
        return n, [(int(r[0]),) for r in ch.rows("SELECT seq FROM k2.trades_all ORDER BY seq")]


def _union(s) -> list[tuple[int]]:
    with clickhouse(s) as ch:
        hot = {(int(r[0]),) for r in ch.rows("SELECT seq FROM k2.trades")}
    return sorted(hot | set(keys_of(cold(s, "trades"), "seq")))


def test_view_reads_each_row_of_both_tiers_once_across_an_offload(trades):
    s = trades
    with clickhouse(s) as ch:
        made = create_view(s, s.tables[0], sink_for(s), ch)
        assert "icebergLocal(" in made["sql"] and "iceberg_metadata_file_path" in made["sql"]
        assert made["watermark"]["seq"] == 2999
        described = dict((r[0], r[1]) for r in ch.rows("DESCRIBE k2.trades_all"))
    assert described == {
        "ts": "DateTime64(3)",
        "seq": "UInt64",
        "symbol": "LowCardinality(String)",
        "price": "Decimal(18, 8)",
    }
    expected = [(i,) for i in range(3500)]
    assert _union(s) == expected  # hour 0 only in cold, the last 500 rows only in hot
    assert _view(s) == (3500, expected)

    assert run_cycle(s).tables[0].rows == 500  # the watermark moves; the view still points at the old one
    assert _view(s) == (3500, expected)

    with clickhouse(s) as ch:
        again = create_view(s, s.tables[0], sink_for(s), ch)
        assert again["watermark"]["seq"] == 3499 and again["metadata_location"] != made["metadata_location"]
        # everything offloaded is now read from cold: deleting it from hot changes nothing
        ch.command("ALTER TABLE k2.trades DELETE WHERE seq < 3400 SETTINGS mutations_sync = 2")
        insert_trades(ch, "trades", START_MS + 4 * H, 7, seq0=3500, step_ms=1000)
    assert _view(s) == (3507, [(i,) for i in range(3507)])


def test_view_ignores_metadata_files_the_catalog_never_committed(trades):
    s = trades
    table = sink_for(s).load("trades")
    meta = Path(table.metadata_location.removeprefix("file://"))
    with clickhouse(s) as ch:
        create_view(s, s.tables[0], sink_for(s), ch)
        # a losing writer's metadata file, numbered above the committed one (here: the empty first version)
        first = sorted(meta.parent.glob("00000-*.metadata.json"))[0]
        shutil.copy(first, meta.parent / "00099-00000000-0000-0000-0000-000000000000.metadata.json")
        unpinned = int(ch.rows(f"SELECT count() FROM icebergLocal('{meta.parent.parent}')")[0][0])
        assert unpinned == 0  # what a view on the newest file would have served as cold
    assert _view(s) == (3500, [(i,) for i in range(3500)])


def test_without_offloads_the_view_is_the_hot_table(make_settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = make_settings([trades_table()])
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 10)
        sql = view_sql(s, s.tables[0], sink_for(s), ch)
        assert "UNION" not in sql and "iceberg" not in sql
        create_view(s, s.tables[0], sink_for(s), ch)
    assert _view(s) == (10, [(i,) for i in range(10)])


def test_view_serves_every_type_of_the_matrix_as_the_hot_table_does(make_settings, tmp_path, monkeypatch):
    """Every type of the type matrix (tests/test_typemap.py) read through the view's cold side equals the hot
    table's value, column by column (LowCardinality(Nullable(String)) once made the view invalid)."""
    from test_typemap import COLUMNS, ROW1, ROW2, _types_table

    monkeypatch.chdir(tmp_path)
    s = make_settings([_types_table()])
    with clickhouse(s) as ch:
        ch.command(f"CREATE TABLE k2.types ({COLUMNS}) ENGINE = MergeTree ORDER BY (ts, id)")
        ch.command(f"INSERT INTO k2.types VALUES {ROW1}, {ROW2}")
    res = run_cycle(s).tables[0]
    assert res.status == "ok" and res.rows == 2, res.error
    with clickhouse(s) as ch:
        made = create_view(s, s.tables[0], sink_for(s), ch)
        assert made["watermark"]["seq"] == 2  # both rows are served from Iceberg
        hot_types = dict((r[0], r[1]) for r in ch.rows("DESCRIBE k2.types"))
        assert dict((r[0], r[1]) for r in ch.rows("DESCRIBE k2.types_all")) == hot_types
        for col in hot_types:
            q = f"SELECT id, toString({col}) FROM k2.{{}} ORDER BY id"
            assert ch.rows(q.format("types_all")) == ch.rows(q.format("types")), col
        ch.command("TRUNCATE TABLE k2.types")  # now only Iceberg holds them: the view still serves both
        assert int(ch.rows("SELECT count() FROM k2.types_all")[0][0]) == 2
