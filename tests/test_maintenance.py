"""`iceberg-offload maintain` and `view` end to end on the embedded engine: preview changes nothing, --yes
repairs late rows, compacts many small files, keeps the watermark; the view follows offloads."""

from __future__ import annotations

import json
import time

import pytest

from conftest import TRADES_DDL, clickhouse, cold, insert_trades, sink_for, trades_table
from iceberg_offload.cli import main as cli

START_MS = (int(time.time()) - 5 * 3600) * 1000


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def small_commits(make_settings, sqlite_uri):
    """600 rows offloaded in 30 commits of 20 rows (hour partitions), then 7 late rows behind the watermark."""
    s = make_settings([trades_table(partition_by="hour")], catalog_uri=sqlite_uri, max_rows_per_commit=20)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 600, step_ms=10_000)
    assert cli.main(["run", "--config", s.path]) == 0
    with clickhouse(s) as ch:  # late arrivals: timestamps long behind the watermark
        insert_trades(ch, "trades", START_MS + 5_000, 7, seq0=10_000, step_ms=60_000)
    return s


def _keys(settings) -> list[tuple]:
    t = cold(settings, "trades")
    return sorted(zip(t.column("ts").to_pylist(), t.column("seq").to_pylist(), strict=True))


def _data_files(settings) -> int:
    table = sink_for(settings).load("trades")
    return len(list(table.scan().plan_files()))


def test_maintain_preview_changes_nothing(small_commits, capsys):
    sink = sink_for(small_commits)
    head = sink.load("trades").current_snapshot().snapshot_id
    code, out = run_json(capsys, "maintain", "all", "--config", small_commits.path)
    assert code == 0 and out["applied"] is False
    steps = out["tables"][0]["steps"]
    assert list(steps) == ["reconcile", "compact", "expire", "orphans"]
    assert steps["reconcile"]["buckets_missing"] >= 1 and steps["reconcile"]["rows_missing"] == 7
    assert steps["compact"]["files_rewritten"] >= 20
    assert sink.load("trades").current_snapshot().snapshot_id == head
    assert len(_keys(small_commits)) == 600


def test_maintain_all_repairs_compacts_and_keeps_the_watermark(small_commits, capsys):
    sink = sink_for(small_commits)
    wm_before = sink.watermark(sink.load("trades"))[0]
    files_before = _data_files(small_commits)
    assert files_before >= 30
    code, out = run_json(capsys, "maintain", "all", "--yes", "--config", small_commits.path)
    assert code == 0 and out["ok"], out
    steps = out["tables"][0]["steps"]
    assert steps["reconcile"]["rows_added"] == 7 and steps["reconcile"]["buckets_repaired"] >= 1, steps["reconcile"]
    assert steps["compact"]["files_written"] < steps["compact"]["files_rewritten"]
    assert _data_files(small_commits) <= 8  # about one file per hour partition
    keys = _keys(small_commits)
    assert len(keys) == len(set(keys)) == 607
    assert sink.watermark(sink.load("trades"))[0] == wm_before
    code, verify = run_json(capsys, "verify", "--config", small_commits.path)
    assert code == 0 and verify["ok"], verify
    exported = _scrape(small_commits)  # what maintenance did, on the port-8000 endpoint
    assert (
        exported['offload_retained_repair_commits{table="trades"}'] == 1
        and exported['offload_retained_repaired_rows{table="trades"}'] == 7
    )
    assert exported['offload_retained_compaction_commits{table="trades"}'] == 1
    assert exported['offload_data_files{table="trades"}'] == _data_files(small_commits)
    # and the next offload continues exactly once from the same watermark
    with clickhouse(small_commits) as ch:
        insert_trades(ch, "trades", START_MS + 600 * 10_000, 40, seq0=600, step_ms=10_000)
    code, run = run_json(capsys, "run", "--config", small_commits.path)
    assert code == 0 and run["rows"] == 40
    assert len(set(_keys(small_commits))) == len(_keys(small_commits)) == 647


def _scrape(settings) -> dict[str, float]:
    from iceberg_offload.ops.metrics import serve
    from test_metrics import scrape

    handle = serve(settings)
    try:
        return scrape(settings.metrics.port)
    finally:
        handle.shutdown()


def test_maintain_reports_a_failing_table_and_goes_on(make_settings, sqlite_uri, capsys):
    s = make_settings([trades_table("gone"), trades_table()], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        for name in ("gone", "trades"):
            ch.command(TRADES_DDL.format(name=name))
            insert_trades(ch, name, START_MS, 50)
    assert cli.main(["run", "--config", s.path]) == 0
    with clickhouse(s) as ch:
        ch.command("DROP TABLE k2.gone")
    capsys.readouterr()
    code, out = run_json(capsys, "maintain", "all", "--config", s.path)
    by = {t["table"]: t for t in out["tables"]}
    assert code == 1 and not by["gone"]["ok"] and by["trades"]["ok"]
    err = by["gone"]["steps"]["reconcile"]["error"]
    assert "gone" in err["message"] and err["fix"]
    assert set(by["gone"]["steps"]) == {"reconcile", "compact", "expire", "orphans"}  # the other steps still ran


def test_view_is_the_union_of_both_tiers_and_follows_offloads(make_settings, sqlite_uri, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the embedded engine's file functions read below the working directory
    s = make_settings([trades_table()], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 300)
    assert cli.main(["run", "--config", s.path]) == 0
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + 300_000, 100, seq0=300)
    capsys.readouterr()
    code, out = run_json(capsys, "view", "--config", s.path)
    assert code == 0 and out["tables"][0]["view"] == "k2.trades_all", out

    def view_keys() -> list[tuple]:
        with clickhouse(s) as ch:
            return sorted(ch.rows("SELECT ts, seq FROM k2.trades_all"))

    def hot_keys() -> list[tuple]:
        with clickhouse(s) as ch:
            return sorted(ch.rows("SELECT ts, seq FROM k2.trades"))

    assert view_keys() == hot_keys() and len(hot_keys()) == 400
    assert cli.main(["run", "--config", s.path]) == 0  # offloads 100 rows; the run re-points the view
    capsys.readouterr()
    with clickhouse(s) as ch:  # the TTL takes the oldest 350 rows from hot: the view now needs cold for them
        ch.command("ALTER TABLE k2.trades DELETE WHERE seq < 350 SETTINGS mutations_sync = 1")
    keys = view_keys()
    assert len(keys) == len(set(keys)) == 400 and [k[1] for k in keys] == list(range(400))
