"""Scale in tables: N configured tables (default 200), each with a few commits, then what an operator waits for.

    python bench/tables.py [--tables 200] [--runs 3] [--work DIR] [--no-prefect] [--src DIR --src DIR]

Measured, each as a whole process where the operator runs one: an idle `iceberg-offload run` (no new rows),
`iceberg-offload status --json`, the metrics endpoint in a process of its own (one refresh, then the median
and max of 50 scrapes while its refresh thread refreshes every second, as it would under load), and an idle
cycle through Prefect (`up`, then `trigger --wait` `--runs` times: the flow run's own Running -> Completed).
With `--src` twice (two `src/` folders, e.g. main's and a branch's), every measure runs for each, alternating,
on the same tables: the ratio is the comparison, the absolute times only context.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _util import cli, free_port, seed_tables

SCRAPES = """
import json, sys, time, urllib.request
from iceberg_offload import config
from iceberg_offload.ops.metrics import serve
s = config.load(sys.argv[1], env={})
s = s.model_copy(update={"metrics": s.metrics.model_copy(update={"refresh_seconds": 1.0})})
t0 = time.perf_counter(); handle = serve(s); first = time.perf_counter() - t0
url, took = f"http://127.0.0.1:{s.metrics.port}/metrics", []
try:
    for _ in range(int(sys.argv[2])):
        a = time.perf_counter(); urllib.request.urlopen(url, timeout=30).read(); took.append(time.perf_counter() - a)
        time.sleep(0.05)
finally:
    handle.shutdown()
print(json.dumps({"refresh_s": first, "scrapes_s": took}))
"""


def _scrapes(work: Path, env: dict[str, str], n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCRAPES, str(work / "offload.toml"), str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ms = sorted(x * 1000 for x in res["scrapes_s"])
    return {"refresh_s": res["refresh_s"], "scrape_ms_median": statistics.median(ms), "scrape_ms_max": ms[-1]}


def _prefect(work: Path, env: dict[str, str], runs: int, api_url: str) -> dict[str, float]:
    from prefect.client.orchestration import SyncPrefectClient

    cli(work, "up", env=env)
    cycles, latencies = [], []
    try:
        for _ in range(runs):
            took, out = cli(work, "trigger", "--wait", "--timeout", "900", "--json", env=env)
            res = json.loads(out)
            assert res["state"] == "COMPLETED", res
            with SyncPrefectClient(api_url) as c:
                run = c.read_flow_run(res["flow_run_id"])
            cycles.append((run.end_time - run.start_time).total_seconds())
            latencies.append(took)
    finally:
        cli(work, "down", env=env, ok=(0, 1))
    return {"prefect_idle_cycle_s": statistics.median(cycles), "trigger_to_completed_s": statistics.median(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out" / "tables")
    ap.add_argument("--no-prefect", action="store_true", help="skip the cycle through Prefect")
    ap.add_argument("--src", action="append", type=Path, default=[], help="a src/ folder to measure (twice: A/B)")
    args = ap.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD", "PREFECT", "PYTHONPATH"))}
    envs = {str(s): {**base, "PYTHONPATH": str(s.resolve())} for s in args.src} or {"installed": base}
    api_port, metrics_port = free_port(), free_port()
    t0 = time.perf_counter()
    seed_tables(work, args.tables, 1000, api_port, metrics_port, "worker_query_seconds = 2")
    first, _ = cli(work, "run", env=next(iter(envs.values())))  # the catch-up: one commit per table
    seeded = time.perf_counter() - t0
    got: dict[str, dict[str, list[float]]] = {name: {} for name in envs}

    def note(name: str, key: str, value: float) -> None:
        got[name].setdefault(key, []).append(value)

    for _ in range(args.runs):
        for name, env in envs.items():
            note(name, "idle_run_s", cli(work, "run", env=env)[0])
            note(name, "status_s", cli(work, "status", "--json", env=env, ok=(0, 1))[0])
    for name, env in envs.items():
        for key, value in _scrapes(work, env, args.scrapes).items():
            note(name, key, value)
    if not args.no_prefect:
        for name, env in envs.items():
            for key, value in _prefect(work, env, args.runs, f"http://127.0.0.1:{api_port}/api").items():
                note(name, key, value)
    summary: dict[str, object] = {
        "tables": args.tables,
        "seed_and_first_cycle_s": round(seeded, 1),
        "first_cycle_s": round(first, 1),
        "load_average": os.getloadavg(),
        "measured": {n: {k: round(statistics.median(v), 3) for k, v in m.items()} for n, m in got.items()},
    }
    if len(envs) == 2:
        (a, ma), (b, mb) = got.items()
        summary["ratio_first_over_second"] = {
            k: round(statistics.median(ma[k]) / statistics.median(mb[k]), 2) for k in ma if k in mb and mb[k][0]
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
