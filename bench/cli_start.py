"""Wall time of `iceberg-offload --help` (and `<command> --help`): what an operator waits before any work.

    python bench/cli_start.py                          # this checkout, 10 runs of each
    python bench/cli_start.py --code /tmp/old/src      # another checkout's code beside this one's

Each run is a new process (`python -m iceberg_offload.cli ...`, as the console script runs it) started with
the same interpreter; the checkouts alternate run by run, so a busy machine weighs on both alike. Prints the
median and the fastest run per checkout and command line, in seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"
COMMANDS = (["--help"], ["run", "--help"], ["maintain", "reconcile", "--help"])


def once(code: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", *argv],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--code",
        action="append",
        type=Path,
        default=[],
        help="another checkout's src folder (repeatable); this checkout's always runs",
    )
    parser.add_argument("--runs", type=int, default=10)
    opts = parser.parse_args()
    codes = [HERE, *opts.code]
    for argv in COMMANDS:
        for code in codes:
            once(code, argv)  # warm the file cache and the bytecode
        times: dict[Path, list[float]] = {c: [] for c in codes}
        for _ in range(opts.runs):
            for code in codes:
                times[code].append(once(code, argv))
        for code in codes:
            t = times[code]
            print(f"{' '.join(argv):<28} {str(code):<40} median {statistics.median(t):.3f} s  fastest {min(t):.3f} s")


if __name__ == "__main__":
    main()
