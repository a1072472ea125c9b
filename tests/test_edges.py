"""Exact values at the edges (issue 12): each test reproduces a case where a run said ok while Iceberg held
rows that were wrong, foreign, unreadable or missing, against real chdb and a SQLite catalog."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from conftest import clickhouse, cold, sink_for
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.engine import offload as offload_mod
from iceberg_offload.engine.compare import verify
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.engine.repair import reconcile_all

UTC = dt.UTC
NOW_MS = (int(time.time()) - 3 * 3600) * 1000
INT128_MAX = 2**127 - 1


def _hot(s, sql: str) -> list[tuple[Any, ...]]:
    with open_source(s.source) as ch:
        return ch.rows(sql)


def _table(name: str, ts: str = "ts", **extra: Any) -> dict[str, Any]:
    return {"source": name, "timestamp_column": ts, **extra}


# -- 1: a failed read hands nothing to the next query or table ----------------------------------------
def _two_int128_tables(ch, bad_in_a: bool = True) -> None:
    for t in "ab":
        ch.command(f"CREATE TABLE k2.{t} (ts DateTime64(3), v Int128) ENGINE = MergeTree ORDER BY ts")
    bad = f"toInt128('{INT128_MAX}')" if bad_in_a else "toInt128(number)"
    ch.command(
        f"INSERT INTO k2.a SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number)), "
        f"if(number = 200000, {bad}, toInt128(number)) FROM numbers(300000)"
    )
    ch.command(
        f"INSERT INTO k2.b SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number)), "
        f"toInt128(1000000000 + number) FROM numbers(300000)"
    )


def test_a_table_whose_read_fails_leaves_the_next_table_its_own_rows(make_settings, source_dsn):
    s = make_settings([_table("a"), _table("b")], dsn=source_dsn)
    with clickhouse(s) as ch:
        _two_int128_tables(ch)
    a, b = run_cycle(s).tables
    assert a.status == "failed" and a.error["type"] == "value_out_of_range", a.error
    assert b.status == "ok" and b.rows == 300000, b.error
    got = sorted(int(v) for v in cold(s, "b").column("v").to_pylist())
    assert got == list(range(1_000_000_000, 1_000_300_000))
    assert cold(s, "a").num_rows == 0


def test_after_a_failed_query_the_source_answers_the_next_query_exactly(make_settings, source_dsn):
    """The embedded handle keeps a failed query's partial output; whatever path the failure took, the next
    query of any kind returns its own rows (the handle is discarded on any error)."""
    s = make_settings([_table("a")], dsn=source_dsn)
    with clickhouse(s) as ch:
        _two_int128_tables(ch)
        failing = "SELECT CAST(toString(v) AS Decimal(38, 0)) AS x FROM k2.a"
        for read in (ch.arrow, ch.rows):
            with pytest.raises(Exception):  # noqa: B017 - any error; what matters is the next query
                read(failing)
            tbl = ch.arrow("SELECT toInt64(v) AS y FROM k2.b ORDER BY v LIMIT 3")
            assert tbl.column_names == ["y"] and tbl.column("y").to_pylist() == [10**9, 10**9 + 1, 10**9 + 2]
            with pytest.raises(Exception):  # noqa: B017
                read(failing)
            assert ch.rows("SELECT count(), min(toInt64(v)) FROM k2.b") == [(300000, 10**9)]


def test_a_result_short_of_rows_or_of_another_query_commits_nothing(make_settings, monkeypatch):
    """Each result is checked against what was asked: its aliases (a nonce per query) and, per commit, at
    least the rows the plan counted. A result that fails either check lands nothing."""
    from iceberg_offload.clickhouse.client import Source

    s = make_settings([_table("b")], max_rows_per_commit=100_000, read_rows=50_000)
    with clickhouse(s) as ch:
        _two_int128_tables(ch)
    real = Source._fetch_arrow
    for broken, kind in (
        (lambda t: t.slice(1), "result_mismatch"),
        (lambda t: t.rename_columns([f"x{i}" for i in range(t.num_columns)]), "result_mismatch"),
    ):

        def fetch(self, sql, broken=broken):
            tbl = real(self, sql)
            return broken(tbl) if "fromUnixTimestamp64Nano" in sql and "_o" in sql else tbl

        monkeypatch.setattr(Source, "_fetch_arrow", fetch)
        res = run_cycle(s).tables[0]
        assert res.status == "failed" and res.error["type"] == kind, res.error
        assert res.rows == 0 and cold(s, "b").num_rows == 0
    monkeypatch.setattr(Source, "_fetch_arrow", real)
    assert run_cycle(s).tables[0].rows == 300000


# -- 2: column names like our aliases ------------------------------------------------------------------
def test_columns_named_like_generated_aliases_keep_their_values(make_settings):
    cols = "c1 UInt32, c0 DateTime64(3), c2 UInt64, k String, rn Int32, b Int64, n UInt8, _o0 String, x Int8"
    s = make_settings([_table("odd", ts="c0", sequence_column="c2")])
    with clickhouse(s) as ch:
        ch.command(f"CREATE TABLE k2.odd ({cols}) ENGINE = MergeTree ORDER BY (c0, c2)")
        ch.command(
            f"INSERT INTO k2.odd SELECT number * 7, fromUnixTimestamp64Milli(toInt64({NOW_MS} + number * 1000)),"
            f" number, toString(number * 3), -number, number * 11, number % 200, 'o' || toString(number), "
            f"toInt8(number % 100) FROM numbers(500)"
        )
    res = run_cycle(s).tables[0]
    assert res.status == "ok" and res.rows == 500, res.error
    hot = _hot(s, "SELECT c1, toUnixTimestamp64Milli(c0), c2, k, rn, b, n, _o0, x FROM k2.odd ORDER BY c2")
    tbl = cold(s, "odd").sort_by("c2")
    got = [
        (r["c1"], int(r["c0"].timestamp() * 1000), r["c2"], r["k"], r["rn"], r["b"], r["n"], r["_o0"], r["x"])
        for r in tbl.to_pylist()
    ]
    assert got == [tuple(r) for r in hot]
    with clickhouse(s) as ch:  # a late row behind the watermark: verify and reconcile read the same names
        ch.command(
            f"INSERT INTO k2.odd VALUES (1, fromUnixTimestamp64Milli(toInt64({NOW_MS} + 1500)), 100000, "
            f"'late', 1, 2, 3, 'o', 4)"
        )
    v = verify(s)[0]
    assert v.error is None and v.missing == 1, v.as_dict()
    rec = reconcile_all(s, apply=True)[0]
    assert rec.ok and rec.rows_added == 1, rec.as_dict()
    late = [r for r in cold(s, "odd").to_pylist() if r["c2"] == 100000]
    assert [(r["c1"], r["k"], r["rn"], r["b"], r["n"], r["x"]) for r in late] == [(1, "late", 1, 2, 3, 4)]
    assert verify(s)[0].ok


def test_a_timestamp_column_named_like_an_alias_plans_and_reads(make_settings):
    for name in ("k", "b", "rn"):
        s = make_settings([_table(f"t_{name}", ts=name)])
        with clickhouse(s) as ch:
            ch.command(f"CREATE TABLE k2.t_{name} ({name} DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY {name}")
            ch.command(
                f"INSERT INTO k2.t_{name} SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number * 1000)), "
                f"number FROM numbers(100)"
            )
        res = run_cycle(s).tables[0]
        assert res.status == "ok" and res.rows == 100, (name, res.error)
        assert sorted(cold(s, f"t_{name}").column("v").to_pylist()) == list(range(100))
        v = verify(s)[0]
        assert v.ok and v.hot_rows == v.cold_rows == 100, (name, v.as_dict())


# -- 3: bytes that are not UTF-8 -----------------------------------------------------------------------
def _bytes_tables(ch) -> None:
    ch.command(
        "CREATE TABLE k2.raw (ts DateTime64(3), s String, lc LowCardinality(String)) ENGINE = MergeTree ORDER BY ts"
    )
    ch.command(
        f"INSERT INTO k2.raw SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number)), "
        f"if(number = 3, unhex('C328FF'), toString(number)), if(number = 4, unhex('FE'), 'lc') FROM numbers(10)"
    )
    ch.command("CREATE TABLE k2.nxt (ts DateTime64(3), v UInt8) ENGINE = MergeTree ORDER BY ts")
    ch.command(f"INSERT INTO k2.nxt SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number)), 1 FROM numbers(10)")


def test_invalid_utf8_is_refused_naming_column_and_opt_in_and_the_cycle_goes_on(make_settings, source_dsn):
    s = make_settings([_table("raw"), _table("nxt")], dsn=source_dsn)
    with clickhouse(s) as ch:
        _bytes_tables(ch)
    raw, nxt = run_cycle(s).tables
    assert raw.status == "failed" and raw.error["type"] == "value_out_of_range", raw.error
    text = raw.error["message"] + raw.error["fix"]
    assert "raw.s" in text and "UTF-8" in text and '"binary"' in text, text
    assert cold(s, "raw").num_rows == 0
    assert nxt.status == "ok" and nxt.rows == 10
    s = make_settings([_table("raw", target="raw_bin", column_types={"s": "binary", "lc": "binary"})], dsn=source_dsn)
    raw = run_cycle(s).tables[0]
    assert raw.status == "ok" and raw.rows == 10, raw.error
    tbl = cold(s, "raw_bin").sort_by("ts")
    assert tbl.schema.field("s").type in (pa.binary(), pa.large_binary())
    assert tbl.column("s").to_pylist()[3] == b"\xc3(\xff" and tbl.column("s").to_pylist()[5] == b"5"
    assert tbl.column("lc").to_pylist()[4] == b"\xfe"


def test_an_unexpected_error_in_one_table_does_not_end_the_cycle(make_settings, monkeypatch):
    s = make_settings([_table("raw"), _table("nxt")])
    with clickhouse(s) as ch:
        _bytes_tables(ch)
    real = offload_mod._offload

    def broken(settings, cfg, *args, **kw):
        if cfg.source == "raw":
            raise KeyError("a bug")
        return real(settings, cfg, *args, **kw)

    monkeypatch.setattr(offload_mod, "_offload", broken)
    raw, nxt = run_cycle(s).tables
    assert raw.status == "failed" and raw.error["type"] == "internal" and "KeyError" in raw.error["message"]
    assert nxt.status == "ok" and nxt.rows == 10


# -- 4 and 5: late rows at a timestamp that is already there; before 1970 ----------------------------
def _ts_only(make_settings, start_ms: int, dsn: str | None = None, **extra):
    s = make_settings([_table("ev", **extra)], dsn=dsn)
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.ev (ts DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY ts")
        ch.command(
            f"INSERT INTO k2.ev SELECT fromUnixTimestamp64Milli(toInt64({start_ms} + number * 10000)), number "
            f"FROM numbers(100)"
        )
    assert run_cycle(s).tables[0].rows == 100
    return s


@pytest.mark.parametrize("start_ms", [NOW_MS, -86400 * 1000 * 400], ids=["recent", "1968"])
def test_late_rows_at_present_timestamps_are_found_and_repaired(make_settings, start_ms, source_dsn):
    s = _ts_only(make_settings, start_ms, source_dsn)
    with clickhouse(s) as ch:  # three late rows at timestamps cold already holds
        ch.command(
            f"INSERT INTO k2.ev SELECT fromUnixTimestamp64Milli(toInt64({start_ms} + number * 10000)), 1000 + number "
            f"FROM numbers(3)"
        )
    v = verify(s)[0]
    assert v.error is None and (v.hot_rows, v.cold_rows, v.missing) == (103, 100, 3), v.as_dict()
    rec = reconcile_all(s, apply=True)[0]
    assert rec.ok and rec.applied and rec.rows_added == 3, rec.as_dict()
    assert sorted(cold(s, "ev").column("v").to_pylist()) == sorted([*range(100), 1000, 1001, 1002])
    assert verify(s)[0].ok


def test_late_rows_before_1970_at_new_timestamps_are_repaired(make_settings):
    start = -86400 * 1000 * 30  # December 1969
    s = _ts_only(make_settings, start)
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.ev VALUES (fromUnixTimestamp64Milli(toInt64({start + 5})), 7000)")
    v = verify(s)[0]
    assert v.error is None and v.missing == 1 and v.buckets_checked >= 1, v.as_dict()
    assert reconcile_all(s, apply=True)[0].rows_added == 1
    assert 7000 in cold(s, "ev").column("v").to_pylist() and verify(s)[0].ok


# -- 6: a config change that contradicts the stored watermark -------------------------------------------
def _seq_table(make_settings, **extra):
    s = make_settings([_table("tr", sequence_column="seq", **extra)])
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.tr (ts DateTime64(3), t2 DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq)"
        )
        ch.command(
            f"INSERT INTO k2.tr SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + intDiv(number, 5) * 1000)), "
            f"fromUnixTimestamp64Milli(toInt64({NOW_MS})), number FROM numbers(100)"
        )
    assert run_cycle(s).tables[0].rows == 100
    with clickhouse(s) as ch:  # rows after the watermark at its own timestamp, higher sequence
        ch.command(
            f"INSERT INTO k2.tr SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + 19000)), "
            f"fromUnixTimestamp64Milli(toInt64({NOW_MS})), 100 + number FROM numbers(5)"
        )
    return s


@pytest.mark.parametrize(
    "change,word",
    [
        ({"sequence_column": None}, "sequence_column"),
        ({"timestamp_column": "t2"}, "timestamp_column"),
    ],
)
def test_a_key_change_after_commits_is_refused_and_nothing_is_skipped(make_settings, change, word):
    s = _seq_table(make_settings)
    table = {k: v for k, v in {**_table("tr", sequence_column="seq"), **change}.items() if v is not None}
    if word == "timestamp_column":
        table["key_columns"] = ["t2", "seq"]
    changed = make_settings([table])
    res = run_cycle(changed).tables[0]
    assert res.status == "failed" and res.error["type"] == "config", res.error
    assert word in res.error["message"] and "watermark set" in res.error["fix"], res.error
    assert cold(s, "tr").num_rows == 100
    assert verify(changed)[0].error["type"] == "config"
    assert reconcile_all(changed, apply=True)[0].error["type"] == "config"
    s = make_settings([_table("tr", sequence_column="seq")])  # the original config goes on from the watermark
    assert run_cycle(s).tables[0].rows == 5 and cold(s, "tr").num_rows == 105


def test_dropping_the_sequence_column_is_refused_also_under_a_watermark_from_before_lineage(make_settings):
    """A watermark committed before the key was recorded beside it (an older version) still refuses a
    config without its sequence column: its `seq` says there was one."""
    s = _seq_table(make_settings)
    sink = sink_for(s)
    table = sink.load("tr")
    wm = sink.watermark(table)[0]
    sink.commit(table, iter(()), {**wm.to_props(), "offload.commit-id": "legacy/1"}, time.monotonic())
    res = run_cycle(make_settings([_table("tr")])).tables[0]
    assert res.status == "failed" and res.error["type"] == "config" and "sequence" in res.error["message"]
    assert cold(s, "tr").num_rows == 100


def test_a_source_change_after_commits_is_refused(make_settings):
    s = _seq_table(make_settings)
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.tr2 AS k2.tr")
        ch.command("INSERT INTO k2.tr2 SELECT * FROM k2.tr")
    res = run_cycle(make_settings([_table("tr2", target="tr", sequence_column="seq")])).tables[0]
    assert res.status == "failed" and res.error["type"] == "source_mismatch", res.error
    assert "k2.tr2" in res.error["message"].replace("`", "") and "k2.tr" in res.error["message"].replace("`", "")
    assert cold(s, "tr").num_rows == 100


def test_adding_a_sequence_column_after_commits_skips_nothing(make_settings):
    s = _ts_only(make_settings, NOW_MS)
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.ev VALUES (fromUnixTimestamp64Milli(toInt64({NOW_MS} + 990000 + 1)), 500)")
    res = run_cycle(make_settings([_table("ev", sequence_column="v")])).tables[0]
    assert res.status == "ok" and res.rows == 1, res.error
    assert sorted(cold(s, "ev").column("v").to_pylist()) == [*range(100), 500]


# -- 7: final tables: a value that changed after its window was offloaded -----------------------------
def test_a_grown_sum_in_a_final_table_is_found_by_value_and_repaired(make_settings):
    s = make_settings([_table("agg", final=True, key_columns=["ts", "k"])])
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.agg (ts DateTime, k String, total UInt64) ENGINE = SummingMergeTree ORDER BY (ts, k)"
        )
        ch.command(
            f"INSERT INTO k2.agg SELECT toDateTime(intDiv({NOW_MS}, 1000) + number * 60), 'x', number + 1 "
            f"FROM numbers(50)"
        )  # (a SummingMergeTree drops rows whose sums are all zero)
    assert run_cycle(s).tables[0].rows == 50
    with clickhouse(s) as ch:  # the sum of an offloaded key grows
        ch.command(f"INSERT INTO k2.agg VALUES (toDateTime(intDiv({NOW_MS}, 1000) + 600), 'x', 1000)")
    v = verify(s, values=True)[0]
    assert v.error is None and v.changed == 1 and not v.ok, v.as_dict()
    rec = reconcile_all(s, apply=True)[0]  # final tables compare values by default
    assert rec.ok and rec.applied and rec.rows_changed == 1, rec.as_dict()
    totals = sorted(r["total"] for r in cold(s, "agg").to_pylist())
    assert totals == sorted([*(n + 1 for n in range(50) if n != 10), 1011])
    assert verify(s, values=True)[0].ok


# -- 8: opt-ins never change a value silently ----------------------------------------------------------
def _one_column(make_settings, ddl: str, values: list[str], override: str | None, name: str = "oc"):
    extra = {"column_types": {"x": override}} if override else {}
    s = make_settings([_table(name, sequence_column="seq", **extra)])
    with clickhouse(s) as ch:
        ch.command(
            f"CREATE TABLE k2.{name} (ts DateTime64(3), seq UInt64, x {ddl}) ENGINE = MergeTree ORDER BY (ts, seq)"
        )
        rows = ", ".join(f"(fromUnixTimestamp64Milli(toInt64({NOW_MS})), {i}, {v})" for i, v in enumerate(values))
        ch.command(f"INSERT INTO k2.{name} VALUES {rows}")
    return s, run_cycle(s).tables[0]


def test_decimal_opt_in_refuses_lost_scale_and_keeps_exact_values(make_settings):
    _, res = _one_column(make_settings, "Decimal(76, 10)", ["'1.25'", "'1.2345678901'"], "decimal(38,2)")
    assert res.status == "failed" and res.error["type"] == "value_out_of_range", res.error
    text = res.error["message"] + res.error["fix"]
    assert "oc.x" in text and "1.2345678901" in text and "decimal(38,2)" in text, text
    s, res = _one_column(make_settings, "Decimal(76, 10)", ["'1.25'", "'-99.5'"], "decimal(38,2)", "oc2")
    assert res.status == "ok", res.error
    assert sorted(cold(s, "oc2").column("x").to_pylist()) == [Decimal("-99.50"), Decimal("1.25")]


@pytest.mark.parametrize(
    "ddl,value",
    [
        ("Int128", f"toInt128('{INT128_MAX}')"),
        ("UInt128", "toUInt128('340282366920938463463374607431768211455')"),
        ("Int256", "toInt256('-100000000000000000000000000000000000000')"),
    ],
)
def test_big_integers_beyond_38_digits_name_the_column_the_value_and_the_opt_in(make_settings, ddl, value):
    _, res = _one_column(make_settings, ddl, ["1", value], None)
    assert res.status == "failed" and res.error["type"] == "value_out_of_range", res.error
    text = res.error["message"] + res.error["fix"]
    want = value.split("'")[1]
    assert "oc.x" in text and want in text and '"string"' in text, text


def test_big_integers_within_38_digits_are_exact(make_settings):
    edge = "99999999999999999999999999999999999999"
    s, res = _one_column(make_settings, "Int256", [f"toInt256('-{edge}')", f"toInt256('{edge}')", "0"], None)
    assert res.status == "ok", res.error
    assert sorted(cold(s, "oc").column("x").to_pylist()) == [Decimal(f"-{edge}"), Decimal(0), Decimal(edge)]


def test_timestamp_opt_in_floors_before_1970(make_settings):
    s, res = _one_column(
        make_settings,
        "DateTime64(9, 'UTC')",
        ["'1969-12-31 23:59:59.999999999'", "'1900-01-01 00:00:00.000000001'", "'2026-01-01 00:00:00.123456789'"],
        "timestamp",
    )
    assert res.status == "ok", res.error
    assert sorted(cold(s, "oc").column("x").to_pylist()) == [
        dt.datetime(1900, 1, 1, tzinfo=UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
    ]


def test_long_opt_in_on_small_integers_is_a_long(make_settings):
    s, res = _one_column(make_settings, "Int8", ["-128", "127"], "long")
    assert res.status == "ok", res.error
    assert str(sink_for(s).load("oc").schema().find_field("x").field_type) == "long"
    assert sorted(cold(s, "oc").column("x").to_pylist()) == [-128, 127]


def test_long_opt_in_on_datetime64_refuses_values_beyond_nanosecond_range(make_settings):
    _, res = _one_column(make_settings, "DateTime64(3, 'UTC')", ["'2299-12-31 00:00:00'"], "long")
    assert res.status == "failed" and res.error["type"] == "value_out_of_range", res.error
    assert "oc.x" in res.error["message"] and "2299" in res.error["message"], res.error


# -- found in review: equal-looking buckets, foreign rows, and opt-ins the first fix missed --------------
def test_verify_is_not_fooled_by_buckets_whose_sums_agree(make_settings):
    """Duplicates at t1 and t3 in cold and two late rows at t2 = (t1 + t3) / 2 in hot: counts, distinct keys
    and timestamp sums agree; only comparing the keys themselves finds it."""
    import pyarrow.compute as pc

    s = make_settings([_table("t")])
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.t (ts DateTime64(3), v Int64) ENGINE = MergeTree ORDER BY ts")
        ch.command(
            f"INSERT INTO k2.t SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number * 1000)), number "
            f"FROM numbers(5)"
        )
    run_cycle(s)
    table = sink_for(s).load("t")
    rows = cold(s, "t")
    table.append(rows.filter(pc.is_in(rows.column("v"), pa.array([1, 3]))).cast(table.schema().as_arrow()))
    with clickhouse(s) as ch:
        ch.command(
            f"INSERT INTO k2.t VALUES (fromUnixTimestamp64Milli(toInt64({NOW_MS} + 2000)), 20), "
            f"(fromUnixTimestamp64Milli(toInt64({NOW_MS} + 2000)), 21)"
        )
    v = verify(s)[0]
    assert (v.missing, v.duplicates, v.ok) == (2, 2, False), v.as_dict()
    rec = reconcile_all(s, apply=True)[0]
    assert rec.applied and rec.rows_added == 2 and rec.duplicate_rows_removed == 2, rec.as_dict()
    assert sorted(cold(s, "t").column("v").to_pylist()) == [0, 1, 2, 3, 4, 20, 21] and verify(s)[0].ok


def test_verify_compares_every_key_column(make_settings):
    s = make_settings([_table("q", key_columns=["ts", "k"])])
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.q (ts DateTime64(3), k String, v UInt32) ENGINE = MergeTree ORDER BY (ts, k)")
        ch.command(
            f"INSERT INTO k2.q VALUES (fromUnixTimestamp64Milli(toInt64({NOW_MS})), 'BTC', 1), "
            f"(fromUnixTimestamp64Milli(toInt64({NOW_MS})), 'ETH', 2)"
        )
    run_cycle(s)
    table = sink_for(s).load("q")
    rows = cold(s, "q")
    table.append(rows.filter(pa.compute.equal(rows.column("k"), "BTC")))  # a duplicate BTC in cold
    with clickhouse(s) as ch:  # a late ETH at the same timestamp
        ch.command(f"INSERT INTO k2.q VALUES (fromUnixTimestamp64Milli(toInt64({NOW_MS})), 'ETH', 3)")
    v = verify(s)[0]
    assert (v.missing, v.duplicates) == (1, 1), v.as_dict()


def test_cold_rows_the_hot_tier_never_had_are_reported(make_settings):
    """Rows in cold whose key the hot tier does not hold (another source's, or deleted from ClickHouse) in an
    hour the TTL cannot have touched: verify says so; reconcile never deletes them."""
    s = _ts_only(make_settings, NOW_MS)
    table = sink_for(s).load("ev")
    foreign = cold(s, "ev").slice(0, 10)
    shifted = pa.table(
        {"ts": pa.compute.add(foreign.column("ts"), pa.scalar(1, pa.duration("us"))), "v": foreign.column("v")}
    ).cast(table.schema().as_arrow())
    table.append(shifted)
    v = verify(s)[0]
    assert not v.ok and v.extra == 10 and v.missing == 0, v.as_dict()
    rec = reconcile_all(s, apply=True)[0]
    assert not rec.applied and rec.buckets_skipped_cold_ahead >= 1 and cold(s, "ev").num_rows == 110


def test_string_opt_in_on_fixedstring_checks_utf8(make_settings):
    _, res = _one_column(make_settings, "FixedString(2)", ["'aa'", "unhex('62FF')", "'cc'"], "string")
    assert res.status == "failed" and res.error["type"] == "value_out_of_range", res.error
    assert "oc.x" in res.error["message"] and "UTF-8" in res.error["message"]


def test_a_refused_source_change_leaves_the_iceberg_table_as_it_was(make_settings):
    s = _seq_table(make_settings)
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.other (ts DateTime64(3), t2 DateTime64(3), seq UInt64, secret String) "
            "ENGINE = MergeTree ORDER BY (ts, seq)"
        )
    res = run_cycle(make_settings([_table("other", target="tr", sequence_column="seq")])).tables[0]
    assert res.status == "failed" and res.error["type"] == "source_mismatch"
    assert "secret" not in {f.name for f in sink_for(s).load("tr").schema().fields}
    assert run_cycle(make_settings([_table("tr", sequence_column="seq")])).tables[0].status == "ok"


@pytest.mark.parametrize(
    "ddl,override,values",
    [
        ("Int64", "decimal(18,0)", ["1", "-5"]),
        ("UInt32", "decimal(10,0)", ["4294967295", "0"]),
        ("Int16", "decimal(7,2)", ["-32768", "3"]),
        ("Nullable(Int32)", "decimal(12,3)", ["NULL", "7"]),
    ],
)
def test_decimal_opt_in_on_integers_keeps_values_that_fit(make_settings, ddl, override, values):
    s, res = _one_column(make_settings, ddl, values, override)
    assert res.status == "ok", res.error
    want = sorted(Decimal(v) for v in values if v != "NULL")
    assert sorted(v for v in cold(s, "oc").column("x").to_pylist() if v is not None) == want


def test_decimal_opt_in_on_an_integer_refuses_only_values_that_do_not_fit(make_settings):
    _, res = _one_column(make_settings, "Int64", ["1", "123456789"], "decimal(5,0)")
    assert res.status == "failed" and "123456789" in res.error["message"], res.error


def test_low_cardinality_big_integers_land_exactly(make_settings):
    edge = "99999999999999999999999999999999999999"
    s = make_settings([_table("lc", sequence_column="seq")])
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.lc (ts DateTime64(3), seq UInt64, x LowCardinality(Int128), "
            "y LowCardinality(Nullable(UInt128))) ENGINE = MergeTree ORDER BY (ts, seq) "
            "SETTINGS allow_suspicious_low_cardinality_types = 1"
        )
        ch.command(
            f"INSERT INTO k2.lc SETTINGS allow_suspicious_low_cardinality_types = 1 VALUES "
            f"(fromUnixTimestamp64Milli(toInt64({NOW_MS})), 1, -{edge}, NULL), "
            f"(fromUnixTimestamp64Milli(toInt64({NOW_MS})), 2, 5, {edge})"
        )
    res = run_cycle(s).tables[0]
    assert res.status == "ok", res.error
    rows = sorted(cold(s, "lc").to_pylist(), key=lambda r: r["seq"])
    assert [(r["x"], r["y"]) for r in rows] == [(Decimal(f"-{edge}"), None), (Decimal(5), Decimal(edge))]


def test_values_comparison_after_a_column_is_added(make_settings):
    s = make_settings([_table("ac", final=True)])
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.ac (ts DateTime64(3), v UInt32) ENGINE = ReplacingMergeTree ORDER BY ts")
        ch.command(
            f"INSERT INTO k2.ac SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number * 1000)), number "
            f"FROM numbers(50)"
        )
    run_cycle(s)
    with clickhouse(s) as ch:
        ch.command("ALTER TABLE k2.ac ADD COLUMN note String")
    v = verify(s)[0]  # before the next run: Iceberg lacks the column
    assert v.ok and v.values, v.as_dict()
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.ac VALUES (fromUnixTimestamp64Milli(toInt64({NOW_MS} + 60000)), 99, 'new')")
    assert run_cycle(s).tables[0].rows == 1
    v = verify(s)[0]  # older rows are NULL in cold by design, '' in ClickHouse
    assert v.ok and v.cold_rows == 51, v.as_dict()


# -- found in the second review ---------------------------------------------------------------------------
def test_null_in_a_key_column_matches_null(make_settings):
    s = make_settings([_table("nk", key_columns=["ts", "sym"])])
    h0 = NOW_MS // 3_600_000 * 3_600_000 - 5 * 3_600_000
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.nk (ts DateTime64(3), sym Nullable(String), v Int64) ENGINE = MergeTree ORDER BY ts"
        )
        ch.command(
            f"INSERT INTO k2.nk SELECT fromUnixTimestamp64Milli(toInt64({h0} + number * 360000)), "
            f"if(number % 10 = 3, NULL, toString(number)), number FROM numbers(20)"
        )
    run_cycle(s)
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.nk VALUES (fromUnixTimestamp64Milli(toInt64({h0 + 3_601_000})), 'late', 99)")
    v = verify(s)[0]
    assert (v.missing, v.extra, len(v.buckets_bad)) == (1, 0, 1), v.as_dict()
    rec = reconcile_all(s, apply=True)[0]
    assert rec.applied and rec.rows_added == 1 and verify(s)[0].ok, rec.as_dict()


def test_hours_a_ttl_emptied_out_of_order_are_not_reported(make_settings):
    """ClickHouse applies a TTL per part: newer hours can go before older ones. Rows cold holds there are
    expected where the TTL has passed (the same rule the repair uses), not a fault."""
    s = make_settings([_table("to", partition_by="hour")])
    h0 = (int(time.time()) // 3600 * 3600 - 28 * 3600) * 1000
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.to (ts DateTime64(3), v Int64) ENGINE = MergeTree PARTITION BY toStartOfHour(ts) "
            "ORDER BY ts TTL toDateTime(ts) + INTERVAL 10 DAY"
        )
        ch.command(
            f"INSERT INTO k2.to SELECT fromUnixTimestamp64Milli(toInt64({h0} + number * 60000)), number "
            f"FROM numbers(480)"
        )
    run_cycle(s)
    with clickhouse(s) as ch:
        ch.command(
            "ALTER TABLE k2.to MODIFY TTL toDateTime(ts) + INTERVAL 1 DAY SETTINGS materialize_ttl_after_modify = 0"
        )
        parts = [
            r[0]
            for r in ch.rows(
                "SELECT DISTINCT partition_id FROM system.parts WHERE database = 'k2' AND "
                "table = 'to' AND active ORDER BY partition_id"
            )
        ]
        for pid in parts[1:3]:
            ch.command(f"ALTER TABLE k2.to MATERIALIZE TTL IN PARTITION ID '{pid}' SETTINGS mutations_sync = 2")
    v = verify(s)[0]
    assert v.ok and v.extra == 120, v.as_dict()


def test_a_far_future_row_does_not_stop_verify(make_settings):
    s = make_settings([_table("ff")])
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.ff (ts DateTime64(3), v Int64) ENGINE = MergeTree ORDER BY ts")
        ch.command(
            f"INSERT INTO k2.ff SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number * 1000)), number "
            f"FROM numbers(100)"
        )
        ch.command("INSERT INTO k2.ff VALUES ('2290-01-01 00:00:00', -1)")
    assert run_cycle(s).tables[0].rows == 100
    v = verify(s)[0]
    assert v.ok and v.cold_rows == 100, v.as_dict()
    assert reconcile_all(s, apply=True)[0].error is None


def test_a_table_recreated_while_the_offload_runs_is_never_swept_into_cold(make_settings, monkeypatch):
    """The hot table is dropped and recreated with other rows between the offload's commit and its late-row
    sweep: the sweep plans it again and refuses the other table (`source_mismatch`) instead of adding its rows."""
    from iceberg_offload.iceberg.sink import Sink

    s = make_settings([_table("ev")])
    ddl = "CREATE TABLE k2.ev (ts DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY ts"
    with clickhouse(s) as ch:
        ch.command(ddl)
        ch.command(
            f"INSERT INTO k2.ev SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + number * 1000)), number FROM numbers(50)"
        )
    real = Sink.commit

    def commit_then_recreate(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        with clickhouse(s) as ch:
            ch.command("DROP TABLE k2.ev SYNC")
            ch.command(ddl)
            ch.command(
                f"INSERT INTO k2.ev SELECT fromUnixTimestamp64Milli(toInt64({NOW_MS} + 500 + number * 1000)), "
                f"1000 + number FROM numbers(50)"
            )
        return out

    monkeypatch.setattr(Sink, "commit", commit_then_recreate)
    res = run_cycle(s).tables[0]
    assert res.rows == 50 and res.late_rows_added == 0, res
    assert res.late_error is not None and res.late_error["type"] == "source_mismatch", res.late_error
    assert sorted(cold(s, "ev").column("v").to_pylist()) == list(range(50))
