"""Scale in history: one table after a year at */15 (35,040 offload commits), with and without expiry.

    python bench/history.py [--commits 35000] [--no-expiry] [--at 100,5000,35000] [--budget-s 3600]

Every commit is a real one through `Sink.commit` (the offload's code path), carrying the summary properties
`engine/offload._offload` writes, 100 rows of one 15-minute window each, on a SQLite catalog and a local
warehouse. The clock is synthetic and faked at its edges only: pyiceberg's snapshot timestamp
(`pyiceberg.table.snapshots.time`), expiry's and orphan removal's `time.time()`, and the data files' mtime
(stamped with the simulated day they were written in, so the orphan safety age means simulated days). Every
96 commits (a simulated day, 02:00) the daily maintenance runs as the maintenance flow calls it:
`maintain_table(settings, cfg, steps)` with the configured retention, compact -> expire -> orphans
(reconcile needs the hot tier and commits only when rows are late; there is none here). `--no-expiry`
drops the expire step. At each `--at` point the next `--sample` commits are timed, then the reads:
`sink.load`, `sink.watermark`, `find_commit` of the oldest retained commit id, `cold_status` (what `status`
reads from Iceberg); and the metadata: current metadata.json bytes, snapshots, manifests of the current
snapshot (count, bytes), metadata files on disk, RSS. One JSON line per point on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
from _util import embedded

from iceberg_offload import __version__, config, names
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.times import utc

DAY_COMMITS = 96
STEP_NS = 900 * 10**9
ROWS = 100


class SimClock(types.ModuleType):
    """The `time` module with `time()`/`time_ns()` answering the simulated clock (the clock edge)."""

    def __init__(self, start_ns: int) -> None:
        super().__init__("time")
        self.now_ns = start_ns

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return self.now_ns / 1e9

    def time_ns(self) -> int:
        return self.now_ns


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def settings_in(work: Path, expiry: bool) -> config.Settings:
    lines = [
        *embedded(work),
        "[[tables]]",
        'source = "trades"',
        'timestamp_column = "ts"',
        'sequence_column = "seq"',
    ]
    (work / "offload.toml").write_text("\n".join(lines) + "\n")
    return config.load(work / "offload.toml", env={})


class History:
    def __init__(self, work: Path, expiry: bool, clock: SimClock) -> None:
        from pyiceberg.types import DoubleType, LongType, NestedField, TimestampType

        self.work, self.expiry, self.clock = work, expiry, clock
        self.settings = settings_in(work, expiry)
        self.cfg = self.settings.tables[0]
        self.sink = Sink(open_catalog(self.settings.catalog), self.settings.catalog.namespace)
        fields = [
            NestedField(1, "ts", TimestampType(), required=True),
            NestedField(2, "seq", LongType(), required=True),
            NestedField(3, "v", DoubleType(), required=False),
        ]
        self.table = self.sink.ensure_table(self.cfg.target, fields, "day", "ts", True, sort_columns=("ts", "seq"))
        self.schema = self.table.schema().as_arrow()
        self.commits = 0
        self.seq = 0
        self.stamped: set[str] = set()
        self.first_commit_id = ""
        self.cpu_ms: list[float] = []

    def commit(self, windows: int = 1) -> float:
        """One offload commit of the next `windows` 15-minute windows (more than one: a fast-forward day, the
        rows a compacted day holds in one file); its `Sink.commit` in ms."""
        rows, span = ROWS * windows, STEP_NS * windows
        lower = self.clock.now_ns - span
        ts = pa.array([(lower + (i + 1) * (span // rows)) // 1000 for i in range(rows)], pa.int64())
        seq = pa.array(range(self.seq, self.seq + rows), pa.int64())
        chunk = pa.Table.from_arrays([ts.cast(pa.timestamp("us")), seq, pa.array([1.0] * rows)], schema=self.schema)
        self.seq += rows
        wm, last = self.sink.watermark(self.table)
        totals = last.totals if last is not None else (0, 0)
        run_id = f"run-{self.commits}"
        commit_id = f"{run_id}/{self.commits:012x}"
        self.first_commit_id = self.first_commit_id or commit_id
        cut_ns = lower + span
        props = {
            names.WATERMARK_TS_NS: str(cut_ns),
            names.WATERMARK_TS: utc(cut_ns),
            names.WATERMARK_SEQ: str(self.seq - 1),
            names.WATERMARK_TIMESTAMP_COLUMN: "ts",
            names.WATERMARK_SEQUENCE_COLUMN: "seq",
            names.WATERMARK_SOURCE: "k2.trades",
            names.SOURCE: "k2.trades",
            names.RUN_ID: run_id,
            names.COMMIT_ID: commit_id,
            names.WINDOW_LOWER_NS: str(wm.ts_ns) if wm else "",
            names.WINDOW_UPPER_NS: str(cut_ns),
            names.VERSION: __version__,
            names.COMMITS_TOTAL: str(totals[1] + windows),
            names.ROWS_TOTAL: str(totals[0]),
        }
        t0, c0 = time.perf_counter(), time.process_time()
        self.table, _ = self.sink.commit(self.table, [chunk], props, time.monotonic(), sorted_by=("ts", "seq"))
        took = (time.perf_counter() - t0) * 1000
        self.cpu_ms.append((time.process_time() - c0) * 1000)
        self.commits += windows
        self.clock.now_ns += span
        if windows == 1 and self.commits % DAY_COMMITS == 0:
            self.daily()
        return took

    def daily(self) -> None:
        from iceberg_offload.maintenance.daily import maintain_table

        self.stamp()
        steps = ("compact", "expire", "orphans") if self.expiry else ("compact", "orphans")
        out = maintain_table(self.settings, self.cfg, steps=steps)
        if not out["ok"]:
            raise SystemExit(json.dumps(out, default=str)[:2000])
        self.table = self.sink.load(self.cfg.target) or self.table

    def stamp(self) -> None:
        """Files written since the last day get the simulated time as their mtime (what orphans ages by)."""
        now = self.clock.now_ns
        for folder, _dirs, files in os.walk(self.work / "warehouse"):
            for name in files:
                path = os.path.join(folder, name)
                if path not in self.stamped:
                    os.utime(path, ns=(now, now))
                    self.stamped.add(path)

    def measure(self, sample: int) -> dict[str, Any]:
        from iceberg_offload.ops.status import TableStatus, cold_status

        at = self.commits
        commit_ms = [self.commit() for _ in range(sample)]
        cpu_ms = self.cpu_ms[-sample:]

        def timed(fn: Any, n: int = 5) -> float:
            took = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                took.append((time.perf_counter() - t0) * 1000)
            return round(statistics.median(took), 2)

        table = self.sink.load(self.cfg.target)
        assert table is not None
        meta, snap = table.metadata, table.current_snapshot()
        assert snap is not None
        manifests = snap.manifests(table.io)
        oldest = self.sink.history(table)[-1]
        mdir = Path(table.location().removeprefix("file://")) / "metadata"
        json_files = list(mdir.glob("*.metadata.json")) if mdir.exists() else []
        return {
            "expiry": self.expiry,
            "commits": at,
            "commit_ms": round(statistics.median(commit_ms), 2),
            "commit_ms_p90": round(sorted(commit_ms)[int(len(commit_ms) * 0.9)], 2),
            "commit_cpu_ms": round(statistics.median(cpu_ms), 2),
            "load_ms": timed(lambda: self.sink.load(self.cfg.target)),
            "watermark_ms": timed(lambda: self.sink.watermark(table)),
            "find_commit_ms": timed(lambda: self.sink.find_commit(self.cfg.target, self.first_commit_id), 3),
            "status_ms": timed(
                lambda: cold_status(self.cfg, self.sink, TableStatus(self.cfg.target, "bronze", "trades")), 3
            ),
            "metadata_json_bytes": os.path.getsize(table.metadata_location.removeprefix("file://")),
            "snapshots": len(meta.snapshots),
            "snapshot_log": len(meta.snapshot_log),
            "metadata_log": len(meta.metadata_log),
            "manifests": len(manifests),
            "manifest_bytes": sum(m.manifest_length for m in manifests),
            "metadata_files_on_disk": len(json_files),
            "metadata_files_bytes": sum(p.stat().st_size for p in json_files),
            "oldest_retained_commits_total": oldest.props.get(names.COMMITS_TOTAL),
            "first_commit_found": self.sink.find_commit(self.cfg.target, self.first_commit_id) is not None,
            "rss_mb": round(rss_mb(), 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=35_000)
    ap.add_argument("--at", default="100,5000,35000")
    ap.add_argument("--sample", type=int, default=20)
    ap.add_argument("--no-expiry", action="store_true")
    ap.add_argument("--budget-s", type=float, default=3600, help="stop building after this many seconds")
    ap.add_argument(
        "--fast-forward",
        action="store_true",
        help="reach each point after the first with one commit per day (a compacted day's file) up to 8 days "
        "before it, one daily maintenance, then 8 days at */15: the retained history is the point's",
    )
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out" / "history")
    args = ap.parse_args()
    expiry = not args.no_expiry
    work = (args.work / (("expiry" if expiry else "no-expiry") + ("-ff" if args.fast_forward else ""))).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import pyiceberg.table.snapshots as snapshots

    from iceberg_offload.maintenance import expire, orphans

    start_ns = (time.time_ns() // STEP_NS - 366 * DAY_COMMITS) * STEP_NS
    clock = SimClock(start_ns)
    for module in (snapshots, expire, orphans):
        module.time = clock  # type: ignore[attr-defined]
    hist = History(work, expiry, clock)
    points = sorted(p for p in (int(p) for p in args.at.split(",")) if p <= args.commits)
    began = time.perf_counter()
    for n, point in enumerate(points):
        ff_to = (point - 8 * DAY_COMMITS) // DAY_COMMITS * DAY_COMMITS
        if args.fast_forward and n and hist.commits < ff_to:
            while hist.commits % DAY_COMMITS:  # to a day boundary at */15
                hist.commit()
            while hist.commits < ff_to:
                hist.commit(DAY_COMMITS)
            hist.daily()
        while hist.commits < point:
            hist.commit()
            if time.perf_counter() - began > args.budget_s:
                print(json.dumps({"stopped_at": hist.commits, "seconds": round(time.perf_counter() - began)}))
                print(json.dumps(hist.measure(args.sample)), flush=True)
                return
        row = hist.measure(args.sample)
        row["elapsed_s"] = round(time.perf_counter() - began)
        print(json.dumps(row), flush=True)
    print(json.dumps({"done": hist.commits, "seconds": round(time.perf_counter() - began)}), file=sys.stderr)


if __name__ == "__main__":
    main()
