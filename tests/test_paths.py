"""A config file used from any folder: its relative paths name the same engine, catalog and warehouse, the
views follow each run wherever it starts, and a view that cannot follow is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TRADES_DDL, clickhouse, insert_trades, sink_for
from iceberg_offload import config
from iceberg_offload.cli import main as cli
from iceberg_offload.clickhouse.client import Source
from iceberg_offload.errors import SourceError
from iceberg_offload.maintenance.view import create_view

H = 3600 * 1000
START_MS = (int(time.time()) // 3600 - 5) * H
RELATIVE = """[source]
dsn = "chdb://{data}/ch"
lock_timeout_seconds = 20
[catalog]
uri = "sqlite:///{data}/catalog.db"
warehouse = "file://{data}/warehouse"
[prefect]
home = "{data}/prefect"
[offload]
settle_seconds = 0
[[tables]]
source = "trades"
timestamp_column = "ts"
sequence_column = "seq"
"""


def _cli(cwd: Path, *args: str) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", *args, "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.startswith("{"), done.stderr[-2000:]
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/etc/offload.toml with relative paths, a trades table of 1000 rows; the cwd is tmp/elsewhere."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    cfg = tmp_path / "etc" / "offload.toml"
    cfg.write_text(RELATIVE.format(data="data"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    with clickhouse(config.load(cfg, env={})) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 1000, step_ms=3600)
    return cfg


def _figures(status: dict) -> list[tuple]:
    return [
        (t["table"], t["watermark"], t["cold_rows"], t["hot_rows"], t["commits"], t["pending_rows"])
        for t in status["tables"]
    ]


def test_a_config_with_relative_paths_reads_the_same_data_from_any_folder(etc, tmp_path):
    code, run = _cli(tmp_path / "elsewhere", "--config", str(etc), "run")
    assert code == 0 and run["rows"] == 1000, run
    assert not (tmp_path / "elsewhere" / "data").exists()  # nothing opened beside the working directory
    views: dict[str, list] = {}
    for cwd in (tmp_path / "elsewhere", tmp_path / "etc"):
        code, verify = _cli(cwd, "--config", str(etc), "verify")
        assert code == 0 and verify["ok"] and verify["tables"][0]["cold_rows"] == 1000, (cwd, verify)
        code, status = _cli(cwd, "--config", str(etc), "status")
        assert code == 0, status
        views[str(cwd)] = _figures(status)
    assert len({json.dumps(v) for v in views.values()}) == 1, views
    assert views[str(tmp_path / "etc")][0][2:4] == (1000, 1000)  # hot = cold


def test_a_missing_source_table_names_the_engine_folder_it_looked_in(tmp_path, monkeypatch):
    cfg = tmp_path / "etc" / "offload.toml"
    cfg.parent.mkdir()
    cfg.write_text(RELATIVE.format(data="nodata"))  # an engine folder that does not exist: made, empty
    code, run = _cli(Path("/"), "--config", str(cfg), "run")
    assert code == 1 and run["status"] == "failed" and run["rows"] == 0
    error = run["tables"][0]["error"]
    assert f"embedded ClickHouse at {tmp_path}/etc/nodata/ch" in error["message"], error
    assert "dsn" in error["fix"] and "config file's folder" in error["fix"]


def _seed_view(cfg: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> config.Settings:
    """Offload the 1000 rows, create the view, add 500 rows in the next hours (not offloaded)."""
    s = config.load(cfg, env={})
    assert _cli(root / "elsewhere", "--config", str(cfg), "run")[1]["rows"] == 1000
    monkeypatch.chdir(root / "etc")  # chdb reads Iceberg files only below the reader's working directory
    with clickhouse(s) as ch:
        assert create_view(s, s.tables[0], sink_for(s), ch)["watermark"]["seq"] == 999
        insert_trades(ch, "trades", START_MS + 2 * H, 500, seq0=1000, step_ms=3600)
    return s


def _view_keys(s: config.Settings) -> list[int]:
    with clickhouse(s) as ch:
        return [int(r[0]) for r in ch.rows("SELECT seq FROM k2.trades_all ORDER BY seq")]


def test_a_run_from_another_folder_re_points_the_view(etc, tmp_path, monkeypatch):
    s = _seed_view(etc, tmp_path, monkeypatch)
    code, run = _cli(tmp_path / "elsewhere", "--config", str(etc), "run")
    assert code == 0 and run["status"] == "success" and run["rows"] == 500, run
    with clickhouse(s) as ch:  # the hot tier loses what was offloaded: a re-pointed view reads it from cold
        ch.command("ALTER TABLE k2.trades DELETE WHERE seq < 1400 SETTINGS mutations_sync = 2")
    assert _view_keys(s) == list(range(1500))
    assert run["tables"][0]["view"] == "k2.trades_all" and run["tables"][0]["view_error"] is None


def test_a_view_that_cannot_be_re_pointed_is_a_reported_failure(etc, tmp_path, monkeypatch, capsys):
    s = _seed_view(etc, tmp_path, monkeypatch)
    command = Source.command

    def refuse_views(self: Source, sql: str) -> None:  # the engine refuses the DDL (disk full, read-only)
        if sql.startswith("CREATE OR REPLACE VIEW"):
            raise SourceError(
                "ClickHouse rejected a query: Code: 243. Cannot reserve 1.00 MiB (NOT_ENOUGH_SPACE)",
                "free space on the engine's disk",
            )
        command(self, sql)

    monkeypatch.setattr(Source, "command", refuse_views)
    assert cli.main(["--config", str(etc), "--json", "run"]) == 1
    run = json.loads(capsys.readouterr().out)
    table = run["tables"][0]
    assert run["status"] == "partial" and table["status"] == "ok" and table["rows"] == 500
    assert table["view"] == "k2.trades_all" and table["view_error"]["type"] == "source_error"
    assert "NOT_ENOUGH_SPACE" in table["view_error"]["message"]

    assert cli.main(["--config", str(etc), "run"]) == 0  # nothing moved: no view to re-point
    capsys.readouterr()
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + 4 * H, 5, seq0=1500, step_ms=3600)
    assert cli.main(["--config", str(etc), "run"]) == 1
    text = capsys.readouterr().out
    assert "trades: view k2.trades_all not re-pointed (serves the old watermark)" in text, text
    assert "fix: free space on the engine's disk" in text
    monkeypatch.setattr(Source, "command", command)
    assert _view_keys(s) == list(range(1505))  # still exact: pinned to the old watermark, newer rows from hot


def test_an_engine_folder_through_a_symlink_offloads(tmp_path, monkeypatch):
    """/data -> /mnt/disk1: clickhouse-connect's chdb client starts the engine on the resolved path, and the
    Arrow handle and the lock must ask for that same path (chdb refuses a second spelling)."""
    from conftest import cold, keys_of
    from iceberg_offload.engine.offload import run_cycle

    (tmp_path / "disk1").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "disk1")
    cfg = tmp_path / "offload.toml"
    cfg.write_text(RELATIVE.format(data=tmp_path / "data"))
    s = config.load(cfg, env={})
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 100)
    res = run_cycle(s).tables[0]
    assert res.status == "ok" and res.rows == 100, res.error
    assert sorted(seq for (seq,) in keys_of(cold(s, "trades"), "seq")) == list(range(100))
    assert (tmp_path / "disk1" / "ch").is_dir()
    props = sink_for(s).load("trades").properties
    assert props["offload.source.server"] == f"chdb://{tmp_path}/disk1/ch"
