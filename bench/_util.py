"""Shared by the benchmark scripts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(work: Path, *args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """`iceberg-offload <args>` as a whole process in `work`: (seconds, stdout); exits on another code."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    took = time.perf_counter() - t0
    if out.returncode not in ok:
        raise SystemExit(f"{args} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return took, out.stdout


def embedded(work: Path) -> list[str]:
    """The config lines of the embedded default in `work`: chdb folder, SQLite catalog, local warehouse."""
    return [
        "[source]",
        f'dsn = "chdb://{work}/ch"',
        "[catalog]",
        f'uri = "sqlite:///{work}/catalog.db"',
        f'warehouse = "file://{work}/warehouse"',
    ]


def seed_tables(work: Path, tables: int, rows: int, api_port: int, metrics_port: int, *extra: str) -> list[str]:
    """An embedded config in `work` with `tables` tables t000.. (ts, seq, v; a 7-day TTL) of `rows` rows each,
    an hour old; `extra` lines go into its [prefect] section. Returns the table names."""
    names = [f"t{i:03d}" for i in range(tables)]
    lines = [
        *embedded(work),
        "[offload]",
        "settle_seconds = 0",
        "[prefect]",
        f'api_url = "http://127.0.0.1:{api_port}/api"',
        *extra,
        "[metrics]",
        f"port = {metrics_port}",
    ]
    for n in names:
        lines += ["[[tables]]", f'source = "{n}"', 'timestamp_column = "ts"', 'sequence_column = "seq"']
    (work / "offload.toml").write_text("\n".join(lines) + "\n")

    from iceberg_offload import config
    from iceberg_offload.clickhouse.client import open_source

    settings = config.load(work / "offload.toml", env={})
    start = (int(time.time()) - 3600) * 1000
    with open_source(settings.source) as ch:
        ch.command("CREATE DATABASE IF NOT EXISTS k2")
        for n in names:
            ch.command(
                f"CREATE TABLE k2.{n} (ts DateTime64(3), seq UInt64, v Float64) ENGINE = MergeTree "
                f"ORDER BY (ts, seq) TTL toDateTime(ts) + INTERVAL 7 DAY"
            )
            ch.command(
                f"INSERT INTO k2.{n} SELECT fromUnixTimestamp64Milli(toInt64({start} + number * 100)), "
                f"number, rand() FROM numbers({rows})"
            )
    return names
