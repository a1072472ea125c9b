"""Wall time of `iceberg-offload --help` (and `<command> --help`): what an operator waits before any work; with
`--run`, how long `iceberg-offload run` takes from process start to its first ClickHouse read.

    python bench/cli_start.py                          # this checkout, 10 runs of each
    python bench/cli_start.py --code /tmp/old/src      # another checkout's code beside this one's
    python bench/cli_start.py --run --runs 5 --code /tmp/old/src   # `run`: start -> first read, and the whole run

Each run is a new process (`python -m iceberg_offload.cli ...`, as the console script runs it) started with
the same interpreter; the checkouts alternate run by run, so a busy machine weighs on both alike. Prints the
median and the fastest run per checkout and command line, in seconds.

`--run` seeds a demo (`iceberg-offload demo`, this checkout's code) in a temporary folder, then runs
`iceberg-offload run --json` against it. The clock starts just before the process is started; the first read
is the first query the program sends to ClickHouse (`Source.rows`, `Source.command` or `Source._fetch_arrow`
entered, wrapped in the child by an import hook: the code under test is not changed). It also reports which of
pandas, Prefect and pyiceberg's pyarrow module were loaded by then, the CPU time the process had spent by then
(the child's own `time.process_time()`: less swayed by a busy machine), the whole run's wall time, and the floor: a
process that only imports the libraries the first read needs (`LIBRARIES`). The checkouts take turns going first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"
COMMANDS = (["--help"], ["run", "--help"], ["maintain", "reconcile", "--help"])
WATCHED = ("pandas", "prefect", "pyiceberg.io.pyarrow")
"""Modules whose presence at the first read the --run report names."""
LIBRARIES = ("click", "pydantic", "pyarrow", "pyiceberg.catalog.sql", "clickhouse_connect.driver._chdbclient")
"""What `run` cannot reach its first read without (the config, the SQL catalog it opens first, the embedded
source through clickhouse-connect and chdb): a process importing only these is the floor --run reports."""

FIRST_READ = r"""
import importlib.machinery, runpy, sys, time

said = []


def first_read(fn):
    def wrapper(*args, **kwargs):
        if not said:
            said.append(time.time())
            loaded = [m for m in WATCHED if m in sys.modules]
            cpu = time.process_time()
            print(f"FIRST_READ {said[0]:.6f} {cpu:.6f} {','.join(loaded) or '-'}", file=sys.stderr, flush=True)
        return fn(*args, **kwargs)

    return wrapper


class Hook:  # wraps Source's query methods once iceberg_offload.clickhouse.client has run
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "iceberg_offload.clickhouse.client":
            return None
        sys.meta_path.remove(Hook)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for attr in ("rows", "command", "_fetch_arrow"):
                setattr(module.Source, attr, first_read(getattr(module.Source, attr)))

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, Hook)
sys.argv = ["iceberg-offload", *sys.argv[1:]]
runpy.run_module("iceberg_offload.cli", run_name="__main__", alter_sys=True)
"""


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


def first_read(code: Path, config: Path) -> tuple[float, float, float, str]:
    """(seconds from process start to the first ClickHouse read, CPU seconds the process spent until then,
    seconds of the whole run, watched modules loaded at the first read) of one `iceberg-offload run --json`."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    prelude = f"WATCHED = {WATCHED!r}\n" + FIRST_READ
    started_at, started = time.time(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", prelude, "-c", str(config), "run", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("FIRST_READ ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"{code}: run exited {done.returncode}\n{done.stderr[-2000:]}")
    _, at, cpu, loaded = line.split()
    return float(at) - started_at, float(cpu), wall, loaded


def libraries_alone() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {', '.join(LIBRARIES)}"], check=True)
    return time.perf_counter() - started


def seed(folder: Path) -> Path:
    """The demo's config and data in `folder` (run there: `demo -c` with a config that does not exist yet seeds
    the engine under the working directory, not beside the config it writes)."""
    subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "demo", "--json"],
        env={**os.environ, "PYTHONPATH": str(HERE)},
        cwd=folder,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder / "offload.toml"


def bench_run(codes: list[Path], runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        config = seed(Path(tmp))
        for code in codes:
            first_read(code, config)  # warm the file cache and the bytecode
        libraries_alone()
        reads: dict[Path, list[float]] = {c: [] for c in codes}
        cpus: dict[Path, list[float]] = {c: [] for c in codes}
        walls: dict[Path, list[float]] = {c: [] for c in codes}
        loaded: dict[Path, set[str]] = {c: set() for c in codes}
        floor: list[float] = []
        for i in range(runs):
            for code in codes if i % 2 == 0 else codes[::-1]:  # each goes first in every other round
                read, cpu, wall, mods = first_read(code, config)
                reads[code].append(read)
                cpus[code].append(cpu)
                walls[code].append(wall)
                loaded[code].add(mods)
            floor.append(libraries_alone())
    print(f"iceberg-offload run --json, {runs} runs each (seconds; loaded = of {', '.join(WATCHED)} at the first read)")
    for code in codes:
        r, w = reads[code], walls[code]
        print(
            f"{str(code):<40} first read median {statistics.median(r):.3f} fastest {min(r):.3f} "
            f"(CPU {statistics.median(cpus[code]):.3f})  whole run median {statistics.median(w):.3f}  "
            f"loaded {' | '.join(sorted(loaded[code]))}"
        )
    print(f"{'libraries alone (import only)':<40} median {statistics.median(floor):.3f} fastest {min(floor):.3f}")
    for code in codes[1:]:
        ratio = statistics.median(reads[code]) / statistics.median(reads[codes[0]])
        cpu = statistics.median(cpus[code]) / statistics.median(cpus[codes[0]])
        print(f"first read: {code} / {codes[0]} = {ratio:.2f} (CPU {cpu:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--code",
        action="append",
        type=Path,
        default=[],
        help="another checkout's src folder (repeatable); this checkout's always runs",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs of each (default 10; 5 with --run)")
    parser.add_argument("--run", action="store_true", help="measure `run` to its first ClickHouse read instead")
    opts = parser.parse_args()
    codes = [HERE, *opts.code]
    if opts.run:
        bench_run(codes, opts.runs or 5)
        return
    runs = opts.runs or 10
    for argv in COMMANDS:
        for code in codes:
            once(code, argv)  # warm the file cache and the bytecode
        times: dict[Path, list[float]] = {c: [] for c in codes}
        for _ in range(runs):
            for code in codes:
                times[code].append(once(code, argv))
        for code in codes:
            t = times[code]
            print(f"{' '.join(argv):<28} {str(code):<40} median {statistics.median(t):.3f} s  fastest {min(t):.3f} s")


if __name__ == "__main__":
    main()
