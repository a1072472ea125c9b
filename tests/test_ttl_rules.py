"""TTL rules ClickHouse allows (issue 13, defect 9): the deadline of each waiting row from ClickHouse itself,
`DELETE WHERE` rules only for the rows they match; rows stamped beyond 2262 read without overflow."""

from __future__ import annotations

import time

from conftest import clickhouse
from iceberg_offload.offload import run_cycle
from iceberg_offload.status import status

DAY = 86400


def _rows(ch, table: str, days_ago: float, v: int, n: int = 5) -> None:
    ch.command(f"INSERT INTO k2.{table} SELECT now64(3) - toIntervalSecond({int(days_ago * DAY)}) + "
               f"toIntervalMillisecond(number), {v} FROM numbers({n})")


def test_a_delete_where_rule_counts_only_for_the_rows_it_matches(make_settings):
    s = make_settings([{"source": "cond", "timestamp_column": "ts"}], settle_seconds=0)
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.cond (ts DateTime64(3), v UInt8) ENGINE = MergeTree ORDER BY ts "
                   "TTL toDateTime(ts) + INTERVAL 30 DAY, toDateTime(ts) + INTERVAL 10 DAY DELETE WHERE v = 1")
        _rows(ch, "cond", 2, v=0)  # waiting rows no short rule matches: the 30-day rule deletes them
    st = status(s)[0]
    assert st.error is None, st.error
    assert 27.5 * DAY < st.ttl_headroom_seconds < 28.5 * DAY, st.ttl_headroom_seconds
    with clickhouse(s) as ch:
        _rows(ch, "cond", 1, v=1)  # younger, but the 10-day rule matches: it goes first
    st = status(s)[0]
    assert 8.5 * DAY < st.ttl_headroom_seconds < 9.5 * DAY, st.ttl_headroom_seconds
    assert run_cycle(s).tables[0].rows == 10  # the bound (every rule) is long enough to offload


def test_a_ttl_on_another_column_takes_the_earliest_waiting_row(make_settings):
    s = make_settings([{"source": "other", "timestamp_column": "ts"}], settle_seconds=0)
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.other (ts DateTime64(3), v UInt8, born DateTime) ENGINE = MergeTree "
                   "ORDER BY ts TTL born + INTERVAL 20 DAY")
        now = int(time.time())
        # the oldest row by ts was inserted late (born now); a younger one was born 15 days ago
        ch.command(f"INSERT INTO k2.other VALUES (now64(3) - INTERVAL 2 DAY, 0, {now}), "
                   f"(now64(3) - INTERVAL 1 DAY, 1, {now - 15 * DAY})")
    st = status(s)[0]
    assert 4.5 * DAY < st.ttl_headroom_seconds < 5.5 * DAY, (st.error, st.ttl_headroom_seconds)


def test_a_row_stamped_after_2262_does_not_break_status(make_settings):
    s = make_settings([{"source": "far", "timestamp_column": "ts"}], settle_seconds=0)
    with clickhouse(s) as ch:
        # (no TTL: toDateTime of a row after 2106 wraps, and ClickHouse's TTL then deletes it at once)
        ch.command("CREATE TABLE k2.far (ts DateTime64(6), v UInt8) ENGINE = MergeTree ORDER BY ts")
        ch.command("INSERT INTO k2.far VALUES (now64(6) - INTERVAL 1 HOUR, 0), ('2290-01-01 00:00:00', 1)")
    st = status(s)[0]
    assert st.error is None, st.error
    assert st.hot_rows == 2 and st.newest_hot.startswith("2290-01-01"), st.newest_hot
    assert run_cycle(s).tables[0].rows == 1  # the row from the future waits for its time
