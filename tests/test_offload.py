"""The engine against real chdb and real catalogs (SQLite and Postgres): windows, chunks, watermark."""

from __future__ import annotations

import time

from conftest import TRADES_DDL, clickhouse, cold, insert_trades, keys_of, sink_for, trades_table
from iceberg_offload.clickhouse.window import NS
from iceberg_offload.engine.offload import run_cycle

NOW_MS = (int(time.time()) - 3600) * 1000  # an hour ago: well outside any settle delay


def test_incremental_runs_offload_only_new_rows(make_settings, catalog_uri, source_dsn):
    s = make_settings([trades_table()], catalog_uri=catalog_uri, max_rows_per_commit=1000, dsn=source_dsn)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", NOW_MS, 2500)
    first = run_cycle(s, run_id="run-1").tables[0]
    assert (first.status, first.rows, first.commits) == ("ok", 2500, 3)
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", NOW_MS + 2500 * 1000, 700, seq0=2500)
    second = run_cycle(s, run_id="run-2").tables[0]
    assert (second.rows, second.commits) == (700, 1)
    tbl = cold(s, "trades")
    assert sorted(keys_of(tbl, "seq")) == [(i,) for i in range(3200)]

    sink = sink_for(s)
    history = sink.history(sink.load("trades"))
    assert [c.props["offload.run-id"] for c in history] == ["run-2"] + ["run-1"] * 3
    wm = history[0].watermark
    assert wm is not None and wm.seq == 3199 and wm.ts_ns == (NOW_MS + 3199 * 1000) * 1_000_000
    assert history[0].props["offload.rows"] == "700"
    # windows chain: each commit's lower bound is the previous commit's watermark
    for newer, older in zip(history, history[1:], strict=False):
        assert newer.props["offload.window.lower-ns"] == older.props["offload.watermark.ts-ns"]


def test_equal_timestamps_across_chunk_boundary_with_sequence(make_settings, catalog_uri, source_dsn):
    s = make_settings([trades_table()], catalog_uri=catalog_uri, max_rows_per_commit=7, dsn=source_dsn)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", NOW_MS, 30, step_ms=0)  # 30 rows, one timestamp
    res = run_cycle(s).tables[0]
    assert res.rows == 30 and res.commits == 5  # cut at (ts, seq), never inside an equal key
    assert sorted(keys_of(cold(s, "trades"), "seq")) == [(i,) for i in range(30)]


def test_equal_timestamps_without_sequence_stay_in_one_chunk(make_settings, catalog_uri, source_dsn):
    table = {"source": "trades", "timestamp_column": "ts", "key_columns": ["ts", "seq"]}
    s = make_settings([table], catalog_uri=catalog_uri, max_rows_per_commit=4, dsn=source_dsn)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        for i in range(3):  # 3 timestamps x 5 rows each
            insert_trades(ch, "trades", NOW_MS + i * 1000, 5, seq0=i * 5, step_ms=0)
    res = run_cycle(s).tables[0]
    assert res.rows == 15 and res.commits == 3  # each chunk takes all rows of its last timestamp
    assert sorted(keys_of(cold(s, "trades"), "seq")) == [(i,) for i in range(15)]
    with clickhouse(s) as ch:  # a late row at the watermark's timestamp is behind the watermark
        insert_trades(ch, "trades", NOW_MS + 2000, 1, seq0=99, step_ms=0)
    assert run_cycle(s).tables[0].rows == 0


def test_rows_exactly_at_watermark_and_empty_window(make_settings, catalog_uri, source_dsn):
    s = make_settings([trades_table()], catalog_uri=catalog_uri, dsn=source_dsn)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", NOW_MS, 10)
    assert run_cycle(s).tables[0].rows == 10
    empty = run_cycle(s).tables[0]
    assert (empty.status, empty.rows, empty.commits) == ("ok", 0, 0)
    with clickhouse(s) as ch:
        # same ts as the watermark row (seq 9): seq 10 is after it, seq 5 is a duplicate key at/behind it
        ch.command(f"INSERT INTO k2.trades VALUES (fromUnixTimestamp64Milli(toInt64({NOW_MS + 9000})), 10, 'X', 1)")
    res = run_cycle(s).tables[0]
    assert res.rows == 1 and res.watermark_after["seq"] == 10
    assert len(sink_for(s).history(sink_for(s).load("trades"))) == 2


def test_table_with_no_rows(make_settings, catalog_uri):
    s = make_settings([trades_table()], catalog_uri=catalog_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
    res = run_cycle(s).tables[0]
    assert (res.status, res.rows, res.commits, res.watermark_after) == ("ok", 0, 0, None)
    assert cold(s, "trades").num_rows == 0  # the table exists, empty, with the mapped schema
    assert cold(s, "trades").schema.names == ["ts", "seq", "symbol", "price"]


def test_settle_delay_and_closed_windows(make_settings, sqlite_uri, source_dsn):
    now_s = int(time.time())
    candles = {
        "source": "candles",
        "timestamp_column": "w",
        "key_columns": ["w", "sym"],
        "final": True,
        "closed_after_seconds": 3600,
        "layer": "gold",
        "partition_by": "month",
    }
    s = make_settings([trades_table(), candles], catalog_uri=sqlite_uri, settle_seconds=600, dsn=source_dsn)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", (now_s - 1200) * 1000, 1200)  # one row per second up to now
        ch.command(
            "CREATE TABLE k2.candles (w DateTime, sym String, vol UInt64) "
            "ENGINE = SummingMergeTree(vol) ORDER BY (w, sym)"
        )
        hour = now_s // 3600 * 3600
        for h in (hour - 3 * 3600, hour - 2 * 3600, hour - 3600, hour):
            ch.command(f"INSERT INTO k2.candles VALUES ({h}, 'BTC', 1), ({h}, 'BTC', 2), ({h}, 'ETH', 5)")
    res = {t.table: t for t in run_cycle(s, now_ns=now_s * NS).tables}
    # only rows at least settle_seconds old: one per second from now - 1200 to now - 600
    assert res["trades"].rows == 601
    assert max(cold(s, "trades").column("ts").to_pylist()).timestamp() <= now_s - 600
    # candles: FINAL merges the two BTC rows; only hours closed before now - settle
    got = sorted((r["w"].timestamp(), r["sym"], r["vol"]) for r in cold(s, "candles").to_pylist())
    closed = [h for h in (hour - 3 * 3600, hour - 2 * 3600, hour - 3600, hour) if h + 3600 <= now_s - 600]
    assert got == sorted([(float(h), "BTC", 3) for h in closed] + [(float(h), "ETH", 5) for h in closed])


def test_backlog_is_cut_into_commits_with_bounded_batches(make_settings, catalog_uri):
    s = make_settings([trades_table()], catalog_uri=catalog_uri, max_rows_per_commit=250_000, batch_rows=100_000)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", NOW_MS - 2_000_000 * 10, 2_000_000, step_ms=10)
    res = run_cycle(s).tables[0]
    assert (res.status, res.rows, res.commits) == ("ok", 2_000_000, 8)
    seqs = cold(s, "trades").column("seq")
    import pyarrow.compute as pc

    assert len(seqs) == 2_000_000 and pc.count_distinct(seqs).as_py() == 2_000_000
    sink = sink_for(s)
    history = sink.history(sink.load("trades"))
    assert sorted(int(c.props["offload.rows"]) for c in history) == [250_000] * 8


def test_window_query_uses_the_sort_key(make_settings, sqlite_uri):
    from iceberg_offload.clickhouse.window import Watermark, Window, chunk_query, plan_query
    from iceberg_offload.engine.plan import TablePlan

    s = make_settings([trades_table()], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades") + " SETTINGS index_granularity = 1024")
        insert_trades(ch, "trades", NOW_MS - 1_000_000 * 1000, 1_000_000)
        plan = TablePlan.build(ch, s.tables[0])
        lower = Watermark((NOW_MS - 5000 * 1000) * 1_000_000, 995_000)
        win = Window(lower, NOW_MS * 1_000_000)
        sql, _ = chunk_query(
            plan.info.qualified,
            False,
            plan.key,
            [c.select for c in plan.columns],
            win,
            Watermark(lower.ts_ns + 100 * NS, 995_100),
            plan.sort_columns,  # ordered as files are written: still reads only the window's granules
        )
        plan_sql = plan_query(plan.info.qualified, False, plan.key, win, 100, 10)
        explains = ["\n".join(r[0] for r in ch.rows("EXPLAIN indexes = 1 " + q)) for q in (sql, plan_sql)]
    for explain in explains:
        granules = [line.strip() for line in explain.splitlines() if line.strip().startswith("Granules:")]
        assert "PrimaryKey" in explain and granules, explain
        selected, total = map(int, granules[-1].split(":")[1].split("/"))
        assert selected <= 6 < total, explain  # a window of ~5000 rows reads a handful of ~977 granules


def test_a_cycle_pauses_the_cyclic_gc_and_gives_it_back(make_settings, sqlite_uri, monkeypatch):
    """run_cycle runs without the cyclic GC (its traversals cost ~5% of an offload) and leaves it as it was;
    without a progress bar it does not count the window first (a read of the backlog's key columns)."""
    import gc

    from iceberg_offload.clickhouse.client import Source

    s = make_settings([trades_table()], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", 1_767_225_600_000, 1_000)
    seen, sent = [], []
    rows = Source.rows
    monkeypatch.setattr(
        Source,
        "rows",
        lambda self, sql, *a, **k: (seen.append(gc.isenabled()), sent.append(sql), rows(self, sql, *a, **k))[2],
    )
    assert gc.isenabled()
    assert run_cycle(s).tables[0].rows == 1_000
    assert gc.isenabled() and seen and not any(seen)
    assert not [q for q in sent if q.startswith("SELECT count() FROM")], sent  # count_query
