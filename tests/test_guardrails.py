"""No row lost without a word (issue 13): states in which rows could be lost are refused before anything
is written, or shown by status, doctor and a metric — against real chdb and a SQLite catalog."""

from __future__ import annotations

import json
import time
from typing import Any

from conftest import clickhouse, cold, sink_for
from iceberg_offload.cli import main as cli
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.engine.repair import reconcile_all
from iceberg_offload.ops.doctor import check_tables
from iceberg_offload.ops.status import status

NOW_S = int(time.time())
H = 3600


def _table(name: str, **extra: Any) -> dict[str, Any]:
    return {"source": name, "timestamp_column": "ts", **extra}


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main(list(args))
    return code, json.loads(capsys.readouterr().out)


# -- 1: a TTL shorter than the time a row waits --------------------------------------------------------
def test_a_ttl_shorter_than_the_wait_is_refused_and_shown(make_settings):
    s = make_settings([_table("short")], settle_seconds=120)
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.short (ts DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY ts "
            "TTL toDateTime(ts) + INTERVAL 60 SECOND"
        )
        ch.command("INSERT INTO k2.short SELECT now64(3) - INTERVAL 10 SECOND, number FROM numbers(10)")
    res = run_cycle(s).tables[0]
    assert res.status == "failed" and res.error["type"] == "ttl_too_short", res.error
    for part in ("60 s", "settle_seconds 120", "900 s", "short"):
        assert part in res.error["message"], res.error
    assert "MODIFY TTL" in res.error["fix"] and "settle_seconds" in res.error["fix"]
    st = status(s)[0]
    assert st.error is not None and st.error["type"] == "ttl_too_short"
    assert 0 < st.ttl_headroom_seconds <= 60  # the metric the TTLRisk alert reads: far below its day
    check = next(c for c in check_tables(s) if c.name == "table short")
    assert check.status == "fail" and check.scenario == "ttl risk", check


def test_a_ttl_longer_than_the_wait_is_accepted(make_settings):
    s = make_settings([_table("long")], settle_seconds=120)
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.long (ts DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY ts "
            "TTL toDateTime(ts) + INTERVAL 1 HOUR"
        )
        ch.command("INSERT INTO k2.long SELECT now64(3) - INTERVAL 10 MINUTE, number FROM numbers(10)")
    res = run_cycle(s).tables[0]
    assert res.status == "ok" and res.rows == 10, res.error


# -- 2: "the TTL may have begun deleting this hour" from the TTL and the clock ---------------------------
def test_a_late_row_in_the_oldest_hour_is_repaired_when_the_ttl_is_far(make_settings):
    s = make_settings([_table("young", sequence_column="seq")])
    start = (NOW_S // H - 5) * H
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.young (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq) "
            "TTL toDateTime(ts) + INTERVAL 30 DAY"
        )
        ch.command(
            f"INSERT INTO k2.young SELECT fromUnixTimestamp64Milli(toInt64(({start} + number * 60) * 1000)), "
            f"number FROM numbers(200)"
        )
    assert run_cycle(s).tables[0].rows == 200
    with clickhouse(s) as ch:  # late, in the hot tier's oldest hour; its TTL is 30 days away
        ch.command(f"INSERT INTO k2.young VALUES (fromUnixTimestamp64Milli(toInt64(({start} + 30) * 1000)), 9999)")
    rec = reconcile_all(s, apply=True)[0]
    assert rec.ok and rec.applied and rec.rows_added == 1 and rec.buckets_skipped_ttl == 0, rec.as_dict()
    assert 9999 in cold(s, "young").column("seq").to_pylist()


# -- 5: options before the command ---------------------------------------------------------------------
def test_options_before_the_command_are_used(make_settings, capsys, tmp_path, monkeypatch):
    s = make_settings([_table("opt")])
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.opt (ts DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY ts")
        ch.command("INSERT INTO k2.opt SELECT now64(3) - INTERVAL 1 HOUR, number FROM numbers(5)")
    monkeypatch.chdir(tmp_path / "..")  # no offload.toml here: a dropped --config would read the embedded default
    code, out = run_json(capsys, "--config", s.path, "--json", "run")
    assert code == 0 and out["rows"] == 5
    code, out = run_json(capsys, "--json", "status", "--config", s.path)
    assert code == 0 and out["tables"][0]["table"] == "opt"


# -- 6: a watermark set into the future ----------------------------------------------------------------
def _offloaded(make_settings):
    s = make_settings([_table("wm", sequence_column="seq")])
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.wm (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq)")
        ch.command(
            f"INSERT INTO k2.wm SELECT fromUnixTimestamp64Milli(toInt64(({NOW_S - 2 * H} + number) * 1000)), "
            f"number FROM numbers(100)"
        )
    assert run_cycle(s).tables[0].rows == 100
    return s


def test_a_watermark_in_the_future_is_refused_without_the_flag(make_settings, capsys):
    s = _offloaded(make_settings)
    future = str(NOW_S + 30 * 86400)
    code, out = run_json(
        capsys, "watermark", "set", "--config", s.path, "--table", "wm", "--to", future, "--seq", "0", "--yes", "--json"
    )
    assert code == 2 and out["error"]["type"] == "config" and "--future" in out["error"]["fix"], out
    assert "future" in out["error"]["message"]
    with clickhouse(s) as ch:  # rows the future watermark would skip
        ch.command(
            f"INSERT INTO k2.wm SELECT fromUnixTimestamp64Milli(toInt64(({NOW_S - H} + number) * 1000)), "
            f"1000 + number FROM numbers(7)"
        )
    code, out = run_json(
        capsys,
        "watermark",
        "set",
        "--config",
        s.path,
        "--table",
        "wm",
        "--to",
        future,
        "--seq",
        "0",
        "--future",
        "--json",
    )
    assert code == 0 and not out["applied"] and out["rows_affected"] == 7, out
    code, out = run_json(
        capsys,
        "watermark",
        "set",
        "--config",
        s.path,
        "--table",
        "wm",
        "--to",
        future,
        "--seq",
        "0",
        "--future",
        "--yes",
        "--json",
    )
    assert code == 0 and out["applied"]
    # moving back to where the data ends offloads nothing twice: the preview says so
    back = str(NOW_S - 2 * H + 99)
    code, out = run_json(
        capsys, "watermark", "set", "--config", s.path, "--table", "wm", "--to", back, "--seq", "99", "--json"
    )
    assert code == 0 and out["direction"] == "back" and out["rows_offloaded_again"] == 0, out
    assert out["rows_affected"] == 7 and "never offloaded" in out["effect"], out
    code, out = run_json(
        capsys, "watermark", "set", "--config", s.path, "--table", "wm", "--to", back, "--seq", "99", "--yes", "--json"
    )
    assert code == 0 and out["applied"], out  # nothing would be offloaded twice: no --reoffload needed
    assert run_cycle(s).tables[0].rows == 7 and cold(s, "wm").num_rows == 107


# -- 7: verify cannot read -----------------------------------------------------------------------------
def test_verify_fails_when_it_cannot_compare(make_settings, capsys):
    s = make_settings([_table("gone"), _table("nottime", timestamp_column="v")])
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.nottime (ts DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY ts")
    code, out = run_json(capsys, "verify", "--config", s.path, "--json")
    assert code == 1 and not out["ok"], out
    gone, nottime = out["tables"]
    assert gone["error"]["type"] == "source_error" and "does not exist" in gone["error"]["message"]
    assert nottime["error"]["type"] == "config" and "not a time type" in nottime["error"]["message"]
    assert sink_for(s).load("gone") is None


# -- operator text: duplicate targets, environment typos, Ctrl-C, a closed pipe, a wait for the engine --
def test_config_errors_name_their_source_and_a_real_fix(tmp_path):
    import pytest

    from iceberg_offload import config
    from iceberg_offload.errors import ConfigError

    path = tmp_path / "offload.toml"
    path.write_text(
        '[[tables]]\nsource = "a"\ntimestamp_column = "ts"\n[[tables]]\nsource = "b"\ntarget = "a"\n'
        'timestamp_column = "ts"\n'
    )
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert "'a'" in err.value.message and "{'tables'" not in err.value.message
    assert "target" in err.value.fix and "set  to" not in err.value.fix
    path.write_text('[[tables]]\nsource = "a"\ntimestamp_column = "ts"\n')
    with pytest.raises(ConfigError) as err:
        config.load(path, env={"OFFLOAD__OFFLOAD__SETTLE_SECONDS": "soon"})
    assert (
        err.value.message.startswith("environment OFFLOAD__OFFLOAD__SETTLE_SECONDS")
        and str(path) not in err.value.message
    )
    assert "OFFLOAD__OFFLOAD__SETTLE_SECONDS" in err.value.fix


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(make_settings, capsys, monkeypatch):
    s = make_settings([_table("opt")])

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_status", interrupted)
    assert cli.main(["status", "--config", s.path]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "continue from the watermark" in err


def test_a_closed_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys

    script = (
        "from iceberg_offload.cli import main as cli\n"
        "def loud(args):\n    [print('x' * 100) for _ in range(200000)]\n    return 0\n"
        "cli.cmd_status = loud\nraise SystemExit(cli.main(['status']))\n"
    )
    out = subprocess.run(
        f'{sys.executable} -c "$SCRIPT" | head -c 10',
        shell=True,
        capture_output=True,
        text=True,
        env={"SCRIPT": script, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=120,
    )
    assert out.stdout == "x" * 10 and "Traceback" not in out.stderr, out.stderr


def test_a_wait_for_the_engine_is_said(make_settings, capsys):
    import os
    import subprocess
    import sys

    import pytest

    from iceberg_offload.clickhouse.client import open_source
    from iceberg_offload.errors import EngineBusy

    s = make_settings([_table("opt")])
    holder_code = (
        "import sys, time\nfrom iceberg_offload import config\nfrom iceberg_offload.clickhouse.client import open_source\n"
        "with open_source(config.load(sys.argv[1], env={}).source):\n    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", holder_code, s.path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        cli._say_warnings()
        quick = s.source.model_copy(update={"lock_timeout_seconds": 0.3})
        with pytest.raises(EngineBusy), open_source(quick):
            pass
        err = capsys.readouterr().err
        assert "waiting up to 0s for the embedded ClickHouse" in err and f"pid {holder.pid}" in err, err
    finally:
        holder.kill()
        holder.wait()


# -- 2: the late-row sweep: a late row lands within one cycle ------------------------------------------
def test_a_late_row_behind_the_watermark_lands_in_the_next_cycle(make_settings):
    s = make_settings([_table("late", sequence_column="seq")])
    start = (NOW_S // H - 2) * H
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.late (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq) "
            "TTL toDateTime(ts) + INTERVAL 7 DAY"
        )
        ch.command(
            f"INSERT INTO k2.late SELECT fromUnixTimestamp64Milli(toInt64(({start} + number * 30) * 1000)), "
            f"number FROM numbers(200)"
        )
    first = run_cycle(s).tables[0]
    assert first.rows == 200 and first.late_rows == 0
    with clickhouse(s) as ch:  # arrives after its hour was offloaded: behind the watermark, in no window
        ch.command(
            f"INSERT INTO k2.late VALUES (fromUnixTimestamp64Milli(toInt64(({start} + 45) * 1000)), 5000), "
            f"(fromUnixTimestamp64Milli(toInt64(({start} + 3000) * 1000)), 5001)"
        )
    res = run_cycle(s).tables[0]
    assert res.status == "ok" and res.rows == 0 and (res.late_rows, res.late_rows_added) == (2, 2), res.as_dict()
    seqs = sorted(cold(s, "late").column("seq").to_pylist())
    assert seqs == [*range(200), 5000, 5001]
    wm = sink_for(s).watermark(sink_for(s).load("late"))[0]
    assert wm is not None and wm.seq == 199  # the sweep carries the watermark, it never moves it
    assert run_cycle(s).tables[0].late_rows == 0


def test_the_sweep_looks_back_only_as_far_as_configured(make_settings):
    s = make_settings([_table("late", sequence_column="seq")], late_lookback_seconds=3600)
    start = (NOW_S // H - 5) * H
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.late (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq)")
        ch.command(
            f"INSERT INTO k2.late SELECT fromUnixTimestamp64Milli(toInt64(({start} + number * 60) * 1000)), "
            f"number FROM numbers(240)"
        )
    run_cycle(s)
    with clickhouse(s) as ch:  # four hours behind the watermark: for the daily reconcile
        ch.command(f"INSERT INTO k2.late VALUES (fromUnixTimestamp64Milli(toInt64(({start} + 10) * 1000)), 7000)")
    res = run_cycle(s).tables[0]
    assert (res.late_rows, res.late_rows_added) == (0, 0) and cold(s, "late").num_rows == 240
    assert reconcile_all(s, apply=True)[0].rows_added == 1


# -- found in review: TTL rules, rounded TTLs, schedules, watermark set edges ----------------------------
def test_every_deleting_ttl_rule_counts():
    from iceberg_offload.clickhouse.ttl import NEVER
    from iceberg_offload.clickhouse.ttl import ttl_expressions as _ttl_expressions

    def ttl(engine_full: str) -> str | None:
        return _ttl_expressions(engine_full)[0]

    head = "MergeTree ORDER BY ts TTL "
    assert (
        _ttl_expressions(head + "toDateTime(ts) + toIntervalDay(7) DELETE WHERE v = 1 AND k != 'x'")[1]
        == f"if(v = 1 AND k != 'x', toDateTime(toDateTime(ts) + toIntervalDay(7)), {NEVER})"
    )
    assert (
        _ttl_expressions(head + "toDateTime(ts) + toIntervalDay(7) WHERE v = 1 GROUP BY k SET v = sum(v)")[1]
        == f"if(v = 1, toDateTime(toDateTime(ts) + toIntervalDay(7)), {NEVER})"
    )
    assert (
        ttl(head + "toStartOfInterval(ts, toIntervalHour(1)) + toIntervalMinute(5) SETTINGS x = 1")
        == "toStartOfInterval(ts, toIntervalHour(1)) + toIntervalMinute(5)"
    )
    assert (
        ttl(head + "toDateTime(ts) + toIntervalDay(30), toDateTime(ts) + toIntervalMinute(5) DELETE WHERE v = 1")
        == "least(toDateTime(toDateTime(ts) + toIntervalDay(30)), toDateTime(toDateTime(ts) + toIntervalMinute(5)))"
    )
    assert (
        ttl(head + "toDateTime(ts) + toIntervalDay(1) TO DISK 'cold', toDateTime(ts) + toIntervalDay(7)")
        == "toDateTime(ts) + toIntervalDay(7)"
    )
    assert ttl(head + "toDateTime(ts) + toIntervalDay(1) RECOMPRESS CODEC(ZSTD(3))") is None
    assert (
        ttl(head + "toDateTime(ts) + toIntervalDay(7) GROUP BY k SET v = sum(v)") == "toDateTime(ts) + toIntervalDay(7)"
    )


def test_a_second_short_ttl_rule_or_a_rounded_ttl_is_refused(make_settings):
    rules = {
        "second": "toDateTime(ts) + INTERVAL 30 DAY, toDateTime(ts) + INTERVAL 5 MINUTE DELETE WHERE v = 1",
        "rounded": "toStartOfHour(toDateTime(ts)) + INTERVAL 1 HOUR",
    }
    s = make_settings([_table(name) for name in rules], settle_seconds=0)
    with clickhouse(s) as ch:
        for name, rule in rules.items():
            ch.command(f"CREATE TABLE k2.{name} (ts DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY ts TTL {rule}")
    for res in run_cycle(s).tables:
        assert res.status == "failed" and res.error["type"] == "ttl_too_short", (res.table, res.error)


def test_the_longest_gap_of_a_schedule():
    from iceberg_offload.engine.cadence import CAUTIOUS_GAP, cron_max_gap

    assert cron_max_gap("*/15 * * * *") == 900 and cron_max_gap("@hourly") == 3600
    assert cron_max_gap("0 0 * * MON") == cron_max_gap("@weekly") == 7 * 86400
    assert cron_max_gap("0 0 1 * *") == 31 * 86400 and cron_max_gap("*/5 8-17 * * 1-5") == 223500
    assert cron_max_gap("not a cron") == CAUTIOUS_GAP


def test_moving_back_under_an_expired_history_needs_reoffload(make_settings):
    import pytest

    from iceberg_offload.errors import ConfigError
    from iceberg_offload.maintenance.expire import expire
    from iceberg_offload.ops.watermark import set_watermark

    s = make_settings([_table("ex")])
    start_ms = (NOW_S - 3 * H) * 1000
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.ex (ts DateTime64(3), v Int64) ENGINE = MergeTree ORDER BY ts")
        ch.command(
            f"INSERT INTO k2.ex SELECT fromUnixTimestamp64Milli(toInt64({start_ms} + number * 1000)), number "
            f"FROM numbers(100)"
        )
    run_cycle(s)
    with clickhouse(s) as ch:  # a late row, repaired: the newest commit is a repair
        ch.command(f"INSERT INTO k2.ex VALUES (fromUnixTimestamp64Milli(toInt64({start_ms} + 500)), -1)")
    assert reconcile_all(s, apply=True)[0].applied
    expire(s, s.table("ex"), sink_for(s), apply=True, older_than_seconds=0, keep_last=1)
    back = (start_ms + 49_500) * 1_000_000
    preview = set_watermark(s, "ex", back, None, apply=False)
    assert preview["rows_offloaded_again"] == 50, preview
    with pytest.raises(ConfigError, match="offload 50 rows again"):
        set_watermark(s, "ex", back, None, apply=True)


def test_watermark_set_without_seq_counts_every_row_at_that_time(make_settings, capsys):
    """On a sequence table, a watermark without --seq covers every row at its timestamp (the window reads
    `ts > T`): the preview says which rows that skips, it does not call them "nothing"."""
    s = make_settings([_table("sq", sequence_column="seq")])
    t_ms = (NOW_S - 2 * H) * 1000
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.sq (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq)")
        ch.command(f"INSERT INTO k2.sq SELECT fromUnixTimestamp64Milli(toInt64({t_ms})), number FROM numbers(3)")
    run_cycle(s)
    with clickhouse(s) as ch:  # two more rows at the watermark's own timestamp, after it
        ch.command(
            f"INSERT INTO k2.sq VALUES (fromUnixTimestamp64Milli(toInt64({t_ms})), 3), "
            f"(fromUnixTimestamp64Milli(toInt64({t_ms})), 4)"
        )
    code, out = run_json(
        capsys, "watermark", "set", "--config", s.path, "--table", "sq", "--to", str(t_ms // 1000), "--json"
    )
    assert code == 0 and out["direction"] == "forward" and out["rows_affected"] == 2, out
