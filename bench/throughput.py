"""Offload throughput against ClickHouse's own Parquet export, measured side by side in one run.

    python bench/throughput.py                 # 10 M bronze-trade rows, 3 alternating rounds
    python bench/throughput.py --rows 30000000 --rounds 1 --only offload   # the memory check

Each measurement runs in its own process (peak RSS is that process's high-water mark) and starts its clock
with the engine up and the modules imported. The offload starts from an empty catalog each round and
offloads the whole table as a backlog; the export writes the same rows to one zstd Parquet file with
ClickHouse's own writer.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DDL = """CREATE TABLE IF NOT EXISTS k2.bronze_trades (
    exchange_timestamp DateTime64(3), sequence_number UInt64, symbol LowCardinality(String),
    trade_id String, price Decimal(18, 8), quantity Decimal(18, 8), side Enum8('buy' = 1, 'sell' = 2)
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(exchange_timestamp) ORDER BY (exchange_timestamp, sequence_number)"""


def seed(path: Path, rows: int) -> None:
    import chdb

    conn = chdb.connect(str(path))
    conn.query("CREATE DATABASE IF NOT EXISTS k2")
    conn.query(DDL)
    have = int(conn.query("SELECT count() FROM k2.bronze_trades", "CSV").bytes().strip() or 0)
    if have != rows:
        conn.query("TRUNCATE TABLE k2.bronze_trades")
        start_ms = (int(time.time()) - 6 * 86400) * 1000  # six days of trades, all settled
        step = max(1, 5 * 86400 * 1000 // rows)
        conn.query(f"""INSERT INTO k2.bronze_trades SELECT
            fromUnixTimestamp64Milli(toInt64({start_ms} + number * {step})), number,
            ['BTC-USD', 'ETH-USD', 'SOL-USD', 'XRP-USD'][1 + number % 4], concat('t-', toString(number)),
            toDecimal64(100 + (cityHash64(number) % 10000000) / 100, 8),
            toDecimal64((cityHash64(number, 1) % 100000) / 10000, 8), if(number % 2 = 0, 'buy', 'sell')
            FROM numbers({rows})""")
        conn.query("OPTIMIZE TABLE k2.bronze_trades FINAL")
    conn.close()


def child_export(ch: Path, out: Path) -> dict[str, float]:
    import chdb

    conn = chdb.connect(str(ch))
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    conn.query(
        f"INSERT INTO FUNCTION file('{out}', 'Parquet') SELECT * FROM k2.bronze_trades "
        f"SETTINGS output_format_parquet_compression_method = 'zstd'"
    )
    seconds = time.perf_counter() - t0
    conn.close()
    return {"seconds": seconds, "bytes": out.stat().st_size}


def child_offload(ch: Path, work: Path, batch_rows: int) -> dict[str, float]:
    from iceberg_offload import config
    from iceberg_offload.engine.offload import run_cycle
    from iceberg_offload.process import limit_malloc_arenas

    limit_malloc_arenas()
    cat = work / "catalog"
    shutil.rmtree(cat, ignore_errors=True)
    cat.mkdir(parents=True)
    cfg = work / "offload.toml"
    cfg.write_text(f"""[source]\ndsn = "chdb://{ch}"\ndatabase = "k2"\n
[catalog]\nuri = "sqlite:///{cat}/catalog.db"\nwarehouse = "file://{cat}/warehouse"\n
[offload]\nsettle_seconds = 0\nbatch_rows = {batch_rows}\n
[[tables]]\nsource = "bronze_trades"\ntimestamp_column = "exchange_timestamp"
sequence_column = "sequence_number"\npartition_by = "day"\n""")
    settings = config.load(cfg, env={})
    warm_up()
    t0 = time.perf_counter()
    result = run_cycle(settings)
    seconds = time.perf_counter() - t0
    table = result.tables[0]
    assert table.status == "ok", table.error
    size = sum(f.stat().st_size for f in (cat / "warehouse").rglob("*.parquet"))
    return {"seconds": seconds, "rows": table.rows, "commits": table.commits, "bytes": size}


def warm_up() -> None:
    """Start both clocks alike: the export's starts with its modules imported, so the offload's starts after
    importing the modules a worker process has loaded anyway. (The export's engine is also up before its
    clock starts; the offload opens its own inside the measurement.)"""
    import chdb  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sqlalchemy  # noqa: F401
    from pyiceberg.catalog.sql import SqlCatalog  # noqa: F401


def measure(kind: str, ch: Path, work: Path, batch_rows: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "_child", kind, str(ch), str(work), str(batch_rows)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out")
    ap.add_argument("--only", choices=["both", "offload", "export"], default="both")
    ap.add_argument("--batch-rows", type=int, default=250_000)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ch = work / f"ch-{args.rows}"
    t0 = time.perf_counter()
    seed(ch, args.rows)
    print(f"seeded {args.rows:,} rows in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    kinds = ["export", "offload"] if args.only == "both" else [args.only]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
            res = measure(kind, ch, work, args.batch_rows)
            results[kind].append(res)
            print(f"round {r + 1} {kind}: {res}", file=sys.stderr)
    summary = {}
    for kind, runs in results.items():
        secs = statistics.median(x["seconds"] for x in runs)
        summary[kind] = {
            "rows_per_s": round(args.rows / secs),
            "median_seconds": round(secs, 2),
            "peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs)),
            "parquet_mb": round(runs[0]["bytes"] / 2**20, 1),
            "runs": len(runs),
        }
    if len(kinds) == 2:
        summary["ratio_offload_over_export"] = round(
            summary["offload"]["rows_per_s"] / summary["export"]["rows_per_s"], 2
        )
    summary["rows"] = args.rows
    summary["batch_rows"] = args.batch_rows
    (work / f"results-{args.rows}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, ch_path, work_path, batch = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
        out = (
            child_export(ch_path, work_path / "export.parquet")
            if kind == "export"
            else child_offload(ch_path, work_path, batch)
        )
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
    else:
        main()
