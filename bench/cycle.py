"""Idle cycle time through Prefect for the demo's ten tables, and trigger-to-COMPLETED latency.

    python bench/cycle.py [--runs 5] [--work DIR]

Seeds the demo (ten tables, one cycle to catch up), starts the native stack with `up`, then triggers the
offload deployment `--runs` times with no new rows and reads each run's timeline from the Prefect API:
the flow run's own duration (Running -> Completed: the idle cycle) and the time from the trigger to
COMPLETED (worker poll + process start + cycle). `iceberg-offload run` (no Prefect) is timed alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from _util import cli, free_port


def run_cli(work: Path, *args: str, env: dict[str, str]) -> str:
    return cli(work, *args, env=env)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out" / "cycle")
    args = ap.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD", "PREFECT"))}
    env["OFFLOAD__PREFECT__API_URL"] = f"http://127.0.0.1:{free_port()}/api"
    env["OFFLOAD__METRICS__PORT"] = str(free_port())
    env["OFFLOAD__PREFECT__WORKER_QUERY_SECONDS"] = "2"
    run_cli(work, "demo", env=env)
    plain = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        run_cli(work, "run", env=env)
        plain.append(time.perf_counter() - t0)
    run_cli(work, "up", env=env)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("OFFLOAD")})
        from iceberg_offload import config

        settings = config.load(work / "offload.toml")
        from prefect.client.orchestration import SyncPrefectClient

        cycles, latencies = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            res = json.loads(run_cli(work, "trigger", "--wait", "--json", env=env))
            latencies.append(time.perf_counter() - t0)
            assert res["state"] == "COMPLETED", res
            with SyncPrefectClient(settings.prefect.api_url) as c:
                run = c.read_flow_run(res["flow_run_id"])
            cycles.append((run.end_time - run.start_time).total_seconds())
    finally:
        run_cli(work, "down", env=env)
    summary = {
        "tables": 10,
        "runs": args.runs,
        "idle_cycle_seconds_median": round(statistics.median(cycles), 2),
        "idle_cycle_seconds_max": round(max(cycles), 2),
        "trigger_to_completed_seconds_median": round(statistics.median(latencies), 2),
        "cli_run_seconds_median": round(statistics.median(plain), 2),
        "worker_query_seconds": 2,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
