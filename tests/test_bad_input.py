"""Bad input: every mistake gets an error that names the problem and the fix, loses nothing and duplicates
nothing; once the input is fixed, the next offload lands every hot row exactly once."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io import pyarrow as pyarrow_io

from conftest import TRADES_DDL, _pg_admin, clickhouse, cold, insert_trades, sink_for, trades_table
from iceberg_offload import config
from iceberg_offload.cli import main as cli
from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.clickhouse.sql import quote
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.errors import SourceError, SourceUnavailable
from iceberg_offload.maintenance.orphans import referenced_files

NOW_S = int(time.time())
START_MS = (NOW_S - 3 * 3600) * 1000
NS = 1_000_000_000


# -- helpers ----------------------------------------------------------------------------------------------
def hot_keys(s, source: str, *cols: str) -> list[tuple[Any, ...]]:
    with open_source(s.source) as ch:
        return sorted(ch.rows(f"SELECT {', '.join(map(quote, cols))} FROM k2.{quote(source)}"))


def cold_keys(s, target: str, *cols: str) -> list[tuple[Any, ...]]:
    tbl = cold(s, target)
    return sorted(zip(*(tbl.column(c).to_pylist() for c in cols), strict=True))


def assert_exactly_once(s, source: str, target: str | None = None, key: tuple[str, ...] = ("seq",)) -> None:
    hot, got = hot_keys(s, source, *key), cold_keys(s, target or source, *key)
    assert len(set(hot)) == len(hot), "test data must have unique keys"
    assert got == hot, f"cold holds {len(got)} rows ({len(set(got))} distinct), hot {len(hot)}"


def run_cli(capsys, *argv: str) -> tuple[int, dict[str, Any], str]:
    code = cli.main([*argv, "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def trades(make_settings, uri=None, rows: int = 30, dsn: str | None = None, **offload):
    s = make_settings([trades_table()], catalog_uri=uri, dsn=dsn, **offload)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, rows)
    return s


def snapshots(s, target: str = "trades") -> int:
    table = sink_for(s).load(target)
    return 0 if table is None else len(table.metadata.snapshots)


# -- config -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad,want,fix",
    [
        (
            {"settle_second": 0},
            "unknown key tables[0].settle_second",
            "remove or rename settle_second in the [[tables]]",
        ),
        ({"timestamp_column": None}, "tables[0].timestamp_column is missing", "add timestamp_column = ..."),
        ({"final": "maybe"}, "tables[0].final = 'maybe'", "set tables[0].final to a valid value"),
    ],
)
def test_config_mistake_exits_2_names_the_key_then_the_fixed_config_lands_once(make_settings, capsys, bad, want, fix):
    s = trades(make_settings)
    good = Path(s.path).read_text()
    table = {k: v for k, v in {**trades_table(), **bad}.items() if v is not None}
    broken = (
        good.split("[[tables]]")[0] + "[[tables]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    )
    Path(s.path).write_text(broken)
    code, out, _ = run_cli(capsys, "run", "--config", s.path)
    assert code == 2 and out["ok"] is False
    err = out["error"]
    assert (err["type"], err["transient"]) == ("config", False)
    assert want in err["message"] and fix in err["fix"], err
    assert sink_for(s).load("trades") is None  # nothing started
    Path(s.path).write_text(good)
    code, out, _ = run_cli(capsys, "run", "--config", s.path)
    assert code == 0 and out["rows"] == 30
    assert_exactly_once(s, "trades")


def test_table_missing_in_clickhouse_fails_that_table_only(make_settings, capsys):
    s = make_settings([trades_table("trades"), trades_table("tardes")])
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 20)
    code, out, _ = run_cli(capsys, "run", "--config", s.path)
    assert code == 1 and out["status"] == "partial"
    ok, bad = out["tables"]
    assert (ok["status"], ok["rows"]) == ("ok", 20)
    assert bad["error"]["type"] == "source_error" and not bad["error"]["transient"]
    assert "k2.tardes does not exist in the database 'k2'" in bad["error"]["message"]
    assert "[[tables]] source" in bad["error"]["fix"]
    with clickhouse(s) as ch:  # the operator creates the table the config names
        ch.command(TRADES_DDL.format(name="tardes"))
        insert_trades(ch, "tardes", START_MS, 7)
    code, out, _ = run_cli(capsys, "run", "--config", s.path)
    assert code == 0 and [t["rows"] for t in out["tables"]] == [0, 7]
    assert_exactly_once(s, "trades")
    assert_exactly_once(s, "tardes")


def test_timestamp_column_that_is_not_a_time_names_the_time_columns(make_settings):
    s = trades(make_settings)
    bad = make_settings([trades_table(timestamp_column="symbol")])
    res = run_cycle(bad).tables[0]
    assert (
        res.error["type"] == "config" and "timestamp_column 'symbol' is LowCardinality(String)" in res.error["message"]
    )
    assert res.error["fix"] == "set timestamp_column to a DateTime or DateTime64 column: ts"
    assert sink_for(s).load("trades") is None
    assert run_cycle(s).tables[0].rows == 30
    assert_exactly_once(s, "trades")


def test_wrong_password_is_terminal_names_the_dsn_and_never_shows_the_password(make_settings, ch_http, capsys):
    """A real ClickHouse HTTP endpoint (tests/chserver.py) refusing a wrong password with code 516."""
    secret = "Hunter2-xyzzy"
    s = trades(make_settings, dsn=ch_http.dsn())
    good = Path(s.path).read_text()
    Path(s.path).write_text(good.replace(ch_http.dsn(), ch_http.dsn(password=secret)))
    with pytest.raises(SourceError) as caught:
        run_cycle(config.load(s.path, env={}))
    assert not caught.value.transient and "ClickHouse refused the credentials" in caught.value.message
    assert "516" in caught.value.message and "AUTHENTICATION_FAILED" in caught.value.message
    assert caught.value.fix == "fix the user or password in [source] dsn (or OFFLOAD__SOURCE__DSN)"
    outputs = [str(caught.value), repr(caught.value.args)]
    for argv in (
        ["run", "--config", s.path],
        ["run", "--config", s.path, "--json"],
        ["status", "--config", s.path, "--json"],
    ):
        code = cli.main(argv)
        out = capsys.readouterr()
        outputs += [out.out, out.err]
        assert code in (1, 2) and "516" in out.out + out.err
    assert cli.main(["run", "--config", s.path, "--json"]) == 2  # bad input, not an outage
    out = capsys.readouterr()
    assert json.loads(out.out)["error"]["type"] == "source_error"
    outputs += [out.out, out.err]
    assert not [o for o in outputs if secret in o]
    assert [q for q in ch_http.queries() if "AUTHENTICATION_FAILED" in (q["error"] or "")], "the server refused none"
    Path(s.path).write_text(good)
    assert run_cycle(config.load(s.path, env={})).tables[0].rows == 30
    assert_exactly_once(s, "trades")


# -- data -------------------------------------------------------------------------------------------------
def test_uint64_above_long_stops_at_the_watermark_and_the_opt_in_lands_everything(make_settings):
    table = {"source": "big", "timestamp_column": "ts", "sequence_column": "seq"}
    s = make_settings([table])
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.big (ts DateTime64(3), seq UInt64, v UInt64) ENGINE = MergeTree ORDER BY (ts, seq)")
        ch.command(
            f"INSERT INTO k2.big SELECT fromUnixTimestamp64Milli(toInt64({START_MS} + number * 1000)), number, "
            f"number FROM numbers(10)"
        )
    assert run_cycle(s).tables[0].rows == 10
    with clickhouse(s) as ch:
        ch.command(
            f"INSERT INTO k2.big VALUES (fromUnixTimestamp64Milli(toInt64({START_MS + 20_000})), 10, 7), "
            f"(fromUnixTimestamp64Milli(toInt64({START_MS + 21_000})), 11, 9223372036854775808)"
        )
    res = run_cycle(s).tables[0]
    assert res.error["type"] == "value_out_of_range" and "9223372036854775808" in res.error["message"]
    assert 'column_types = { v = "decimal(20,0)" }' in res.error["fix"] and "new target" in res.error["fix"]
    assert res.watermark_after == res.watermark_before and res.watermark_after["seq"] == 9
    assert cold(s, "big").num_rows == 10  # not even the row that fitted
    fixed = make_settings([{**table, "target": "big_v2", "column_types": {"v": "decimal(20,0)"}}])
    assert run_cycle(fixed).tables[0].rows == 12
    assert_exactly_once(fixed, "big", "big_v2", key=("seq", "v"))


def test_null_timestamp_stops_the_table_instead_of_leaving_rows_behind(make_settings):
    s = make_settings([{"source": "n", "timestamp_column": "ts", "sequence_column": "seq"}])
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.n (ts Nullable(DateTime64(3)), seq UInt64) ENGINE = MergeTree ORDER BY seq "
            "SETTINGS allow_nullable_key = 1"
        )
        ch.command(
            f"INSERT INTO k2.n SELECT if(number % 4 = 0, NULL, fromUnixTimestamp64Milli(toInt64({START_MS} + "
            f"number * 1000))), number FROM numbers(20)"
        )
    res = run_cycle(s).tables[0]
    assert res.status == "failed" and res.error["type"] == "value_out_of_range" and not res.error["transient"]
    assert "5 rows have NULL in ts" in res.error["message"] and "nothing was written" in res.error["message"]
    assert "UPDATE `ts` = ... WHERE `ts` IS NULL" in res.error["fix"]
    assert snapshots(s, "n") == 0
    with clickhouse(s) as ch:  # the fix the error names
        ch.command(
            f"ALTER TABLE k2.n UPDATE ts = fromUnixTimestamp64Milli(toInt64({START_MS} + seq * 1000)) "
            f"WHERE ts IS NULL SETTINGS mutations_sync = 2"
        )
    assert run_cycle(s).tables[0].rows == 20
    assert_exactly_once(s, "n")
    assert None not in cold(s, "n").column("ts").to_pylist()


def test_future_timestamps_wait_until_due_and_are_not_lost(make_settings):
    s = trades(make_settings, rows=10, settle_seconds=60)
    with clickhouse(s) as ch:  # an hour ahead: a clock-skewed producer
        insert_trades(ch, "trades", (NOW_S + 3600) * 1000, 5, seq0=100)
    first = run_cycle(s).tables[0]
    assert (first.status, first.rows) == ("ok", 10)
    assert first.watermark_after["seq"] == 9  # the watermark stops before them
    assert run_cycle(s, now_ns=(NOW_S + 1800) * NS).tables[0].rows == 0  # still not due
    with clickhouse(s) as ch:  # more rows meanwhile, between the two
        insert_trades(ch, "trades", (NOW_S + 600) * 1000, 3, seq0=50)
    later = run_cycle(s, now_ns=(NOW_S + 3600 + 120) * NS).tables[0]
    assert later.rows == 8
    assert_exactly_once(s, "trades")


def test_dropped_then_retyped_column_stop_and_each_named_fix_lands_every_row_once(make_settings):
    s = trades(make_settings, rows=10)
    assert run_cycle(s).tables[0].rows == 10
    with clickhouse(s) as ch:
        ch.command("ALTER TABLE k2.trades DROP COLUMN symbol")
        ch.command(
            f"INSERT INTO k2.trades (ts, seq, price) SELECT fromUnixTimestamp64Milli(toInt64({START_MS} + "
            f"(10 + number) * 1000)), 10 + number, 1 FROM numbers(5)"
        )
    res = run_cycle(s).tables[0]
    assert res.error["type"] == "schema_drift" and "'symbol'" in res.error["message"]
    assert cold(s, "trades").num_rows == 10
    # the fix it names: list the columns to keep
    kept = make_settings([trades_table(columns=["ts", "seq", "price"])])
    res = run_cycle(kept).tables[0]
    assert (res.status, res.rows) == ("ok", 5), res.error
    assert_exactly_once(kept, "trades")
    symbols = cold_keys(kept, "trades", "seq", "symbol")
    assert [sym for seq, sym in symbols if seq >= 10] == [None] * 5 and None not in [sym for seq, sym in symbols[:10]]
    with clickhouse(s) as ch:
        ch.command("ALTER TABLE k2.trades MODIFY COLUMN price Float64")
        ch.command(
            f"INSERT INTO k2.trades (ts, seq, price) SELECT fromUnixTimestamp64Milli(toInt64({START_MS} + "
            f"(20 + number) * 1000)), 20 + number, 0.5 FROM numbers(5)"
        )
    res = run_cycle(kept).tables[0]
    assert (
        res.error["type"] == "schema_drift"
        and "'price' is double in ClickHouse but decimal(18, 8)" in res.error["message"]
        and "target" in res.error["fix"]
    )
    moved = make_settings([trades_table(target="trades_v2", columns=["ts", "seq", "price"])])
    assert run_cycle(moved).tables[0].rows == 20
    assert_exactly_once(moved, "trades", "trades_v2")
    assert sorted(s for (s,) in cold_keys(kept, "trades", "seq")) == list(range(15))  # old target untouched


def test_decimal76_and_datetime64_9_key_refused_then_opted_in_exactly_once(make_settings):
    table = {"source": "wide", "timestamp_column": "ts", "partition_by": "hour"}
    s = make_settings([table], max_rows_per_commit=7, read_rows=3, batch_rows=3)
    with clickhouse(s) as ch:  # no sequence column: nanosecond-distinct timestamps are the key
        ch.command(
            "CREATE TABLE k2.wide (ts DateTime64(9, 'UTC'), id UInt32, d Decimal(76, 10)) "
            "ENGINE = MergeTree ORDER BY ts"
        )
        ch.command(
            f"INSERT INTO k2.wide SELECT fromUnixTimestamp64Nano(toInt64({START_MS * 1_000_000} + "
            f"intDiv(number, 4) * 1000 + number % 4)), number, "
            f"toDecimal256('1234567890123456789012345678901234567890123456789012345678901234.5', 10) + number "
            f"FROM numbers(40)"
        )
    res = run_cycle(s).tables[0]
    assert res.error["type"] == "type_refused" and "wide.ts: DateTime64(9, 'UTC')" in res.error["message"]
    assert 'column_types = { ts = "timestamp" }' in res.error["fix"]
    s = make_settings(
        [{**table, "column_types": {"ts": "timestamp"}}], max_rows_per_commit=7, read_rows=3, batch_rows=3
    )
    res = run_cycle(s).tables[0]
    assert res.error["type"] == "type_refused" and "wide.d: Decimal(76, 10)" in res.error["message"]
    assert 'column_types = { d = "string" }' in res.error["fix"]
    s = make_settings(
        [{**table, "column_types": {"ts": "timestamp", "d": "string"}}],
        max_rows_per_commit=7,
        read_rows=3,
        batch_rows=3,
    )
    res = run_cycle(s).tables[0]
    assert (res.rows, res.commits) == (40, 6)  # chunks of 7 keys, never splitting a key
    assert res.watermark_after["ts_ns"] == START_MS * 1_000_000 + 9000 + 3  # exact to the nanosecond
    with open_source(s.source) as ch:
        hot = sorted((int(i), str(d)) for i, d in ch.rows("SELECT id, toString(d) FROM k2.wide"))
    assert cold_keys(s, "wide", "id", "d") == hot


NASTY_TABLE = "we\"ird `tab'le` ü 表"
NASTY_COLS = {"ts": 't s"`ü', "seq": "se`q; --", "v": 'x"; DROP TABLE k2.other; --'}


def test_names_with_quotes_backticks_spaces_unicode_and_injection_touch_nothing_else(make_settings):
    table = {
        "source": NASTY_TABLE,
        "timestamp_column": NASTY_COLS["ts"],
        "sequence_column": NASTY_COLS["seq"],
        "key_columns": [NASTY_COLS["ts"], NASTY_COLS["seq"]],
    }
    s = make_settings([table, trades_table("other")], max_rows_per_commit=8)
    t, c = quote(NASTY_TABLE), {k: quote(v) for k, v in NASTY_COLS.items()}
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="other"))
        insert_trades(ch, "other", START_MS, 5)
        ch.command(
            f"CREATE TABLE k2.{t} ({c['ts']} DateTime64(3), {c['seq']} UInt64, {c['v']} String, "
            f'`a b` Tuple(`x y` Int32, `q"` String)) ENGINE = MergeTree ORDER BY ({c["ts"]}, {c["seq"]})'
        )
        ch.command(
            f"INSERT INTO k2.{t} SELECT fromUnixTimestamp64Milli(toInt64({START_MS} + number * 1000)), number, "
            f"'v\\'\"`' || toString(number), (toInt32(number), 'ü') FROM numbers(20)"
        )
    cycle = run_cycle(s)
    assert [(r.status, r.rows) for r in cycle.tables] == [("ok", 20), ("ok", 5)], [r.error for r in cycle.tables]
    assert_exactly_once(s, NASTY_TABLE, key=(NASTY_COLS["seq"], NASTY_COLS["v"]))
    assert cold(s, NASTY_TABLE).column("a b").to_pylist()[0].keys() == {"x y", 'q"'}
    with clickhouse(s) as ch:
        assert ch.rows("SELECT count() FROM k2.other") == [(5,)]
        assert sorted(r[0] for r in ch.rows("SELECT name FROM system.tables WHERE database = 'k2'")) == sorted(
            ["other", NASTY_TABLE]
        )
    assert_exactly_once(s, "other")
    assert sorted(sink_for(s).catalog.list_tables("cold")) == sorted([("cold", "other"), ("cold", NASTY_TABLE)])
    # a second cycle finds the watermark through the quoted names and adds nothing
    assert [r.rows for r in run_cycle(s).tables] == [0, 0]


# -- faults -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["driver", "socket"])
def test_clickhouse_gone_mid_chunk_is_transient_commits_nothing_and_the_rerun_lands_once(
    make_settings, monkeypatch, failure
):
    from clickhouse_connect.driver.exceptions import OperationalError

    s = trades(make_settings, rows=100, max_rows_per_commit=40, read_rows=10, batch_rows=10)
    real = None
    reads: list[int] = []

    def dying(self, *args, **kwargs):
        reads.append(1)
        if len(reads) == 6:  # the second chunk: its first batch is in hand, the next read dies
            raise (
                OperationalError("HTTPDriver for http://ch:8123 received ClickHouse error: connection reset")
                if failure == "driver"
                else ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
            )
        return real(self, *args, **kwargs)

    real = Source._fetch_arrow  # where rows cross from ClickHouse, embedded or over HTTP
    monkeypatch.setattr(Source, "_fetch_arrow", dying)
    res = run_cycle(s).tables[0]
    monkeypatch.undo()
    assert res.status == "failed" and res.error["type"] == "source_unavailable" and res.error["transient"]
    assert "unreachable" in res.error["message"] and "[source] dsn" in res.error["fix"]
    assert (res.rows, res.commits) == (40, 1)  # the first chunk landed, the broken one did not
    table = sink_for(s).load("trades")
    assert cold(s, "trades").num_rows == 40 and len(table.metadata.snapshots) == 1
    location = table.location().removeprefix("file://")
    on_disk = {str(p) for p in Path(location).rglob("*.parquet")}
    assert on_disk == {f for f in referenced_files(table) if f.endswith(".parquet")}  # nothing half-written left
    assert run_cycle(s).tables[0].rows == 60
    assert_exactly_once(s, "trades")


def test_source_unavailable_is_what_a_refused_connection_raises(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = config.SourceSettings(dsn=f"http://u:pw-secret@127.0.0.1:{port}/")
    with pytest.raises(SourceUnavailable) as caught, open_source(settings):
        pass
    assert "pw-secret" not in str(caught.value) and "[source] dsn" in caught.value.fix


@pytest.mark.integration
@pytest.mark.parametrize("catalog_uri", ["postgres"], indirect=True)
@pytest.mark.parametrize("when", ["before_landing", "after_landing"])
def test_catalog_database_gone_during_commit_settles_by_commit_id(make_settings, catalog_uri, monkeypatch, when):
    database = catalog_uri.rsplit("/", 1)[1]
    s = trades(make_settings, catalog_uri, rows=50)
    assert run_cycle(s).tables[0].rows == 50
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + 50_000, 30, seq0=50)
    admin = _pg_admin()

    def database_gone() -> None:  # refuse new sessions and end the open ones: the database is gone
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

    real = SqlCatalog.commit_table

    def commit(self, *args):
        if when == "after_landing":
            real(self, *args)
        database_gone()
        return real(self, *args)  # on a terminated connection: the real driver error

    monkeypatch.setattr(SqlCatalog, "commit_table", commit)
    try:
        res = run_cycle(s).tables[0]
    finally:
        monkeypatch.undo()
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        admin.close()
    assert res.status == "failed" and res.error["transient"], res.error
    assert res.error["type"] == "commit_outcome_unknown"
    assert "outcome unknown" in res.error["message"] and "settling it failed too" in res.error["message"]
    assert "not currently accepting connections" in res.error["message"]
    assert "next run settles it by its commit id" in res.error["fix"] and "[catalog] uri" in res.error["fix"]
    rerun = run_cycle(s).tables[0]
    assert (rerun.status, rerun.rows) == ("ok", 0 if when == "after_landing" else 30), rerun.error
    assert_exactly_once(s, "trades")
    history = sink_for(s).history(sink_for(s).load("trades"))
    assert len(history) == 2 and len({c.props["offload.commit-id"] for c in history}) == 2


def test_warehouse_under_a_regular_file_is_terminal_and_names_the_path(make_settings, tmp_path, capsys):
    s = trades(make_settings, rows=10)
    good = Path(s.path).read_text()
    (tmp_path / "not-a-dir").write_text("a file")
    bad_wh = f"file://{tmp_path}/not-a-dir/warehouse"
    Path(s.path).write_text(good.replace(f'warehouse = "file://{tmp_path}/warehouse"', f'warehouse = "{bad_wh}"'))
    code, out, _ = run_cli(capsys, "run", "--config", s.path)
    assert code == 1
    err = out["tables"][0]["error"]
    assert (err["type"], err["transient"]) == ("warehouse_error", False)
    assert f"{tmp_path}/not-a-dir/warehouse" in err["message"] and "Not a directory" in err["message"]
    assert f"[catalog] warehouse ({bad_wh})" in err["fix"]
    assert sink_for(config.load(s.path, env={})).load("trades") is None  # not half-created in the catalog
    Path(s.path).write_text(good)
    code, out, _ = run_cli(capsys, "run", "--config", s.path)
    assert code == 0 and out["rows"] == 10
    assert_exactly_once(s, "trades")


@pytest.mark.parametrize("kind", ["data", "manifest", "metadata"])
def test_disk_full_at_any_write_commits_nothing_leaves_nothing_and_lands_later(make_settings, monkeypatch, kind):
    s = trades(make_settings, rows=20, max_rows_per_commit=10)
    assert run_cycle(s).tables[0].rows == 20
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + 20_000, 15, seq0=20)
    location = sink_for(s).load("trades").location().removeprefix("file://")
    before = {str(p) for p in Path(location).rglob("*") if p.is_file()}
    real_create = pyarrow_io.PyArrowFile.create
    failed: list[str] = []

    class Full:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.inner.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    def create(self, overwrite: bool = False):
        stream = real_create(self, overwrite)
        name = self.location.rsplit("/", 1)[1]
        hit = {
            "data": name.endswith(".parquet"),
            "manifest": name.endswith("-m0.avro"),
            "metadata": name.endswith(".metadata.json"),
        }[kind]
        if hit and not failed:
            failed.append(self.location)
            return Full(stream)
        return stream

    monkeypatch.setattr(pyarrow_io.PyArrowFile, "create", create)
    res = run_cycle(s).tables[0]
    monkeypatch.undo()
    assert failed and res.status == "failed"
    assert (res.error["type"], res.error["transient"]) == ("warehouse_error", False), res.error
    assert "No space left on device" in res.error["message"] and location in res.error["message"]
    assert "nothing was committed" in res.error["message"] and "free space" in res.error["fix"]
    assert "[catalog] warehouse" in res.error["fix"]
    assert (res.rows, snapshots(s)) == (0, 2)
    leftover = {str(p) for p in Path(location).rglob("*") if p.is_file()} - before
    # a metadata file that failed half-way is not ours to guess; every data file and manifest is gone
    assert [f for f in leftover if not f.endswith(".metadata.json")] == []
    assert run_cycle(s).tables[0].rows == 15
    assert_exactly_once(s, "trades")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_prefect_api_unreachable_trigger_and_doctor_exit_1_with_the_fix(make_settings, tmp_path, capsys, monkeypatch):
    s = trades(make_settings, rows=5)
    port = _closed_port()
    Path(s.path).write_text(
        Path(s.path).read_text() + f'\n[prefect]\napi_url = "http://127.0.0.1:{port}/api"\n'
        f'home = "{tmp_path}/prefect"\n[metrics]\nport = {_closed_port()}\n'
    )
    for key in config.prefect_env(config.load(s.path, env={})):  # the commands set them: restore them after
        monkeypatch.setenv(key, os.environ.get(key, ""))
    t0 = time.monotonic()
    # in a process of its own: Prefect reads its settings once per process, at import
    proc = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "trigger", "--json", "--config", s.path],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "OFFLOAD"))},
    )
    code, out = proc.returncode, json.loads(proc.stdout)
    assert code == 1 and time.monotonic() - t0 < 30
    err = out["error"]
    assert (err["type"], err["transient"]) == ("prefect_unavailable", True)
    assert f"the Prefect API at http://127.0.0.1:{port}/api does not answer" in err["message"]
    assert "iceberg-offload up" in err["fix"] and "[prefect] api_url" in err["fix"]
    proc = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "trigger", "--config", s.path],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "OFFLOAD"))},
    )
    assert proc.returncode == 1
    text = proc.stderr
    assert text.startswith("error: the Prefect API at") and "\n  fix: start the stack" in text
    assert "Traceback" not in text
    code, out, _ = run_cli(capsys, "doctor", "--config", s.path)
    assert code == 1 and out["scenario"] == "server down"
    server = next(c for c in out["checks"] if c["name"] == "prefect server")
    assert server["status"] == "fail" and "iceberg-offload up" in server["fix"]
    assert next(c for c in out["checks"] if c["name"] == "clickhouse")["status"] == "ok"
