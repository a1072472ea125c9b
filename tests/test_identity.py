"""Two sources, one Iceberg table (issue 13, defect 3): the source identity (server without credentials,
database, table, UUID) is recorded in the table properties; another server's table of the same name, or the
same name dropped and created again, is refused before anything is written, by every path that writes;
`adopt` moves the table to a new source deliberately. Real chdb (two engine paths), real SQLite catalog."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import TRADES_DDL, cold, insert_trades, keys_of, sink_for
from iceberg_offload import config
from iceberg_offload.cli import main as cli
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.config import Settings
from iceberg_offload.engine.compare import verify
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.engine.repair import reconcile_all
from iceberg_offload.errors import ConfigError
from iceberg_offload.maintenance.compact import compact
from iceberg_offload.ops.status import status

START_MS = (int(time.time()) - 3 * 3600) * 1000


def _settings(tmp_path: Path, engine: str) -> Settings:
    """A config reading k2.trades from the chdb engine at `engine`, into the shared catalog's `trades`."""
    path = tmp_path / f"{engine}.toml"
    path.write_text(f"""[source]
dsn = "chdb://{tmp_path}/{engine}"
database = "k2"
lock_timeout_seconds = 20

[catalog]
uri = "sqlite:///{tmp_path}/catalog.db"
warehouse = "file://{tmp_path}/warehouse"

[offload]
settle_seconds = 0

[[tables]]
source = "trades"
target = "trades"
timestamp_column = "ts"
sequence_column = "seq"
""")
    return config.load(path, env={})


def _trades(s: Settings, count: int, seq0: int = 0, start_ms: int = START_MS, create: bool = True) -> None:
    with open_source(s.source) as ch:
        ch.command("CREATE DATABASE IF NOT EXISTS k2")
        if create:
            ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", start_ms, count, seq0=seq0)


def _head(s: Settings) -> tuple[int | None, str, dict[str, str]]:
    table = sink_for(s).load("trades")
    assert table is not None
    return table.metadata.current_snapshot_id, table.metadata_location, dict(table.properties)


def _cli(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _hot_keys(s: Settings) -> list[tuple[int, int]]:
    with open_source(s.source) as ch:
        return sorted((int(a), int(b)) for a, b in ch.rows("SELECT toUnixTimestamp64Milli(ts), seq FROM k2.trades"))


def _cold_keys(s: Settings) -> list[tuple[int, int]]:
    return sorted((round(ts.timestamp() * 1000), seq) for ts, seq in keys_of(cold(s, "trades"), "ts", "seq"))


def test_a_second_server_with_the_same_table_name_is_refused_everywhere(tmp_path, capsys):
    a, b = _settings(tmp_path, "a"), _settings(tmp_path, "b")
    _trades(a, 100)
    assert run_cycle(a).tables[0].rows == 100
    _trades(b, 60, seq0=1000, start_ms=START_MS + 200_000)  # other rows, later ones too: they would mix
    before = _head(a)
    res = run_cycle(b).tables[0]
    assert res.status == "failed" and res.error["type"] == "source_mismatch", res.error
    assert before[2]["offload.source.server"] == f"chdb://{tmp_path}/a" and before[2]["offload.source.uuid"]
    text = res.error["message"]
    assert f"chdb://{tmp_path}/a" in text and f"chdb://{tmp_path}/b" in text, text
    assert "iceberg-offload adopt --table trades" in res.error["fix"], res.error
    assert _head(a) == before and cold(a, "trades").num_rows == 100  # nothing written, not even the schema

    # every other path that writes refuses it too; the read-only ones report it as the table's error
    assert reconcile_all(b, apply=True)[0].error["type"] == "source_mismatch"
    with pytest.raises(ConfigError) as refused:
        compact(b, b.tables[0], sink_for(b), apply=True, min_files=1)
    assert refused.value.kind == "source_mismatch", refused.value
    assert verify(b)[0].error["type"] == "source_mismatch"
    assert status(b)[0].error["type"] == "source_mismatch"
    code, out = _cli(capsys, "run", "--config", b.path)
    assert code == 1 and out["tables"][0]["error"]["type"] == "source_mismatch", out
    code, out = _cli(
        capsys,
        "watermark",
        "set",
        "--config",
        b.path,
        "--table",
        "trades",
        "--to",
        str(START_MS // 1000 + 500),
        "--yes",
    )
    assert code == 2 and out["error"]["type"] == "source_mismatch", out
    assert _head(a) == before
    assert run_cycle(a).tables[0].status == "ok"  # the recorded source still runs


def test_a_recreated_table_is_refused_as_recreated(tmp_path):
    a = _settings(tmp_path, "a")
    _trades(a, 100)
    assert run_cycle(a).tables[0].rows == 100
    old = _head(a)
    with open_source(a.source) as ch:
        ch.command("DROP TABLE k2.trades SYNC")
    _trades(a, 50, seq0=5000, start_ms=START_MS + 500_000)  # new rows, above the watermark
    res = run_cycle(a).tables[0]
    assert res.status == "failed" and res.error["type"] == "source_mismatch", res.error
    assert "recreated" in res.error["message"] and old[2]["offload.source.uuid"] in res.error["message"], res.error
    assert _head(a) == old


def test_adopt_previews_then_continues_from_the_watermark_without_gaps_or_duplicates(tmp_path, capsys):
    a, b = _settings(tmp_path, "a"), _settings(tmp_path, "b")
    _trades(a, 100)
    assert run_cycle(a).tables[0].rows == 100
    _trades(b, 100)  # the table moved to a new server: the same rows, then new ones
    _trades(b, 50, seq0=100, start_ms=START_MS + 100_000, create=False)
    assert run_cycle(b).tables[0].error["type"] == "source_mismatch"
    before = _head(a)

    code, preview = _cli(capsys, "adopt", "--config", b.path, "--table", "trades")
    assert code == 0 and preview["changes"] and not preview["applied"], preview
    assert preview["recorded"]["server"] == f"chdb://{tmp_path}/a"
    assert preview["configured"]["server"] == f"chdb://{tmp_path}/b"
    assert (preview["cold_rows"], preview["hot_rows_above"], preview["hot_rows_at_or_below"]) == (100, 50, 100)
    assert preview["watermark"]["seq"] == 99
    assert _head(a) == before  # the preview changed nothing

    code, done = _cli(capsys, "adopt", "--config", b.path, "--table", "trades", "--yes")
    assert code == 0 and done["applied"], done
    props = _head(b)[2]
    assert props["offload.source.server"] == f"chdb://{tmp_path}/b"
    res = run_cycle(b).tables[0]
    assert res.status == "ok" and res.rows == 50 and res.watermark_before["seq"] == 99, res
    assert _cold_keys(b) == _hot_keys(b)  # hot = cold: nothing skipped, nothing twice
    assert verify(b)[0].ok
    assert run_cycle(a).tables[0].error["type"] == "source_mismatch"  # now the old server is the other one
    code, again = _cli(capsys, "adopt", "--config", b.path, "--table", "trades")
    assert code == 0 and not again["changes"], again


def test_a_table_created_before_the_identity_gets_it_on_its_next_offload(tmp_path):
    from iceberg_offload.engine.identity import KEYS

    a = _settings(tmp_path, "a")
    _trades(a, 100)
    assert run_cycle(a).tables[0].rows == 100
    table = sink_for(a).load("trades")
    assert table is not None
    table.transaction().remove_properties(*KEYS).commit_transaction()  # as an older version left it
    assert "offload.source.server" not in _head(a)[2]
    _trades(a, 10, seq0=100, start_ms=START_MS + 100_000, create=False)
    res = run_cycle(a).tables[0]
    assert res.status == "ok" and res.rows == 10, res
    props = _head(a)[2]
    assert props["offload.source.server"] == f"chdb://{tmp_path}/a" and props["offload.source.table"] == "trades"


def test_the_server_is_recorded_without_credentials():
    from iceberg_offload.engine.identity import server_of

    assert server_of("http://offload:s3cret-pw@CH.example:8123/k2?password=x") == "http://ch.example:8123"
    assert server_of("https://u:p@ch.example:8443/k2") == "https://ch.example:8443"
    assert server_of("http://[::1]:9000") == "http://[::1]:9000"


def test_watermark_set_never_takes_another_source_into_an_older_table(make_settings):
    """A table offloaded before the identity was recorded: `watermark set` with the config pointing at another
    ClickHouse table is refused like `run` (it would record that table as the source, and the next run mix
    its rows in)."""
    import pytest as _pytest

    from conftest import clickhouse
    from iceberg_offload.engine.identity import KEYS
    from iceberg_offload.errors import SourceMismatch
    from iceberg_offload.ops.watermark import set_watermark

    now = int(time.time())
    eu = make_settings([{"source": "trades_eu", "target": "trades", "timestamp_column": "ts"}])
    with clickhouse(eu) as ch:
        for t in ("trades_eu", "trades_us"):
            ch.command(f"CREATE TABLE k2.{t} (ts DateTime64(3), v UInt32) ENGINE = MergeTree ORDER BY ts")
            ch.command(
                f"INSERT INTO k2.{t} SELECT fromUnixTimestamp64Milli(toInt64(({now - 7200} + number) * 1000)),"
                f" number FROM numbers(3600)"
            )
    assert run_cycle(eu).tables[0].rows == 3600
    sink = sink_for(eu)
    sink.load("trades").transaction().remove_properties(*KEYS).commit_transaction()  # as an older release left it
    us = make_settings([{"source": "trades_us", "target": "trades", "timestamp_column": "ts"}])
    assert run_cycle(us).tables[0].error["type"] == "source_mismatch"
    with _pytest.raises(SourceMismatch, match="adopt"):
        set_watermark(us, "trades", (now - 60) * 1_000_000_000, None, apply=True)
    assert run_cycle(us).tables[0].error["type"] == "source_mismatch"
    assert cold(eu, "trades").num_rows == 3600


def test_dsn_spellings_of_one_server_are_one_server_as_clickhouse_connect_reads_them():
    """clickhouse-connect ignores the DSN scheme: https exactly on port 443 or 8443, port 8123 by default."""
    from clickhouse_connect.driver import _parse_connection_params

    from iceberg_offload.engine.identity import server_of

    same = [
        ("clickhouse://ch1", "http://ch1:8123"),
        ("clickhouse+https://ch1:8443", "https://ch1:8443"),
        ("clickhouse+http://u:p@CH1/k2", "http://ch1"),
        ("https://ch1", "http://ch1:8123"),
        ("clickhouse+https://ch1", "http://ch1:8123"),
        ("http://ch1:443", "https://ch1:443"),
    ]
    for a, b in same:
        assert server_of(a) == server_of(b), (a, b)
    assert server_of("http://ch1:8123") != server_of("http://ch2:8123")
    assert server_of("https://ch1:8443") != server_of("http://ch1:8123")
    for dsn in (
        "clickhouse://ch1",
        "https://ch1",
        "clickhouse+https://ch1:8443",
        "http://ch1:443",
        "ch1:9000",
        "http://ch1:9000",
    ):
        host, _, _, port, _, interface = _parse_connection_params(None, None, "", None, None, None, False, dsn, {})
        assert server_of(dsn) == f"{interface}://{host}:{port}", dsn  # what clickhouse-connect connects to


def test_a_recorded_server_in_an_older_spelling_agrees_without_a_uuid():
    from iceberg_offload.engine.identity import SourceIdentity, server_of

    old = SourceIdentity(server_of("clickhouse://ch1"), "k2", "trades", "")
    assert old.agrees(SourceIdentity(server_of("http://ch1:8123"), "k2", "trades", ""))
    assert old.agrees(SourceIdentity(server_of("http://ch1"), "k2", "trades", None))
    assert not old.agrees(SourceIdentity(server_of("http://ch2"), "k2", "trades", None))
    known = SourceIdentity("http://ch1:8123", "k2", "trades", "u-1")
    assert known.agrees(SourceIdentity("http://ch9:8123", "k2", "trades", "u-1"))  # one UUID, one table
    assert not known.agrees(SourceIdentity("http://ch1:8123", "k2", "trades", "u-2"))  # recreated
    assert not known.agrees(SourceIdentity("http://ch1:8123", "k2", "trades", ""))  # recreated without a UUID
    assert not known.agrees(SourceIdentity("http://ch9:8123", "k2", "trades", None))  # unknown UUID elsewhere
    assert not known.agrees(SourceIdentity("http://ch9:8123", "k2", "other", "u-1"))


def test_an_engine_folder_moved_to_another_disk_is_the_same_table(tmp_path):
    """The engine folder (and its lock file) moved, the dsn updated: same database, table and UUID."""
    import shutil

    a = _settings(tmp_path, "a")
    _trades(a, 100)
    assert run_cycle(a).tables[0].rows == 100
    uuid = _head(a)[2]["offload.source.uuid"]
    assert uuid
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    b = _settings(tmp_path, "b")
    _trades(b, 50, seq0=100, start_ms=START_MS + 100_000, create=False)
    res = run_cycle(b).tables[0]
    assert res.status == "ok" and res.rows == 50, res.error
    assert _cold_keys(b) == _hot_keys(b) and len(_cold_keys(b)) == 150  # nothing skipped, nothing twice
    assert verify(b)[0].ok and status(b)[0].error is None
    assert _head(b)[2]["offload.source.uuid"] == uuid
