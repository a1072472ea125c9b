"""Scrape time of the metrics endpoint for 20 offloaded tables, and how long one full refresh takes.

    python bench/scrape.py [--tables 20] [--scrapes 50]

A scrape serves the exporter's cache, so its time does not depend on Iceberg or ClickHouse; the refresh
(run on the exporter's own thread every refresh_seconds) is what reads them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
import urllib.request
from pathlib import Path

from _util import free_port, seed_tables


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=20)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out" / "scrape")
    args = ap.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    seed_tables(work, args.tables, 10_000, free_port(), free_port())

    from iceberg_offload import config
    from iceberg_offload.engine.offload import run_cycle
    from iceberg_offload.ops.metrics import Exporter, serve

    settings = config.load(work / "offload.toml", env={})
    for _ in range(3):  # a few commits per table
        run_cycle(settings)
    exporter = Exporter(settings)
    refresh = []
    for _ in range(3):
        t0 = time.perf_counter()
        exporter.refresh()
        refresh.append(time.perf_counter() - t0)
    handle = serve(settings)
    url = f"http://127.0.0.1:{settings.metrics.port}/metrics"
    scrapes = []
    try:
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=10).read()
            scrapes.append(time.perf_counter() - t0)
    finally:
        handle.shutdown()
    print(
        json.dumps(
            {
                "tables": args.tables,
                "series_bytes": len(body),
                "scrape_ms_median": round(statistics.median(scrapes) * 1000, 1),
                "scrape_ms_max": round(max(scrapes) * 1000, 1),
                "refresh_s_median": round(statistics.median(refresh), 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
