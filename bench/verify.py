"""`verify` (keys, and --values) on an offloaded backlog, beside the offload of the same rows, in one run.

    python bench/verify.py                     # 2 M bronze-trade rows, this checkout
    python bench/verify.py --rows 2000000 --code /tmp/old/src   # another checkout's code on the same data

Each measurement runs in its own process with the modules imported before its clock starts. The table is
offloaded once (timed as the reference), then verified `--rounds` times; the result is the median and its
ratio to the offload, so runs on other machines compare.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import seed

CONFIG = """[source]
dsn = "chdb://{dir}/ch"
database = "k2"
[catalog]
uri = "sqlite:///{dir}/catalog.db"
warehouse = "file://{dir}/warehouse"
[offload]
settle_seconds = 0
[[tables]]
source = "bronze_trades"
timestamp_column = "exchange_timestamp"
sequence_column = "sequence_number"
"""

CHILD = """
import json, sys, time
from iceberg_offload import config
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.engine.compare import verify
settings = config.load(sys.argv[1], env={})
what = sys.argv[2]
start = time.perf_counter()
if what == "offload":
    rows = run_cycle(settings).tables[0].rows
else:
    kw = {"values": True} if what == "values" and "values" in verify.__code__.co_varnames else {}
    res = verify(settings, **kw)[0]
    assert res.ok, res.as_dict()
    rows = res.cold_rows
print(json.dumps({"seconds": time.perf_counter() - start, "rows": rows}))
"""


def child(cfg: Path, what: str, code: str | None) -> dict[str, float]:
    env = {**os.environ, **({"PYTHONPATH": code} if code else {})}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(cfg), what], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--code", action="append", default=None, help="src folder of a checkout to measure (repeat)")
    ap.add_argument("--dir", default="/tmp/offload-bench-verify")
    args = ap.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    seed(work / "ch", args.rows)
    for code in args.code or [None]:
        shutil.rmtree(work / "warehouse", ignore_errors=True)
        (work / "catalog.db").unlink(missing_ok=True)
        cfg = work / "offload.toml"
        cfg.write_text(CONFIG.format(dir=work))
        offload = child(cfg, "offload", code)
        result = {"code": code or "this checkout", "rows": offload["rows"], "offload_s": round(offload["seconds"], 2)}
        for what in ("keys", "values"):
            times = [child(cfg, what, code)["seconds"] for _ in range(args.rounds)]
            med = statistics.median(times)
            result[f"verify_{what}_s"] = round(med, 2)
            result[f"verify_{what}_vs_offload"] = round(med / offload["seconds"], 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"# {time.time() - started:.0f} s", file=sys.stderr)
