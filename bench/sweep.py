"""The late-row sweep's cost on an idle cycle: `run_cycle` over 10 idle tables, without and with the sweep.

python bench/sweep.py            # in-process medians of 5 cycles each, side by side
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from iceberg_offload import config
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.engine.offload import run_cycle


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/offload-bench-sweep")
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tables = "".join(
        f'[[tables]]\nsource = "t{i}"\ntimestamp_column = "ts"\nsequence_column = "seq"\n' for i in range(args.tables)
    )
    for lookback in (0, 10800):
        (root / "offload.toml").write_text(
            f'[source]\ndsn = "chdb://{root}/ch"\ndatabase = "k2"\n[catalog]\nuri = "sqlite:///{root}/catalog.db"\n'
            f'warehouse = "file://{root}/warehouse"\n[offload]\nsettle_seconds = 0\n'
            f"late_lookback_seconds = {lookback}\n" + tables
        )
        settings = config.load(root / "offload.toml", env={})
        with open_source(settings.source) as ch:
            ch.command("CREATE DATABASE IF NOT EXISTS k2")
            for i in range(args.tables):
                ch.command(
                    f"CREATE TABLE IF NOT EXISTS k2.t{i} (ts DateTime64(3), seq UInt64) ENGINE = MergeTree "
                    f"ORDER BY (ts, seq)"
                )
                if not ch.rows(f"SELECT count() FROM k2.t{i}")[0][0]:
                    ch.command(
                        f"INSERT INTO k2.t{i} SELECT now64(3) - INTERVAL 2 HOUR + toIntervalSecond(number), "
                        f"number FROM numbers(5000)"
                    )
        run_cycle(settings)
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            run_cycle(settings)
            times.append(time.perf_counter() - started)
        print(
            f"late_lookback_seconds {lookback}: idle {args.tables}-table cycle, median {statistics.median(times):.3f} s"
        )


if __name__ == "__main__":
    main()
