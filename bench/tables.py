"""Scale in tables: N configured tables (default 200), each with a few commits, then what an operator waits for.

    python bench/tables.py [--tables 200] [--runs 3] [--work DIR] [--no-prefect]

Measured, each as a whole process where the operator runs one: an idle `iceberg-offload run` (no new rows),
`iceberg-offload status --json`, a metrics scrape (the exporter's cache; median of 50) and one exporter
refresh (what a scrape serves, read on the exporter's thread), and an idle cycle through Prefect (`up`, then
`trigger --wait` `--runs` times: the flow run's own Running -> Completed time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
import urllib.request
from pathlib import Path

from _util import cli, free_port, seed_tables


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out" / "tables")
    ap.add_argument("--no-prefect", action="store_true", help="skip the cycle through Prefect")
    args = ap.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD", "PREFECT"))}
    api_port, metrics_port = free_port(), free_port()
    t0 = time.perf_counter()
    seed_tables(work, args.tables, 1000, api_port, metrics_port, "worker_query_seconds = 2")
    first, _ = cli(work, "run", env=env)  # the catch-up: one commit per table
    seeded = time.perf_counter() - t0
    runs = [cli(work, "run", env=env)[0] for _ in range(args.runs)]
    status = [cli(work, "status", "--json", env=env, ok=(0, 1))[0] for _ in range(args.runs)]

    from iceberg_offload import config
    from iceberg_offload.ops.metrics import Exporter, serve

    settings = config.load(work / "offload.toml", env={})
    exporter = Exporter(settings)
    refresh = []
    for _ in range(args.runs):
        r0 = time.perf_counter()
        exporter.refresh()
        refresh.append(time.perf_counter() - r0)
    handle = serve(settings)
    url = f"http://127.0.0.1:{settings.metrics.port}/metrics"
    scrapes = []
    try:
        for _ in range(50):
            s0 = time.perf_counter()
            urllib.request.urlopen(url, timeout=30).read()
            scrapes.append(time.perf_counter() - s0)
    finally:
        handle.shutdown()
    summary: dict[str, object] = {
        "tables": args.tables,
        "seed_and_first_cycle_s": round(seeded, 1),
        "first_cycle_s": round(first, 1),
        "idle_run_s_median": round(statistics.median(runs), 2),
        "status_s_median": round(statistics.median(status), 2),
        "scrape_ms_median": round(statistics.median(scrapes) * 1000, 1),
        "scrape_ms_max": round(max(scrapes) * 1000, 1),
        "exporter_refresh_s_median": round(statistics.median(refresh), 2),
    }
    if not args.no_prefect:
        cli(work, "up", env=env)
        try:
            from prefect.client.orchestration import SyncPrefectClient

            cycles, latencies = [], []
            for _ in range(args.runs):
                took, out = cli(work, "trigger", "--wait", "--timeout", "900", "--json", env=env)
                res = json.loads(out)
                assert res["state"] == "COMPLETED", res
                with SyncPrefectClient(settings.prefect.api_url) as c:
                    run = c.read_flow_run(res["flow_run_id"])
                cycles.append((run.end_time - run.start_time).total_seconds())
                latencies.append(took)
        finally:
            cli(work, "down", env=env, ok=(0, 1))
        summary["prefect_idle_cycle_s_median"] = round(statistics.median(cycles), 2)
        summary["trigger_to_completed_s_median"] = round(statistics.median(latencies), 2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
