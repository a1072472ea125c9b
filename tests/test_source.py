"""Arrow results from the embedded engine are read in place: they must stay whole after later queries
and after the source is closed."""

from __future__ import annotations

import gc

from conftest import TRADES_DDL, clickhouse, insert_trades, trades_table
from iceberg_offload.clickhouse.client import open_source


def test_arrow_results_outlive_later_queries_and_the_closed_source(make_settings, sqlite_uri):
    s = make_settings([trades_table()], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", 1_767_225_600_000, 50_000)
    with open_source(s.source) as src:
        assert src.embedded  # the in-place path, not clickhouse-connect's copy
        held = [
            src.arrow(
                f"SELECT seq, symbol, toString(seq) AS t FROM k2.trades WHERE seq >= {lo} "
                f"AND seq < {lo + 10_000} ORDER BY seq"
            )
            for lo in range(0, 50_000, 10_000)
        ]
        for _ in range(10):  # the engine reuses memory for new results
            src.arrow("SELECT seq * 7 AS x, repeat('x', 50) AS y FROM k2.trades")
    gc.collect()
    with open_source(s.source) as src:
        src.arrow("SELECT * FROM k2.trades")
    for n, table in enumerate(held):
        table.validate(full=True)
        assert table.column("seq").to_pylist() == list(range(n * 10_000, (n + 1) * 10_000))
        assert table.column("t").to_pylist() == [str(i) for i in range(n * 10_000, (n + 1) * 10_000)]
