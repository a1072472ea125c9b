"""TTL rules ClickHouse allows (issue 13, defect 9): the deadline of each waiting row from ClickHouse itself,
`DELETE WHERE` rules only for the rows they match; rows stamped beyond 2262 read without overflow."""

from __future__ import annotations

import time

from conftest import clickhouse
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.ops.status import status

DAY = 86400


def _rows(ch, table: str, days_ago: float, v: int, n: int = 5) -> None:
    ch.command(
        f"INSERT INTO k2.{table} SELECT now64(3) - toIntervalSecond({int(days_ago * DAY)}) + "
        f"toIntervalMillisecond(number), {v} FROM numbers({n})"
    )


def test_a_delete_where_rule_counts_only_for_the_rows_it_matches(make_settings):
    s = make_settings([{"source": "cond", "timestamp_column": "ts"}], settle_seconds=0)
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.cond (ts DateTime64(3), v UInt8) ENGINE = MergeTree ORDER BY ts "
            "TTL toDateTime(ts) + INTERVAL 30 DAY, toDateTime(ts) + INTERVAL 10 DAY DELETE WHERE v = 1"
        )
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
        ch.command(
            "CREATE TABLE k2.other (ts DateTime64(3), v UInt8, born DateTime) ENGINE = MergeTree "
            "ORDER BY ts TTL born + INTERVAL 20 DAY"
        )
        now = int(time.time())
        # the oldest row by ts was inserted late (born now); a younger one was born 15 days ago
        ch.command(
            f"INSERT INTO k2.other VALUES (now64(3) - INTERVAL 2 DAY, 0, {now}), "
            f"(now64(3) - INTERVAL 1 DAY, 1, {now - 15 * DAY})"
        )
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


# Defect A: TTL rules ClickHouse accepts but a naive split misreads (the guard was switched off)
_WORDS = {  # table: (TTL clause, the bound the status must show)
    "rollup": (
        "toDateTime(ts) + INTERVAL 1 HOUR DELETE WHERE k = 'a', toDateTime(ts) + INTERVAL 30 DAY "
        "GROUP BY k SET v = max(v), w = sum(w)",
        "least(toDateTime(toDateTime(ts) + toIntervalHour(1)), toDateTime(toDateTime(ts) + toIntervalDay(30)))",
    ),
    "escaped": (
        "toDateTime(ts) + INTERVAL 1 HOUR WHERE k = 'it\\'s, ok', toDateTime(ts) + INTERVAL 30 DAY",
        "least(toDateTime(toDateTime(ts) + toIntervalHour(1)), toDateTime(toDateTime(ts) + toIntervalDay(30)))",
    ),
    "disk_word": (
        "toDateTime(ts) + INTERVAL 1 HOUR WHERE k = 'move to disk later'",
        "toDateTime(ts) + toIntervalHour(1)",
    ),
    "settings_word": (
        "toDateTime(ts) + INTERVAL 1 HOUR WHERE k = 'a SETTINGS b, c'",
        "toDateTime(ts) + toIntervalHour(1)",
    ),
}


def _kv_table(ch, name: str, ttl: str) -> None:
    ch.command(
        f"CREATE TABLE k2.{name} (ts DateTime64(3), k String, v UInt64, w UInt64) ENGINE = MergeTree "
        f"ORDER BY (k, ts) TTL {ttl}"
    )
    ch.command(f"INSERT INTO k2.{name} (ts, k, v, w) SELECT now64(3) - INTERVAL 10 MINUTE, 'a', 1, 1")


def test_a_short_ttl_behind_a_rollup_an_escaped_quote_or_a_keyword_in_a_string_is_refused(make_settings):
    s = make_settings([{"source": n, "timestamp_column": "ts"} for n in _WORDS], settle_seconds=7200)
    with clickhouse(s) as ch:
        for name, (ttl, _) in _WORDS.items():
            _kv_table(ch, name, ttl)
    ran = [(r.table, r.status, (r.error or {}).get("type")) for r in run_cycle(s).tables]
    assert ran == [(name, "failed", "ttl_too_short") for name in _WORDS], ran  # each one, not only the first
    shown = [(st.table, st.ttl, (st.error or {}).get("type"), st.ttl_headroom_seconds is not None) for st in status(s)]
    assert shown == [(name, bound, "ttl_too_short", True) for name, (_, bound) in _WORDS.items()], shown


def test_a_long_rollup_with_several_assignments_is_read_whole(make_settings):
    s = make_settings([{"source": "roll", "timestamp_column": "ts"}], settle_seconds=0)
    with clickhouse(s) as ch:
        _kv_table(
            ch,
            "roll",
            "toDateTime(ts) + INTERVAL 30 DAY GROUP BY k SET v = max(v), w = sum(w), "
            "toDateTime(ts) + INTERVAL 20 DAY DELETE WHERE k = 'x, `y` \\' z'",
        )
    st = status(s)[0]
    assert st.error is None, st.error
    assert (
        st.ttl == "least(toDateTime(toDateTime(ts) + toIntervalDay(30)), toDateTime(toDateTime(ts) + "
        "toIntervalDay(20)))"
    ), st.ttl
    assert 29.5 * DAY < st.ttl_headroom_seconds < 30.5 * DAY, st.ttl_headroom_seconds  # the 20-day rule spares 'a'
    assert run_cycle(s).tables[0].rows == 1


def test_the_ttl_clause_is_read_outside_literals():
    from iceberg_offload.clickhouse.ttl import NEVER
    from iceberg_offload.clickhouse.ttl import column_ttls as _column_ttls
    from iceberg_offload.clickhouse.ttl import ttl_expressions as _ttl_expressions

    head = "MergeTree ORDER BY (k, ts) TTL "
    hour, day = "toDateTime(ts) + toIntervalHour(1)", "toDateTime(ts) + toIntervalDay(30)"
    assert (
        _ttl_expressions(head + f"{day} GROUP BY k SET v = max(v), `w x` = sum(w), {hour} SETTINGS a = 1")
        == (f"least(toDateTime({day}), toDateTime({hour}))",) * 2
    )
    assert (
        _ttl_expressions(head + f"{hour} WHERE k = 'it\\'s, ok', {day}")[1]
        == f"least(toDateTime(if(k = 'it\\'s, ok', toDateTime({hour}), {NEVER})), toDateTime({day}))"
    )
    assert (
        _ttl_expressions(head + f"{hour} WHERE k = 'to volume x RECOMPRESS' SETTINGS index_granularity = 8192")[0]
        == hour
    )
    assert (
        _ttl_expressions(head + f"{hour} WHERE k = 'a GROUP BY b' GROUP BY k SET v = max(v)")[1]
        == f"if(k = 'a GROUP BY b', toDateTime({hour}), {NEVER})"
    )
    assert _ttl_expressions("MergeTree ORDER BY ts PARTITION BY concat('x TTL ', k) SETTINGS a = 1") == (None, None)
    assert _column_ttls(
        "CREATE TABLE k2.`t(` (`ts` DateTime64(3), `v w` UInt32 DEFAULT 3 COMMENT 'a TTL, b' "
        f"CODEC(ZSTD(1)) TTL {hour}, `x` Enum8('TTL' = 1) TTL {day} COMMENT 'c', `y` String, "
        "INDEX i x TYPE minmax GRANULARITY 1) ENGINE = MergeTree ORDER BY ts TTL " + day
    ) == (("v w", hour), ("x", day))


def test_a_short_ttl_on_another_column_is_refused(make_settings):
    s = make_settings([{"source": "born", "timestamp_column": "ts"}], settle_seconds=7200)
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.born (ts DateTime64(3), born DateTime) ENGINE = MergeTree ORDER BY ts "
            "TTL born + INTERVAL 1 HOUR"
        )
        ch.command("INSERT INTO k2.born SELECT now64(3) - INTERVAL 10 MINUTE, now() - INTERVAL 10 MINUTE")
    res = run_cycle(s).tables[0]
    assert res.status == "failed" and res.error["type"] == "ttl_too_short", res.error


def test_a_ttl_that_cannot_be_evaluated_is_refused_while_rows_wait(make_settings):
    import dataclasses

    import pytest

    from iceberg_offload.engine.plan import TablePlan
    from iceberg_offload.errors import TTLTooShort

    s = make_settings([{"source": "odd", "timestamp_column": "ts"}], settle_seconds=0)
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.odd (ts DateTime64(3), v UInt8) ENGINE = MergeTree ORDER BY ts")
        plan = TablePlan.build(ch, s.tables[0])
        odd = dataclasses.replace(plan, info=dataclasses.replace(plan.info, ttl="toDateTime(no_such) + 1"))
        assert odd.ttl_span(ch) is None  # an empty table: nothing to lose
        _rows(ch, "odd", 0.01, v=0)
        with pytest.raises(TTLTooShort, match="no_such.*could not be evaluated"):
            odd.ttl_span(ch)


# Defect B: a column TTL resets the column to its default at a merge: Iceberg would receive the default
def test_a_column_ttl_shorter_than_the_wait_is_refused(make_settings):
    s = make_settings([{"source": "col", "timestamp_column": "ts"}], settle_seconds=7200)
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.col (ts DateTime64(3), v UInt32 TTL toDateTime(ts) + INTERVAL 1 HOUR) "
            "ENGINE = MergeTree ORDER BY ts"
        )
        ch.command("INSERT INTO k2.col SELECT now64(3) - INTERVAL 10 MINUTE, 42")
    res = run_cycle(s).tables[0]
    assert res.status == "failed" and res.error["type"] == "ttl_too_short", res.error
    assert "column TTL of 'v'" in res.error["message"] and "MODIFY COLUMN `v`" in res.error["fix"], res.error
    st = status(s)[0]
    assert st.column_ttl == {"v": "toDateTime(ts) + toIntervalHour(1)"} and st.error["type"] == "ttl_too_short"
    assert 0.5 * 3600 < st.ttl_headroom_seconds < 3600, st.ttl_headroom_seconds


def test_a_long_column_ttl_is_accepted_and_counted_in_the_headroom(make_settings):
    s = make_settings([{"source": "col", "timestamp_column": "ts"}], settle_seconds=0)
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.col (ts DateTime64(3), v UInt32 TTL toDateTime(ts) + INTERVAL 3 DAY) "
            "ENGINE = MergeTree ORDER BY ts TTL toDateTime(ts) + INTERVAL 30 DAY"
        )
        _rows(ch, "col", 1, v=42)
    st = status(s)[0]
    assert st.error is None, st.error
    assert st.column_ttl == {"v": "toDateTime(ts) + toIntervalDay(3)"}, st.column_ttl
    assert 1.5 * DAY < st.ttl_headroom_seconds < 2.5 * DAY, st.ttl_headroom_seconds  # the column TTL comes first
    assert run_cycle(s).tables[0].rows == 5


def test_values_a_column_ttl_reset_are_not_repaired_into_iceberg(make_settings):
    from conftest import cold
    from iceberg_offload.engine.repair import reconcile_all

    s = make_settings([{"source": "reset", "timestamp_column": "ts"}], settle_seconds=0)
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.reset (ts DateTime64(3), v UInt32 TTL toDateTime(ts) + INTERVAL 3 HOUR) "
            "ENGINE = MergeTree ORDER BY ts"
        )
        ch.command(
            "INSERT INTO k2.reset SELECT now64(3) - INTERVAL 150 MINUTE + toIntervalSecond(number), 42 FROM numbers(10)"
        )
    assert run_cycle(s).tables[0].rows == 10  # 3 h is longer than a row waits here
    with clickhouse(s) as ch:
        ch.command("ALTER TABLE k2.reset MODIFY COLUMN v UInt32 TTL toDateTime(ts) + INTERVAL 1 HOUR")
        ch.command("OPTIMIZE TABLE k2.reset FINAL")  # the merge resets v to its default
        assert ch.rows("SELECT DISTINCT v FROM k2.reset") == [(0,)]
    rec = reconcile_all(s, apply=True, values=True)[0]
    assert rec.buckets_skipped_ttl >= 1 and rec.rows_changed == 10, rec.as_dict()
    assert set(cold(s, "reset").column("v").to_pylist()) == {42}  # the values written, not the defaults
