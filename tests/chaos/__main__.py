"""python -m tests.chaos --cycles N --seed S [--root DIR] [--json]"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .harness import run


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description="kill things, then count rows")
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="offload-chaos-"))
    report = run(root, args.cycles, args.seed, log=sys.stderr)
    print(json.dumps(report.as_dict(), indent=2))
    return (
        0
        if report.rows_lost == 0
        and report.rows_not_offloaded == 0
        and report.rows_duplicated == 0
        and report.rows_unexpected == 0
        and report.windows_written_twice == 0
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
