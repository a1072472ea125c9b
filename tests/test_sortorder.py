"""The sort order: a table declares the prefix of ClickHouse's sorting key that every offload file is written
in (at most the watermark key), each file claims it only when sorted by it, and compaction keeps it."""

from __future__ import annotations

import time

import pyarrow.parquet as pq

from conftest import TRADES_DDL, clickhouse, insert_trades, sink_for, trades_table
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.maintenance.compact import compact

H = 3600 * 1000
START_MS = (int(time.time()) // 3600 - 30) * H  # yesterday and today: two day partitions


def _shuffled(ch, name: str) -> None:
    """Rows inserted out of order in several parts: ClickHouse must read them in order to write them so."""
    for part in (3, 0, 2, 1):
        insert_trades(ch, name, START_MS + part * 1000, 1500, seq0=part * 1_000_000, step_ms=60_000)


def _files(s, name: str) -> list:
    table = sink_for(s).load(name)
    return [t.file for t in table.scan().plan_files()]


def _sorted_by(path: str, cols: list[str]) -> bool:
    rows = pq.read_table(path.removeprefix("file://"), columns=cols).to_pylist()
    keys = [tuple(r[c] for c in cols) for r in rows]
    return keys == sorted(keys)


def test_files_are_written_and_declared_in_the_sort_keys_order(make_settings, sqlite_uri):
    s = make_settings([trades_table(partition_by="day")], catalog_uri=sqlite_uri, max_rows_per_commit=2500)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        _shuffled(ch, "trades")
    assert run_cycle(s).tables[0].commits >= 3
    table = sink_for(s).load("trades")
    order = table.sort_order()
    names = [table.schema().find_column_name(f.source_id) for f in order.fields]
    assert names == ["ts", "seq"] and all(f.direction.name == "ASC" for f in order.fields) and order.order_id
    files = _files(s, "trades")
    assert len(files) >= 4  # several commits, two partitions
    assert {f.sort_order_id for f in files} == {order.order_id}
    assert all(_sorted_by(f.file_path, ["ts", "seq"]) for f in files)

    compacted = compact(s, s.tables[0], sink_for(s), apply=True, target_file_bytes=64 << 20, min_files=2)
    assert compacted.status == "ok" and compacted.data_files_after < len(files)
    after = _files(s, "trades")
    assert {f.sort_order_id for f in after} == {order.order_id}
    assert all(_sorted_by(f.file_path, ["ts", "seq"]) for f in after)


def test_a_sorting_key_that_does_not_start_with_the_timestamp_declares_no_order(make_settings, sqlite_uri):
    s = make_settings([trades_table()], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades").replace("ORDER BY (ts, seq)", "ORDER BY (symbol, ts)"))
        _shuffled(ch, "trades")
    assert run_cycle(s).tables[0].status == "ok"
    assert not sink_for(s).load("trades").sort_order().fields
    assert {f.sort_order_id for f in _files(s, "trades")} == {None}


def test_a_table_created_unsorted_declares_the_order_from_its_next_offload(make_settings, sqlite_uri):
    """Tables made before the sort order existed: their files so far claim none, the next ones do."""
    s = make_settings([trades_table()], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 100)
    sink = Sink(open_catalog(s.catalog), s.catalog.namespace)
    from iceberg_offload.engine.plan import TablePlan
    from iceberg_offload.engine.typemap import iceberg_fields

    with clickhouse(s) as ch:
        plan = TablePlan.build(ch, s.tables[0])
    sink.ensure_table("trades", iceberg_fields(plan.columns), "day", "ts", evolve=True)  # as before: unsorted
    assert not sink_for(s).load("trades").sort_order().fields
    assert run_cycle(s).tables[0].rows == 100
    table = sink_for(s).load("trades")
    assert [table.schema().find_column_name(f.source_id) for f in table.sort_order().fields] == ["ts", "seq"]
    assert {f.sort_order_id for f in _files(s, "trades")} == {table.sort_order().order_id}
