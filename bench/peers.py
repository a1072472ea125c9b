"""Peers in the same run: our offload, dlt's Iceberg destination and ClickHouse's own Iceberg writer.

    python bench/peers.py                        # 3 M bronze-trade rows, 2 rounds, peers alternating
    python bench/peers.py --rows 5000000 --rounds 3 --only ours,clickhouse

Each measurement is a process of its own; its peak RSS is that process's high-water mark (wait4) and its
clock starts with the modules imported and the engine open (bench/throughput.py's rule), while the whole
process is timed too. Every writer gets the same chdb table (seeded as bench/throughput.py seeds it) and a
fresh destination, writes day partitions, and is read back with pyiceberg: the row count and the sum of
the sequence numbers must equal the source's, or the peer is reported as wrong, not ranked.

- ours: `run_cycle` on an empty SQLite catalog, the whole table as one backlog (throughput.py's offload).
- dlt: a resource yielding pyarrow tables read from chdb (`Arrow` format, 250 k sequence numbers a query)
  into the `filesystem` destination with `table_format="iceberg"` (pyiceberg), day partitions through
  `iceberg_adapter`; runs in a separate venv (`--peers-python`; `SETUP` below creates it).
- clickhouse: `CREATE TABLE ... ENGINE = IcebergLocal(path, 'Parquet') PARTITION BY
  toRelativeDayNum(exchange_timestamp)` then `INSERT INTO ... SELECT * FROM k2.bronze_trades`, in the engine
  that holds the table (LowCardinality and Enum8 are refused by that writer: they are String there).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from throughput import child_offload, seed, warm_up

PEERS_PYTHON = Path("/tmp/peers-venv/bin/python")
SETUP = (
    "python3.11 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install 'dlt[filesystem,pyiceberg]==1.31.0' "
    "pyiceberg==0.12.0 pyiceberg-core==0.11.0 chdb==4.4.0 chdb-core==26.9.0 pyarrow==26.0.1"
)
KINDS = ("ours", "dlt", "clickhouse")
ICE_COLUMNS = """exchange_timestamp DateTime64(3), sequence_number UInt64, symbol String, trade_id String,
    price Decimal(18, 8), quantity Decimal(18, 8), side String"""
# ClickHouse's Arrow output gives Enum8 as its Int8 code and DateTime64(3) as timestamp[ms], which
# pyiceberg's day transform refuses: the labels and microseconds are asked for in the query
DLT_SELECT = """toDateTime64(exchange_timestamp, 6, 'UTC') AS exchange_timestamp, sequence_number, symbol,
    trade_id, price, quantity, CAST(side, 'String') AS side"""
# what dlt's load step imports on first use (12% of its samples in a profile); pyiceberg's schema check
# imports rich
DLT_LAZY_IMPORTS = (
    "dlt.common.libs.pyiceberg",
    "dlt.destinations.impl.filesystem.filesystem",
    "dlt.destinations.impl.filesystem.iceberg_partition_spec",
    "pyiceberg.catalog.sql",
    "pyiceberg.io.pyarrow",
    "rich.console",
)
# what our offload imports on first use inside run_cycle (a py-spy profile at 300 k rows: pyiceberg's
# pyarrow FileIO, which loads pandas, and clickhouse-connect were most of its clock)
OURS_LAZY_IMPORTS = ("iceberg_offload.engine.offload", "pyiceberg.io.pyarrow", "clickhouse_connect")
ICE_SETTINGS = "allow_experimental_insert_into_iceberg = 1"


def child_clickhouse(ch: Path, work: Path, insert_threads: int) -> dict:
    import chdb

    os.chdir(work)  # the engine's user_files_path is its working directory; IcebergLocal writes only under it
    conn = chdb.connect(str(ch))
    conn.query("CREATE DATABASE IF NOT EXISTS peers")
    conn.query("DROP TABLE IF EXISTS peers.bronze_trades")
    dest = work / "iceberg"
    shutil.rmtree(dest, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    conn.query(
        f"CREATE TABLE peers.bronze_trades ({ICE_COLUMNS}) ENGINE = IcebergLocal('{dest}', 'Parquet') "
        f"PARTITION BY toRelativeDayNum(exchange_timestamp)"
    )
    threads = f", max_insert_threads = {insert_threads}" if insert_threads else ""  # one snapshot per thread
    conn.query(f"INSERT INTO peers.bronze_trades SELECT * FROM k2.bronze_trades SETTINGS {ICE_SETTINGS}{threads}")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.query("DROP TABLE peers.bronze_trades")  # the files stay (iceberg_delete_data_on_drop = 0)
    conn.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "table": str(dest)}


def child_dlt(ch: Path, work: Path, batch_rows: int) -> dict:
    import chdb
    import dlt
    import pyarrow as pa
    from dlt.destinations.impl.filesystem.iceberg_adapter import iceberg_adapter, iceberg_partition

    for name in DLT_LAZY_IMPORTS:  # before the clock, as our offload's modules are
        importlib.import_module(name)

    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    for d in ("bucket", "pipelines"):
        shutil.rmtree(work / d, ignore_errors=True)
    conn = chdb.connect(str(ch))
    lo, hi = (
        int(x)
        for x in conn.query("SELECT min(sequence_number), max(sequence_number) FROM k2.bronze_trades", "CSV")
        .bytes()
        .split(b",")
    )

    @dlt.resource(name="bronze_trades", table_format="iceberg", write_disposition="append")
    def trades():  # type: ignore[no-untyped-def]
        for start in range(lo, hi + 1, batch_rows):
            res = conn.query(
                f"SELECT {DLT_SELECT} FROM k2.bronze_trades WHERE sequence_number >= {start} "
                f"AND sequence_number < {start + batch_rows} "
                "SETTINGS output_format_arrow_compression_method = 'none'",
                "Arrow",
            )
            yield pa.ipc.open_file(pa.py_buffer(res.bytes())).read_all()

    pipeline = dlt.pipeline(
        pipeline_name="peers",
        pipelines_dir=str(work / "pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=(work / "bucket").as_uri()),
        dataset_name="k2",
    )
    t0, c0 = time.perf_counter(), time.process_time()  # run() is these three steps, timed apart
    pipeline.extract(iceberg_adapter(trades, partition=iceberg_partition.day("exchange_timestamp")))
    t1 = time.perf_counter()
    pipeline.normalize()
    t2 = time.perf_counter()
    pipeline.load(raise_on_failed_jobs=True)
    t3, cpu = time.perf_counter(), time.process_time() - c0
    conn.close()
    steps = {"extract": round(t1 - t0, 2), "normalize": round(t2 - t1, 2), "load": round(t3 - t2, 2)}
    return {
        "seconds": t3 - t0,
        "cpu_seconds": cpu,
        "steps": steps,
        "table": str(work / "bucket" / "k2" / "bronze_trades"),
    }


def child_ours(ch: Path, work: Path, batch_rows: int) -> dict:
    for name in OURS_LAZY_IMPORTS:  # before the clock, as dlt's are
        importlib.import_module(name)
    warm_up()
    c0 = time.process_time()  # CPU from here also covers the config load before child_offload's clock
    out = child_offload(ch, work, batch_rows)
    cpu = time.process_time() - c0
    (table,) = (work / "catalog" / "warehouse").glob("*/bronze_trades")
    return {"seconds": out["seconds"], "cpu_seconds": cpu, "commits": out["commits"], "table": str(table)}


def measure(kind: str, python: Path, ch: Path, work: Path, batch_rows: int, insert_threads: int) -> dict:
    """One child process: its result, its whole-process wall time and its peak RSS (from wait4)."""
    work.mkdir(parents=True, exist_ok=True)
    out, err = work / "child.out", work / "child.err"
    t0 = time.perf_counter()
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(
            [str(python), __file__, "_child", kind, str(ch), str(work), str(batch_rows), str(insert_threads)],
            stdout=o,
            stderr=e,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed ({proc.returncode}):\n{err.read_text()[-3000:]}")
    res = json.loads(out.read_text().strip().splitlines()[-1])
    res["process_seconds"] = wall
    res["peak_rss_mb"] = usage.ru_maxrss / 1024
    res["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return res


def inspect(table: Path) -> dict:
    """What a writer left: the current metadata read back with pyiceberg (rows and the sum of sequence
    numbers through a scan), its snapshots, data files and metadata files, and the Iceberg types."""
    import pyarrow.compute as pc
    from pyiceberg.table import StaticTable

    metas = (table / "metadata").glob("*.metadata.json")
    latest = max(metas, key=lambda p: int(re.match(r"v?(\d+)", p.name).group(1)))  # type: ignore[union-attr]
    tbl = StaticTable.from_metadata(str(latest))
    sizes = sorted(t.file.file_size_in_bytes for t in tbl.scan().plan_files())
    rows = total = 0
    for batch in tbl.scan(selected_fields=("sequence_number",)).to_arrow_batch_reader():
        rows += batch.num_rows
        total += pc.sum(batch.column(0)).as_py() or 0
    return {
        "rows": rows,
        "sequence_sum": total,
        "snapshots": len(tbl.metadata.snapshots),
        "data_files": len(sizes),
        "data_mb": round(sum(sizes) / 2**20, 1),
        "file_mb_min_median_max": [round(x / 2**20, 2) for x in (sizes[0], statistics.median(sizes), sizes[-1])]
        if sizes
        else [],
        "parquet_on_disk": sum(1 for _ in table.rglob("*.parquet")),
        "metadata_files": sum(1 for p in (table / "metadata").iterdir() if p.is_file()),
        "partition_spec": str(tbl.spec()),
        "types": {f.name: str(f.field_type) for f in tbl.schema().fields},
    }


def source_truth(ch: Path) -> tuple[int, int]:
    import chdb

    conn = chdb.connect(str(ch))
    raw = conn.query("SELECT count(), sum(sequence_number) FROM k2.bronze_trades", "CSV").bytes()
    conn.close()
    rows, total = (int(x) for x in raw.split(b","))
    return rows, total


def summarize(kind: str, runs: list[dict], rows: int) -> dict:
    secs = statistics.median(r["seconds"] for r in runs)
    last = runs[-1]
    return {
        "rows_per_s": round(rows / secs),
        "median_seconds": round(secs, 2),
        "median_process_seconds": round(statistics.median(r["process_seconds"] for r in runs), 2),
        "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs), 2),
        "median_process_cpu_seconds": round(statistics.median(r["process_cpu_seconds"] for r in runs), 2),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
        "correct": all(r["correct"] for r in runs),
        "runs": len(runs),
        **({"steps_last_run": last["steps"]} if "steps" in last else {}),
        "rows_read_back": [r["files"]["rows"] for r in runs],
        **{k: last["files"][k] for k in last["files"] if k not in ("rows", "sequence_sum")},
    }


def markdown(summary: dict) -> str:
    head = ["writer", "rows/s", "s (clock)", "s (process)", "CPU s (clock)", "peak RSS", "rows ok", "snapshots"]
    head += ["data files", "MB", "file MB min/median/max", "metadata files"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in (k for k in KINDS if k in summary):
        s = summary[kind]
        cells = [kind, f"{s['rows_per_s'] / 1e6:.2f} M", s["median_seconds"], s["median_process_seconds"]]
        cells += [s["median_cpu_seconds"], f"{s['peak_rss_mb'] / 1024:.2f} GB", "yes" if s["correct"] else "**no**"]
        cells += [s["snapshots"], s["data_files"], s["data_mb"], "/".join(map(str, s["file_mb_min_median_max"]))]
        lines.append("| " + " | ".join(map(str, [*cells, s["metadata_files"]])) + " |")
    for key, value in {**summary.get("ratios", {}), **summary.get("cpu_ratios", {})}.items():
        lines.append(f"| **{key}** | **{value}** |" + " |" * (len(head) - 2))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out" / "peers")
    ap.add_argument("--only", default=",".join(KINDS), help="comma-separated: ours,dlt,clickhouse")
    ap.add_argument("--batch-rows", type=int, default=250_000)
    ap.add_argument(
        "--clickhouse-insert-threads", type=int, default=0, help="max_insert_threads for its INSERT (0: the default)"
    )
    ap.add_argument("--peers-python", type=Path, default=PEERS_PYTHON, help="python of the venv with dlt")
    args = ap.parse_args()
    kinds = [k for k in KINDS if k in args.only.split(",")]
    if "dlt" in kinds and not args.peers_python.exists():
        raise SystemExit(f"no {args.peers_python}; create the peers venv first:\n  {SETUP}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ch = work / f"ch-{args.rows}"
    t0 = time.perf_counter()
    seed(ch, args.rows)
    truth = source_truth(ch)
    print(f"seeded {args.rows:,} rows in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            python = args.peers_python if kind == "dlt" else Path(sys.executable)
            res = measure(kind, python, ch, work / kind, args.batch_rows, args.clickhouse_insert_threads)
            res["files"] = inspect(Path(res["table"]))
            res["correct"] = (res["files"]["rows"], res["files"]["sequence_sum"]) == truth
            res["load_average"] = round(os.getloadavg()[0], 1)
            results[kind].append(res)
            print(f"round {r + 1} {kind}: {json.dumps(res)}", file=sys.stderr)
    summary: dict = {k: summarize(k, v, args.rows) for k, v in results.items()}
    if "ours" in summary:  # rows/s ratio of the medians, and each round's own ratio (same minute, same load)
        peers = [k for k in kinds if k != "ours" and summary[k]["correct"]]  # a wrong writer is not ranked
        summary["not_ranked"] = [k for k in kinds if not summary[k]["correct"]]
        summary["ratios"] = {
            f"ours / {k}": round(summary["ours"]["rows_per_s"] / summary[k]["rows_per_s"], 2) for k in peers
        }
        summary["cpu_ratios"] = {  # the peer's CPU seconds over ours: less bent by a busy machine than wall time
            f"{k} / ours": round(summary[k]["median_cpu_seconds"] / summary["ours"]["median_cpu_seconds"], 2)
            for k in peers
        }
        summary["ratios_per_round"] = {
            f"ours / {k}": [
                round(p["seconds"] / o["seconds"], 2) for o, p in zip(results["ours"], results[k], strict=True)
            ]
            for k in peers
        }
    summary.update(rows=args.rows, rounds=args.rounds, batch_rows=args.batch_rows)
    summary["clickhouse_insert_threads"] = args.clickhouse_insert_threads or "default"
    (work / f"results-{args.rows}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(markdown(summary))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, ch_path, work_path, batch = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
        if kind == "ours":
            out = child_ours(ch_path, work_path, batch)
        elif kind == "dlt":
            out = child_dlt(ch_path, work_path, batch)
        else:
            out = child_clickhouse(ch_path, work_path, int(sys.argv[6]))
        print(json.dumps(out))
    else:
        main()
