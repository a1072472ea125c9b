"""Time to recover per runbook scenario: `recover --yes` start to a COMPLETED run with complete data.

Runs the fault-injection tests (tests/test_scenarios.py) on a real native stack, `--rounds` times; each
test appends its `recover --yes` duration (which ends after the run completed and doctor passed again),
then prints a markdown table of medians and maxima.

    .venv/bin/python bench/mttr.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    seconds: dict[str, list[float]] = defaultdict(list)
    steps: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mttr.jsonl"
        for i in range(args.rounds):
            tests = str(ROOT / "tests" / "test_scenarios.py")
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", tests, "-k", "not runbook"],
                cwd=ROOT,
                env={**_env(), "OFFLOAD_MTTR_OUT": str(out)},
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(proc.stdout[-3000:], file=sys.stderr)
                return 1
            print(f"round {i + 1}: {proc.stdout.strip().splitlines()[-1]}", file=sys.stderr)
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            seconds[rec["scenario"]].append(rec["seconds"])
            steps[rec["scenario"]] = rec["steps"]
    print("| scenario | recover --yes steps | median | max |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        shown = ", ".join(s for s in steps[name] if s not in ("settle unknown commits", "check again"))
        print(f"| {name} | {shown} | {statistics.median(values):.1f} s | {max(values):.1f} s |")
    return 0


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD", "PREFECT"))}


if __name__ == "__main__":
    raise SystemExit(main())
