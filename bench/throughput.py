"""Offload throughput against ClickHouse's own Parquet export, measured side by side in one run.

    python bench/throughput.py                 # 10 M bronze-trade rows, 3 alternating rounds
    python bench/throughput.py --rows 30000000 --rounds 1 --only offload   # the memory check
    python bench/throughput.py --schema trades --rounds 3          # the reference platform's trades table
    python bench/throughput.py --schema trades --rounds 3 --whole  # whole processes: `run` vs an exporting one
    python bench/throughput.py --schema trades --columns price,quantity   # only some columns (CPU per type)

In-process (the default), each measurement runs in its own process (peak RSS is that process's high-water
mark) and starts its clock with the engine up and the modules imported. The offload starts from an empty
catalog each round and offloads the whole table as a backlog; the export writes the same rows to one zstd
Parquet file with ClickHouse's own writer.

`--whole` times whole processes from start to exit: `iceberg-offload run --json` (the CLI with a config file:
embedded chdb:// source, SQLite catalog, local warehouse, a fresh catalog each round) against `python -c` that
imports chdb, opens the same engine and runs the export. Peak RSS is each child's (wait4).

`--columns` offloads and exports only the named columns (the timestamp and sequence columns are added to the
offload, which needs them for its watermark; the export reads the same list).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMAS = {
    "bronze": (
        "bronze_trades",
        """exchange_timestamp DateTime64(3), sequence_number UInt64, symbol LowCardinality(String),
        trade_id String, price Decimal(18, 8), quantity Decimal(18, 8), side Enum8('buy' = 1, 'sell' = 2)""",
        """SELECT fromUnixTimestamp64Milli(toInt64({start_ms} + number * {step})), number,
        ['BTC-USD', 'ETH-USD', 'SOL-USD', 'XRP-USD'][1 + number % 4], concat('t-', toString(number)),
        toDecimal64(100 + (cityHash64(number) % 10000000) / 100, 8),
        toDecimal64((cityHash64(number, 1) % 100000) / 10000, 8), if(number % 2 = 0, 'buy', 'sell')
        FROM numbers({rows})""",
    ),
    # the reference platform's trades table: three Decimal(18,8), two DateTime64(3), a DateTime, a UInt16,
    # two UInt64, a LowCardinality(String); prices and quantities with all 8 decimals used
    "trades": (
        "trades",
        """exchange_timestamp DateTime64(3), ingestion_timestamp DateTime64(3), trade_date DateTime,
        venue_id UInt16, sequence_number UInt64, trade_id UInt64, symbol LowCardinality(String),
        price Decimal(18, 8), quantity Decimal(18, 8), quote_volume Decimal(18, 8)""",
        """SELECT ts, ts + toIntervalMillisecond(5 + cityHash64(number, 2) % 400), toDateTime(ts), venue,
        number, 10000000000 + number * 7 + cityHash64(number, 3) % 7, sym, price, quantity,
        toDecimal64(toDecimal128(price, 8) * quantity, 8)
        FROM (SELECT number, fromUnixTimestamp64Milli(toInt64({start_ms} + number * {step})) AS ts,
            toUInt16(1 + cityHash64(number, 4) % 40) AS venue,
            ['BTC-USD', 'ETH-USD', 'SOL-USD', 'XRP-USD', 'ADA-USD', 'DOGE-USD', 'BTC-EUR', 'ETH-BTC']
                [1 + cityHash64(number, 5) % 8] AS sym,
            toDecimal64(1000000000 + cityHash64(number) % 6000000000000, 0) * toDecimal64('0.00000001', 8) AS price,
            toDecimal64(1 + cityHash64(number, 1) % 2000000000, 0) * toDecimal64('0.00000001', 8) AS quantity
            FROM numbers({rows}))""",
    ),
}
KEY = ("exchange_timestamp", "sequence_number")


def seed(path: Path, schema: str, rows: int) -> None:
    import chdb

    table, columns, select = SCHEMAS[schema]
    conn = chdb.connect(str(path))
    conn.query("CREATE DATABASE IF NOT EXISTS k2")
    conn.query(
        f"CREATE TABLE IF NOT EXISTS k2.{table} ({columns}) ENGINE = MergeTree "
        f"PARTITION BY toYYYYMMDD(exchange_timestamp) ORDER BY (exchange_timestamp, sequence_number)"
    )
    have = int(conn.query(f"SELECT count() FROM k2.{table}", "CSV").bytes().strip() or 0)
    if have != rows:
        conn.query(f"TRUNCATE TABLE k2.{table}")
        start_ms = (int(time.time()) - 6 * 86400) * 1000  # six days of trades, all settled
        step = max(1, 5 * 86400 * 1000 // rows)
        conn.query(f"INSERT INTO k2.{table} " + select.format(start_ms=start_ms, step=step, rows=rows))
        conn.query(f"OPTIMIZE TABLE k2.{table} FINAL")
    conn.close()


def export_sql(table: str, columns: list[str], out: Path) -> str:
    cols = ", ".join(columns) if columns else "*"
    return (
        f"INSERT INTO FUNCTION file('{out}', 'Parquet') SELECT {cols} FROM k2.{table} "
        f"SETTINGS output_format_parquet_compression_method = 'zstd'"
    )


def child_export(ch: Path, out: Path, table: str, columns: list[str]) -> dict[str, float]:
    import chdb

    conn = chdb.connect(str(ch))
    out.unlink(missing_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    conn.query(export_sql(table, columns, out))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "bytes": out.stat().st_size}


def write_config(ch: Path, work: Path, table: str, columns: list[str], batch_rows: int) -> Path:
    """A fresh catalog and warehouse under work/catalog, and the config that offloads `table` into it."""
    cat = work / "catalog"
    shutil.rmtree(cat, ignore_errors=True)
    cat.mkdir(parents=True)
    listed = f"columns = {json.dumps([*KEY, *(c for c in columns if c not in KEY)])}\n" if columns else ""
    cfg = work / "offload.toml"
    cfg.write_text(f"""[source]\ndsn = "chdb://{ch}"\ndatabase = "k2"\n
[catalog]\nuri = "sqlite:///{cat}/catalog.db"\nwarehouse = "file://{cat}/warehouse"\n
[offload]\nsettle_seconds = 0\nbatch_rows = {batch_rows}\n
[[tables]]\nsource = "{table}"\ntimestamp_column = "{KEY[0]}"
sequence_column = "{KEY[1]}"\npartition_by = "day"\n{listed}""")
    return cfg


def warehouse_bytes(work: Path) -> int:
    return sum(f.stat().st_size for f in (work / "catalog" / "warehouse").rglob("*.parquet"))


def child_offload(ch: Path, work: Path, table: str, columns: list[str], batch_rows: int) -> dict[str, float]:
    from iceberg_offload import config
    from iceberg_offload.engine.offload import run_cycle
    from iceberg_offload.process import limit_malloc_arenas

    limit_malloc_arenas()
    settings = config.load(write_config(ch, work, table, columns, batch_rows), env={})
    warm_up()
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_cycle(settings)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = result.tables[0]
    assert out.status == "ok", out.error
    done = {"rows": out.rows, "commits": out.commits, "bytes": warehouse_bytes(work)}
    return {"seconds": seconds, "cpu_seconds": cpu, **done}


def warm_up() -> None:
    """Start both clocks alike: the export's starts with its modules imported, so the offload's starts after
    importing the modules a worker process has loaded anyway. (The export's engine is also up before its
    clock starts; the offload opens its own inside the measurement.)"""
    import chdb  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sqlalchemy  # noqa: F401
    from pyiceberg.catalog.sql import SqlCatalog  # noqa: F401


def timed(argv: list[str]) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MB, stdout) of one whole child process (its own rusage, from
    wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise SystemExit(f"{argv[:4]} failed ({code}):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout


def measure(kind: str, ch: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    table = SCHEMAS[args.schema][0]
    cols = ",".join(args.columns)
    if not args.whole:
        argv = [sys.executable, __file__, "_child", kind, str(ch), str(work), table, cols, str(args.batch_rows)]
        return json.loads(timed(argv)[3].strip().splitlines()[-1])
    if kind == "export":
        out = work / "export.parquet"
        out.unlink(missing_ok=True)
        code = f"import chdb\nconn = chdb.connect({str(ch)!r})\nconn.query({export_sql(table, args.columns, out)!r})"
        seconds, cpu, peak, _ = timed([sys.executable, "-c", code])
        return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak, "bytes": out.stat().st_size}
    cfg = write_config(ch, work, table, args.columns, args.batch_rows)
    argv = [sys.executable, "-m", "iceberg_offload.cli", "-c", str(cfg), "run", "--json"]
    seconds, cpu, peak, stdout = timed(argv)
    tables = json.loads(stdout)["tables"]
    assert tables[0]["status"] == "ok", tables
    done = {"rows": tables[0]["rows"], "bytes": warehouse_bytes(work)}
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak, **done}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--schema", choices=sorted(SCHEMAS), default="bronze")
    ap.add_argument("--whole", action="store_true", help="whole processes: iceberg-offload run vs an export")
    ap.add_argument("--columns", type=lambda s: [c for c in s.split(",") if c], default=[])
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out")
    ap.add_argument("--only", choices=["both", "offload", "export"], default="both")
    ap.add_argument("--batch-rows", type=int, default=250_000)
    args = ap.parse_args()
    if args.columns:  # the offload needs the key; the export reads the same columns
        args.columns = [*KEY, *(c for c in args.columns if c not in KEY)]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ch = work / (f"ch-{args.rows}" if args.schema == "bronze" else f"ch-{args.schema}-{args.rows}")
    t0 = time.perf_counter()
    # in a child: a parent grown by the engine would pass its peak RSS on to every child it forks (Linux keeps
    # the high-water mark across fork and exec)
    subprocess.run([sys.executable, __file__, "_seed", str(ch), args.schema, str(args.rows)], check=True)
    print(f"seeded {args.rows:,} rows in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    kinds = ["export", "offload"] if args.only == "both" else [args.only]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
            res = measure(kind, ch, work, args)
            results[kind].append(res)
            print(f"round {r + 1} {kind}: {json.dumps(res)}", file=sys.stderr)
    summary: dict[str, object] = {}
    for kind, runs in results.items():
        secs = statistics.median(x["seconds"] for x in runs)
        summary[kind] = {
            "rows_per_s": round(args.rows / secs),
            "median_seconds": round(secs, 2),
            "seconds": [round(x["seconds"], 2) for x in runs],
            "median_cpu_seconds": round(statistics.median(x["cpu_seconds"] for x in runs), 2),
            "peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs)),
            "parquet_mb": round(runs[0]["bytes"] / 2**20, 1),
            "runs": len(runs),
        }
    if len(kinds) == 2:
        ratios = [e["seconds"] / o["seconds"] for e, o in zip(results["export"], results["offload"], strict=True)]
        summary["ratio_offload_over_export"] = round(statistics.median(ratios), 2)
        summary["ratio_per_round"] = [round(x, 2) for x in ratios]
        cpu = [e["cpu_seconds"] / o["cpu_seconds"] for e, o in zip(results["export"], results["offload"], strict=True)]
        summary["cpu_ratio_offload_over_export"] = round(statistics.median(cpu), 2)
    summary |= {"schema": args.schema, "whole": args.whole, "rows": args.rows, "columns": args.columns}
    summary["batch_rows"] = args.batch_rows
    suffix = f"{args.schema}-{'whole-' if args.whole else ''}{args.rows}"
    (work / f"results-{suffix}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_seed":
        seed(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, ch_path, work_path, tbl = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
        picked, batch = [c for c in sys.argv[6].split(",") if c], int(sys.argv[7])
        out = (
            child_export(ch_path, work_path / "export.parquet", tbl, picked)
            if kind == "export"
            else child_offload(ch_path, work_path, tbl, picked, batch)
        )
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
    else:
        main()
