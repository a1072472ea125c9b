"""The operator commands: --json shapes (docs/json.md), exit codes, verify finding missing and duplicate rows,
the demo run twice, and the embedded engine's lock naming its holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import TRADES_DDL, clickhouse, cold, insert_trades, sink_for, trades_table
from iceberg_offload.cli import main as cli
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.errors import EngineBusy

START_MS = (int(time.time()) - 3 * 3600) * 1000


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.fixture
def trades(make_settings, sqlite_uri):
    s = make_settings([trades_table(), trades_table("quiet")], catalog_uri=sqlite_uri, max_rows_per_commit=1000)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades") + " TTL toDateTime(ts) + INTERVAL 7 DAY")
        ch.command(TRADES_DDL.format(name="quiet"))
        insert_trades(ch, "trades", START_MS, 2500)
    return s


def test_run_status_watermark_json(trades, capsys):
    code, run = run_json(capsys, "run", "--config", trades.path)
    assert code == 0 and run["status"] == "success" and run["rows"] == 2500
    t = run["tables"][0]
    assert set(t) >= {"table", "layer", "status", "rows", "commits", "watermark_before", "watermark_after", "error"}
    assert (t["table"], t["rows"], t["commits"], t["watermark_after"]["seq"]) == ("trades", 2500, 3, 2499)

    code, st = run_json(capsys, "status", "--config", trades.path, "--table", "trades")
    assert code == 0
    s = st["tables"][0]
    assert (s["cold_rows"], s["hot_rows"], s["pending_rows"], s["commits"]) == (2500, 2500, 0, 3)
    assert s["ttl"] == "toDateTime(ts) + toIntervalDay(7)"
    assert 6.9 * 86400 < s["ttl_headroom_seconds"] <= 7 * 86400  # nothing pending: the whole TTL span
    assert 0 < s["lag_seconds"] < 4 * 3600

    code, wm = run_json(capsys, "watermark", "show", "--config", trades.path)
    by = {t["table"]: t["commits"] for t in wm["tables"]}
    assert code == 0 and len(by["trades"]) == 3 and by["quiet"] == []
    assert by["trades"][0]["watermark"]["seq"] == 2499 and by["trades"][0]["rows"] == 500
    assert by["trades"][0]["window_lower_ns"] == by["trades"][1]["watermark"]["ts_ns"]  # each window starts at the last


def test_ttl_headroom_counts_from_the_oldest_row_not_offloaded(trades, capsys):
    with clickhouse(trades) as ch:  # a row 6.5 days old that is not offloaded yet: half a day of headroom
        ch.command("INSERT INTO k2.trades VALUES (now64(3) - INTERVAL 156 HOUR, 9999, 'BTC', 1)")
    code, st = run_json(capsys, "status", "--config", trades.path, "--table", "trades")
    headroom = st["tables"][0]["ttl_headroom_seconds"]
    assert 12 * 3600 - 120 < headroom < 12 * 3600 + 120


def test_verify_finds_late_rows_and_duplicates(trades, capsys):
    assert cli.main(["run", "--config", trades.path]) == 0
    capsys.readouterr()
    code, v = run_json(capsys, "verify", "--config", trades.path)
    assert code == 0 and v["ok"] is True
    t = v["tables"][0]
    assert set(t) >= {"table", "hot_rows", "cold_rows", "missing", "duplicates", "buckets_checked", "buckets_bad"}
    assert (t["hot_rows"], t["cold_rows"], t["missing"], t["duplicates"]) == (2500, 2500, 0, 0)

    with clickhouse(trades) as ch:  # late arrivals: new keys behind the watermark
        insert_trades(ch, "trades", START_MS + 500, 3, seq0=10_000)
    table = sink_for(trades).load("trades")
    table.append(cold(trades, "trades").slice(100, 2))  # two rows written twice
    code, v = run_json(capsys, "verify", "--config", trades.path, "--table", "trades")
    t = v["tables"][0]
    assert code == 1 and v["ok"] is False
    assert (t["missing"], t["duplicates"]) == (3, 2) and t["buckets_bad"]


def test_failures_exit_non_zero_and_name_the_fix(make_settings, sqlite_uri, capsys):
    s = make_settings([trades_table("absent")], catalog_uri=sqlite_uri)
    code, run = run_json(capsys, "run", "--config", s.path)
    assert code == 1 and run["status"] == "failed"
    err = run["tables"][0]["error"]
    assert "k2.absent does not exist" in err["message"] and "[[tables]] source" in err["fix"]
    assert cli.main(["run", "--config", s.path, "--table", "nope"]) == 2
    assert "no table 'nope'" in capsys.readouterr().err


def test_demo_twice_offloads_only_new_rows(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env = {k: v for k, v in env.items() if not k.startswith("OFFLOAD")}
    first = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "demo", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)
    assert one["config_written"] and (tmp_path / "offload.toml").exists()
    names = {t["table"] for t in one["tables"]}
    assert names == {
        "bronze_trades_binance",
        "bronze_trades_kraken",
        "bronze_trades_coinbase",
        "silver_trades",
        "ohlcv_1m",
        "ohlcv_5m",
        "ohlcv_15m",
        "ohlcv_30m",
        "ohlcv_1h",
        "ohlcv_1d",
    }
    bronze1 = {t["table"]: t for t in one["tables"]}["bronze_trades_binance"]
    assert bronze1["rows_this_run"] > 10_000 and bronze1["cold_rows"] == bronze1["rows_this_run"]
    time.sleep(1.5)
    second = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "demo", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr
    two = {t["table"]: t for t in json.loads(second.stdout)["tables"]}
    assert not json.loads(second.stdout)["config_written"]
    b2 = two["bronze_trades_binance"]
    assert 0 < b2["rows_this_run"] < 100 and b2["cold_rows"] == bronze1["cold_rows"] + b2["rows_this_run"]
    verify = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "verify", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout


HOLDER = """
import sys, time
from iceberg_offload import config
from iceberg_offload.clickhouse.client import open_source
with open_source(config.load(sys.argv[1], env={}).source):
    print("held", flush=True)
    time.sleep(60)
"""


def test_engine_lock_times_out_naming_the_holder(make_settings, sqlite_uri, tmp_path):
    s = make_settings([trades_table()], catalog_uri=sqlite_uri)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, s.path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        quick = s.source.model_copy(update={"lock_timeout_seconds": 0.5})
        with pytest.raises(EngineBusy) as err, open_source(quick):
            pass
        assert f"pid {holder.pid}" in err.value.message and "lock_timeout_seconds" in err.value.fix
    finally:
        holder.kill()
        holder.wait()
    with open_source(s.source) as src:  # released by the kernel when the holder died
        assert src.rows("SELECT 1") == [(1,)]


def test_text_output_is_a_table(trades, capsys):
    assert cli.main(["run", "--config", trades.path]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["table", "layer", "status", "rows"]
    assert "cycle cli-" in out and "success" in out


def test_watermark_set_previews_skips_forward_and_refuses_going_back(trades, capsys):
    assert cli.main(["run", "--config", trades.path, "--table", "trades"]) == 0
    capsys.readouterr()
    with clickhouse(trades) as ch:  # 100 new rows, then we decide to skip the first 60 of them
        insert_trades(ch, "trades", START_MS + 2500 * 1000, 100, seq0=2500)
    skip_to = (START_MS + 2559 * 1000) // 1000
    code, preview = run_json(
        capsys, "watermark", "set", "--config", trades.path, "--table", "trades", "--to", str(skip_to), "--seq", "2559"
    )
    assert code == 0 and not preview["applied"] and preview["direction"] == "forward"
    assert preview["rows_affected"] == 60 and preview["current"]["seq"] == 2499
    code, done = run_json(
        capsys,
        "watermark",
        "set",
        "--config",
        trades.path,
        "--table",
        "trades",
        "--to",
        str(skip_to),
        "--seq",
        "2559",
        "--yes",
    )
    assert code == 0 and done["applied"]
    code, run = run_json(capsys, "run", "--config", trades.path, "--table", "trades")
    assert run["tables"][0]["rows"] == 40  # only the rows after the new watermark
    seqs = sorted(cold(trades, "trades").column("seq").to_pylist())
    assert seqs == list(range(2500)) + list(range(2560, 2600))
    code, hist = run_json(capsys, "watermark", "show", "--config", trades.path, "--table", "trades")
    assert any(c["run_id"].startswith("watermark-set-") for c in hist["tables"][0]["commits"])
    code, err = run_json(
        capsys,
        "watermark",
        "set",
        "--config",
        trades.path,
        "--table",
        "trades",
        "--to",
        str(START_MS // 1000),
        "--seq",
        "0",
        "--yes",
    )
    assert code == 2 and "offload 2599 rows again" in err["error"]["message"] and "--reoffload" in err["error"]["fix"]


def test_demo_with_a_new_config_elsewhere_seeds_the_engine_that_config_names(tmp_path, monkeypatch, capsys):
    """`demo -c other/offload.toml` from another folder: the engine, catalog and warehouse it fills are the
    ones the written config names (beside it), so the next `run -c` finds the tables."""
    elsewhere, target = tmp_path / "cwd", tmp_path / "other"
    elsewhere.mkdir()
    target.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in [k for k in os.environ if k.startswith("OFFLOAD")]:
        monkeypatch.delenv(name)
    config = str(target / "offload.toml")
    code, demo = run_json(capsys, "demo", "-c", config)
    assert code == 0 and demo["config_written"], demo
    assert (target / ".offload" / "clickhouse").is_dir() and not (elsewhere / ".offload").exists()
    code, run = run_json(capsys, "run", "-c", config)
    assert code == 0 and all(t["status"] == "ok" for t in run["tables"]), run
