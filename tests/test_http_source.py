"""The `http(s)://` source path end to end: clickhouse-connect over real HTTP to tests/chserver.py, ClickHouse's
HTTP interface executing every query in the embedded engine (what this proves and what it cannot:
docs/reliability.md "The ClickHouse HTTP path"). The type matrix, window, late-row and failed-query tests run
on this path too (the `source_dsn` fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import TRADES_DDL, HttpClickHouse, clickhouse, cold, insert_trades, sink_for, trades_table
from iceberg_offload.engine.compare import verify
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.errors import OffloadError, SourceError

START_MS = (int(time.time()) - 4 * 3600) * 1000


def _profile(server: HttpClickHouse, settings: dict[str, str]) -> None:
    """Settings the server gives every query, as a user's profile would."""
    body = json.dumps(settings).encode()
    urllib.request.urlopen(urllib.request.Request(f"{server.url}/__profile", data=body), timeout=10).close()


def _trades(make_settings, server: HttpClickHouse, rows: int, **offload):
    s = make_settings([trades_table()], dsn=server.dsn(), **offload)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS - rows * 10, rows, step_ms=10)
    return s


def _all_landed_once(s, rows: int) -> None:
    seqs = sorted(cold(s, "trades").column("seq").to_pylist())
    assert seqs == list(range(rows)), f"cold holds {len(seqs)} rows ({len(set(seqs))} distinct), hot {rows}"
    v = verify(s, values=True)[0]
    assert v.ok and v.cold_rows == rows, v.as_dict()


@pytest.mark.parametrize("read", ["Arrow", "Native"])
def test_a_server_killed_mid_answer_commits_nothing_and_the_next_run_lands_every_row_once(
    make_settings, ch_http: HttpClickHouse, read: str
):
    """The server process dies inside an answer: 100 kB into a row read (Arrow), 50 bytes into the plan's cut
    points (Native)."""
    s = _trades(make_settings, ch_http, 300_000, read_rows=50_000, max_rows_per_commit=100_000)
    ch_http.fault(100_000, "_o0_") if read == "Arrow" else ch_http.fault(50, "groupArrayIf")
    res = run_cycle(s).tables[0]
    assert ch_http.wait_exit() == 137
    assert res.status == "failed" and res.error["type"] == "source_unavailable" and res.error["transient"], res
    assert f"127.0.0.1:{ch_http.port}" in res.error["message"] and ch_http.password not in json.dumps(res.error)
    assert res.rows == 0 and cold(s, "trades").num_rows == 0
    ch_http.start()
    assert run_cycle(s).tables[0].rows == 300_000
    _all_landed_once(s, 300_000)


MEMORY = (
    "Code: 241. DB::Exception: (total) memory limit exceeded: would use 9.32 GiB (attempt to allocate chunk of "
    "4194304 bytes), current RSS: 9.30 GiB, maximum: 9.31 GiB. (MEMORY_LIMIT_EXCEEDED)"
)


@pytest.mark.parametrize("framing", ["tagged", "plain"])
def test_an_error_after_the_first_byte_is_the_servers_error_and_commits_nothing(make_settings, ch_http, framing):
    """The server fails a row read 200 kB into its answer (framed as ClickHouse 25.11+ does, or as plain text
    after the data as before): the run names ClickHouse's error and the fix, and lands nothing of it."""
    s = _trades(make_settings, ch_http, 300_000, read_rows=200_000, max_rows_per_commit=200_000)
    ch_http.fault(200_000, "_o0_", error=MEMORY, framing=framing)
    res = run_cycle(s).tables[0]
    answer = [q for q in ch_http.queries() if q["format"] == "Arrow" and q["error"]][-1]
    assert answer["error"].startswith("Code: 241"), answer
    assert res.status == "failed" and res.error["type"] == "source_error", res.error
    assert "Code: 241" in res.error["message"] and "read_rows" in res.error["fix"], res.error
    assert cold(s, "trades").num_rows == 0
    assert run_cycle(s).tables[0].rows == 300_000
    _all_landed_once(s, 300_000)


SET_BACK = {
    "limit": {"limit": "100"},  # also cuts the client's list of the server's settings short, before `limit`
    "group-by-any": {"max_rows_to_group_by": "10", "group_by_overflow_mode": "any"},
    "table-filter": {"additional_table_filters": "{'k2.trades': 'seq % 2 = 0'}"},
    "query-cache": {
        "use_query_cache": "1",
        "query_cache_ttl": "3600",
        "query_cache_nondeterministic_function_handling": "ignore",
        "query_cache_system_table_handling": "ignore",
    },
}


@pytest.mark.parametrize("profile", SET_BACK.values(), ids=SET_BACK.keys())
def test_a_server_profile_cannot_make_an_answer_short_other_or_stale(make_settings, ch_http, profile):
    """Settings a profile can give the offload user that make ClickHouse answer with fewer, other or older
    rows and no error: every query sets them back (clickhouse/settings.py), so every row lands once."""
    s = _trades(make_settings, ch_http, 250_000, read_rows=200_000, max_rows_per_commit=200_000)
    _profile(ch_http, profile)
    res = run_cycle(s).tables[0]
    assert (res.status, res.rows) == ("ok", 250_000), res.error
    with clickhouse(s) as ch:  # rows after the first run: a cached answer would not have them
        insert_trades(ch, "trades", START_MS, 1000, seq0=250_000)
    assert run_cycle(s).tables[0].rows == 1000
    _profile(ch_http, {})
    _all_landed_once(s, 251_000)


LOUD = {
    "result-break": ({"max_result_rows": "100000", "result_overflow_mode": "break"}, "Code: 396"),
    "read-break": ({"max_rows_to_read": "100000", "read_overflow_mode": "break"}, "Code: 158"),
    "offset": ({"offset": "7"}, "server version query"),  # the client's first query already answers empty
}


@pytest.mark.parametrize("profile,says", LOUD.values(), ids=LOUD.keys())
def test_a_server_profile_that_limits_answers_stops_the_run_loudly(make_settings, ch_http, profile, says):
    """A limit whose overflow mode would cut answers short without an error now throws (the mode is set back,
    the limit stays the server's): the run fails saying so, lands nothing, and lands everything once the
    profile allows it."""
    s = _trades(make_settings, ch_http, 250_000, read_rows=200_000, max_rows_per_commit=200_000)
    _profile(ch_http, profile)
    try:
        res = run_cycle(s).tables[0]
        error = res.error
        assert res.status == "failed", res
    except OffloadError as exc:  # refused while connecting: no table was started
        error = exc.as_dict()
    assert says in str(error["message"]), error
    table = sink_for(s).load("trades")
    assert table is None or cold(s, "trades").num_rows == 0
    _profile(ch_http, {})
    assert run_cycle(s).tables[0].rows == 250_000
    _all_landed_once(s, 250_000)


def test_a_read_only_setting_at_a_value_that_hides_rows_stops_naming_it(make_settings, ch_http):
    """A profile that forbids setting one back (read-only at another value, as system.settings reports it;
    the server's answer doctored, as chserver cannot make a setting read-only): the run stops before reading,
    naming the setting and the fix."""
    from iceberg_offload.clickhouse import connect

    s = _trades(make_settings, ch_http, 10)
    real = connect.pin

    def read_only_limit(client):
        query = client.query

        def doctored(sql, *args, **kwargs):
            result = query(sql, *args, **kwargs)
            if "FROM system.settings" in sql:
                rows = [("limit", "1000", 1) if r[0] == "limit" else r for r in result.result_rows]
                result = type("Answer", (), {"result_rows": rows})()
            return result

        client.query = doctored
        try:
            real(client)
        finally:
            del client.query

    with pytest.MonkeyPatch.context() as mp, pytest.raises(SourceError) as caught:
        mp.setattr(connect, "pin", read_only_limit)
        run_cycle(s)
    assert "set limit" in caught.value.message and "'1000'" in caught.value.message, caught.value
    assert "readonly = 2" in caught.value.fix and not caught.value.transient
    assert run_cycle(s).tables[0].rows == 10


def test_query_errors_carry_clickhouse_text_and_code(make_settings, ch_http):
    s = _trades(make_settings, ch_http, 10)
    with clickhouse(s) as ch:
        with pytest.raises(SourceError) as missing:
            ch.rows("SELECT * FROM k2.nope")
        assert "Code: 60" in missing.value.message and "UNKNOWN_TABLE" in missing.value.message
        assert missing.value.fix == "fix [[tables]] source or [source] database in the config"
        with pytest.raises(SourceError) as syntax:
            ch.arrow("SELEC 1")
        assert "Code: 62" in syntax.value.message and "SELEC 1" in syntax.value.fix
        assert ch.rows("SELECT count() FROM k2.trades") == [(10,)]  # the source reads on after an error
    assert all(q["error"] for q in ch_http.queries() if "nope" in q["sql"] or "SELEC 1" in q["sql"])


def test_reads_are_bounded_by_read_rows_and_memory_not_by_the_backlog(make_settings, ch_http, tmp_path):
    """`run` as a whole process over HTTP: every row read carries at most read_rows rows (the late-row sweep
    reads keys in pages of its own, PAGE_ROWS), the embedded engine is never loaded, and peak memory for a 4x
    larger backlog stays within 1.25x."""
    pad = "randomPrintableASCII(200)"
    s = make_settings(
        [trades_table("small"), trades_table("large")], dsn=ch_http.dsn(), read_rows=20_000, max_rows_per_commit=50_000
    )
    with clickhouse(s) as ch:
        for name, rows in (("small", 100_000), ("large", 400_000)):
            ch.command(f"CREATE TABLE k2.{name} (ts DateTime64(3), seq UInt64, pad String) ORDER BY (ts, seq)")
            ch.command(
                f"INSERT INTO k2.{name} SELECT fromUnixTimestamp64Milli(toInt64({START_MS} - {rows} * 10 + number * 10)), "
                f"number, {pad} FROM numbers({rows})"
            )
    peaks = {}
    for name in ("small", "large"):
        script = (
            "import sys; from iceberg_offload.cli.main import main; code = main(sys.argv[1:]); "
            "print('CHDB_LOADED' if 'chdb' in sys.modules else 'NO_CHDB'); sys.exit(code)"
        )
        argv = [sys.executable, "-c", script, "run", "--config", s.path, "--table", name, "--json"]
        with open(tmp_path / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=tmp_path)
            assert proc.stdout is not None
            out = proc.stdout.read().decode()
            _, status, usage = os.wait4(proc.pid, 0)  # the peak of this process alone
            proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, (tmp_path / f"{name}.err").read_text()[-2000:]
        assert out.rstrip().endswith("NO_CHDB"), "the HTTP path loaded the embedded engine"
        peaks[name] = usage.ru_maxrss
    answers = [q for q in ch_http.queries() if q["format"] == "Arrow"]
    rows = [q["arrow_rows"] for q in answers if "`pad`" in q["sql"]]  # the offload's reads: every column
    assert rows and max(rows) <= 20_000 and sum(rows) == 500_000, rows
    assert cold(s, "large").num_rows == 400_000
    assert peaks["large"] <= 1.25 * peaks["small"], f"peak RSS kB {peaks}"


def test_a_value_that_looks_like_a_server_error_is_never_taken_for_one():
    """An HTTP Arrow answer cut short is unreadable; the server's error is only what ends the body (the last
    one, in either framing), never text in the rows."""
    import pyarrow as pa

    from iceberg_offload.clickhouse.connect import read_answer
    from iceberg_offload.errors import SourceUnavailable

    sink = pa.BufferOutputStream()
    table = pa.table({"s": ["Code: 516. DB::Exception: Authentication failed (AUTHENTICATION_FAILED)"] * 1000})
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    body = sink.getvalue().to_pybytes()
    assert read_answer(body).equals(table)
    with pytest.raises(SourceUnavailable):
        read_answer(body[: len(body) // 2])
    error = MEMORY.encode() + b" (version 25.8.1.1 (official build))\n"
    tag = b"5f1c0a"
    for tail in (error, b"__exception__\r\n%s\r\n%s%d %s\r\n__exception__\r\n" % (tag, error, len(error), tag)):
        with pytest.raises(SourceError) as caught:
            read_answer(body[: len(body) // 2] + tail)
        assert caught.value.message.startswith("ClickHouse stopped a read at a limit: Code: 241."), caught.value
