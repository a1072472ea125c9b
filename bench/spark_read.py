"""Spark 3.5 + the Iceberg runtime as a reader: the same tables and the same comparison as tests/test_readers.py
(the type matrix, the opt-ins and the demo's ten tables, every value of every row against ClickHouse, by key).

    pip install pyspark==3.5.7                   # Java 11 or 17 on PATH
    python bench/spark_read.py                   # the runtime jar through Spark's --packages (Maven Central)
    python bench/spark_read.py --jar /path/iceberg-spark-runtime-3.5_2.12-1.9.2.jar   # offline

Not run in CI (Spark is not installed there). Each table is read with
`spark.read.format("iceberg").load("<metadata file>")`: a static table on the catalog's metadata file, no
Spark catalog. Spark hands Python its timestamps without a zone (TimestampType in the session zone, which
the script sets to UTC, and the process's TZ too), so a timestamptz read as such counts as equal; every other
value is compared exactly as in the test (Decimal exactly, floats by their bits, bytes as bytes).
Prints one line per table and every difference; exit 1 when there is one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

import test_readers as tr  # noqa: E402 - the tables, the source values and the comparison of the suite
from conftest import clickhouse, sink_for  # noqa: E402

RUNTIME = "org.apache.iceberg:iceberg-spark-runtime-3.5_2.12:1.9.2"


def spark_session(jar: str | None) -> Any:
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master("local[1]")
        .appName("iceberg-offload-spark-read")
        .config("spark.sql.extensions", "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
    )
    builder = builder.config("spark.jars", jar) if jar else builder.config("spark.jars.packages", RUNTIME)
    return builder.getOrCreate()


def plain(v: Any) -> Any:
    """A Spark value as the test's readers give theirs: Row -> {name: value} (a struct), dict -> list of
    pairs (a map), bytearray -> bytes, a zone-less timestamp -> UTC (the session zone)."""
    from pyspark.sql import Row

    if isinstance(v, Row):
        return {k: plain(x) for k, x in v.asDict(recursive=False).items()}
    if isinstance(v, dict):
        return [(plain(k), plain(x)) for k, x in v.items()]
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, bytearray):
        return bytes(v)
    if isinstance(v, dt.datetime) and v.tzinfo is None:
        return v.replace(tzinfo=dt.UTC)
    return v


def compare_table(spark: Any, off: tr.Offloaded, ch: Any, name: str) -> dict[str, str]:
    s = off.settings
    table = sink_for(s).load(s.table(name).target)
    assert table is not None
    types, src = tr.source_rows(ch, s, name)
    keys, optins = tr.key_columns(s, name), dict(s.table(name).column_types)
    rows = [r.asDict(recursive=False) for r in spark.read.format("iceberg").load(table.metadata_location).collect()]
    rows = [{c: plain(v) for c, v in r.items()} for r in rows]
    diffs: dict[str, str] = {}
    got = {tuple(tr.as_expected(types[k], optins.get(k), r[k]) for k in keys): r for r in rows}
    if set(got) != set(src) or len(rows) != len(src):
        return {"<keys>": f"{len(rows)} rows, {len(src)} in ClickHouse, {len(set(got) ^ set(src))} keys differ"}
    for col, type_ in types.items():
        if col not in rows[0]:
            diffs[col] = "missing"
            continue
        for k, r in got.items():
            want = tr.expected(type_, optins.get(col), src[k][col])
            have = tr.as_expected(type_, optins.get(col), r[col])
            if not tr.same(have, want):
                diffs[col] = f"row {k}: {have!r} != {want!r}"
                break
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jar", help="the iceberg-spark-runtime-3.5 jar (default: --packages from Maven Central)")
    args = parser.parse_args()
    os.environ["TZ"] = "UTC"
    time.tzset()
    folder = Path(tempfile.mkdtemp(prefix="spark-read-"))
    os.chdir(folder)
    off = tr.offload_all(folder)
    spark = spark_session(args.jar)
    found = 0
    try:
        with clickhouse(off.settings) as ch:
            for name in off.tables:
                diffs = compare_table(spark, off, ch, name)
                found += len(diffs)
                print(f"{name}: {'equal' if not diffs else f'{len(diffs)} differences'}")
                for col, d in diffs.items():
                    print(f"  {col}: {d}")
    finally:
        spark.stop()
    print(f"warehouse: {folder}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
