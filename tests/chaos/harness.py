"""The chaos harness: a native stack with two workers, rows arriving all the time (late ones and bursts too),
offload cycles, manual triggers and maintenance runs racing, and SIGKILLs at random moments of the worker,
the flow-run process, the Prefect server and a standalone exporter; between cycles the catalog database
is cut. At the end: recover, reconcile, then hot vs cold compared row by row by key.

    python -m tests.chaos --cycles 40 --seed 7
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: conftest, stackutil

from conftest import TRADES_DDL, insert_trades
from iceberg_offload import names
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.config import Settings
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.orchestration import prefect_api
from iceberg_offload.orchestration.processes import pid_alive
from iceberg_offload.orchestration.stack import read_state
from stackutil import (
    PgCluster,
    cli,
    cli_json,
    free_port,
    prefect_cli,
    start_process,
    stop,
    stop_flow_runs,
    write_config,
)

TABLES = ["ch_trades", "ch_quotes", "ch_candles"]
STEP_MS = 10
TARGETS = ("worker", "flow run", "server", "exporter")


@dataclass
class Report:
    seed: int
    cycles: int = 0
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))
    catalog_cuts: int = 0
    manual_triggers: int = 0
    maintenance_runs: int = 0
    rows_inserted: int = 0
    late_rows: int = 0
    hot_rows: int = 0
    cold_rows: int = 0
    rows_lost: int = 0
    """Hot rows at or below the table's watermark that cold lacks: rows the tool claims and does not hold."""
    rows_not_offloaded: int = 0
    """Hot rows above the table's watermark (the closing commands did not get that far)."""
    rows_duplicated: int = 0
    rows_unexpected: int = 0
    windows_written_twice: int = 0
    """Offload commits whose watermark does not move past the one before (a chunk committed twice)."""
    final_recover_ok: bool = False
    finish_exit_codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    per_table: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_kills": self.total_kills}


class Chaos:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.pg = PgCluster("offload_chaos")
        self.settings: Settings = write_config(
            root,
            TABLES,
            prefect={"retry_delays_seconds": [1, 3]},
            source={"lock_timeout_seconds": 30},
            offload={"max_rows_per_commit": 700},
        )
        text = (
            Path(self.settings.path)
            .read_text()
            .replace(f'uri = "sqlite:///{root}/catalog.db"', f'uri = "{self.pg.url("psycopg2")}"')
        )
        Path(self.settings.path).write_text(text)
        from iceberg_offload import config

        self.settings = config.load(self.settings.path, env={})
        self.next_ms = (int(time.time()) - 3 * 3600) * 1000
        self.seq = dict.fromkeys(TABLES, 0)
        self.procs: list[Any] = []
        self.exporter: Any = None

    # -- the pieces ---------------------------------------------------------------------------------------
    def start(self) -> None:
        with open_source(self.settings.source) as ch:
            ch.command("CREATE DATABASE IF NOT EXISTS k2")
            for t in TABLES:
                ch.command(TRADES_DDL.format(name=t))
        self.insert(2000)
        cli_json(self.settings, "up", timeout=240)
        self.procs.append(
            start_process(
                self.settings,
                ["worker", "--name", "chaos-second"],
                self.root / "worker2.log",
                env={"OFFLOAD__METRICS__PORT": str(free_port())},
            )
        )
        self.start_exporter()

    def start_exporter(self) -> None:
        self.exporter = start_process(
            self.settings, ["metrics"], self.root / "exporter.log", env={"OFFLOAD__METRICS__PORT": str(free_port())}
        )

    def insert(self, rows: int, late: bool = False) -> None:
        with open_source(self.settings.source) as ch:
            for t in TABLES:
                if late:  # behind the watermark: an hour that was offloaded already
                    start = self.next_ms - self.rng.randint(600, 3600) * 1000 + self.rng.randint(1, 9)
                    insert_trades(ch, t, start, rows, seq0=10_000_000 + self.seq[t], step_ms=STEP_MS + 3)
                    self.report.late_rows += rows
                else:
                    insert_trades(ch, t, self.next_ms, rows, seq0=self.seq[t], step_ms=STEP_MS)
                self.seq[t] += rows
                self.report.rows_inserted += rows
        if not late:
            self.next_ms += rows * STEP_MS
        self.next_ms = min(self.next_ms, (int(time.time()) - 60) * 1000)

    def trigger(self, deployment: tuple[str, str] = (names.MAIN_FLOW, names.MAIN_DEPLOYMENT)) -> str | None:
        with contextlib.suppress(*prefect_api.API_ERRORS):
            dep = prefect_api.deployment(self.settings, *deployment)
            if dep is not None:
                run = prefect_api.request(self.settings, "POST", f"/deployments/{dep['id']}/create_flow_run", {})
                return str(run["id"])
        return None

    def kill(self, target: str) -> bool:
        state = read_state(self.settings) or {}
        pid: int | None = None
        if target in ("worker", "server"):
            pid = (state.get("children", {}).get(target) or {}).get("pid")
        elif target == "exporter":
            pid = self.exporter.pid if self.exporter is not None and self.exporter.poll() is None else None
        else:  # a flow run lives a few seconds: wait for one to be Running
            deadline = time.monotonic() + 10
            while (pid := self._flow_run_pid()) is None and time.monotonic() < deadline:
                time.sleep(0.3)
        if not pid or not pid_alive(pid):
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL) if target != "flow run" else os.kill(pid, signal.SIGKILL)
        self.report.kills[target] += 1
        if target == "exporter":
            self.exporter.wait(5)
            self.start_exporter()
        return True

    def _flow_run_pid(self) -> int | None:
        with contextlib.suppress(*prefect_api.API_ERRORS):
            dep = prefect_api.deployment(self.settings, names.MAIN_FLOW, names.MAIN_DEPLOYMENT)
            for run in prefect_api.flow_runs(self.settings, dep["id"], ["RUNNING"], limit=5) if dep else []:
                pid = str(run.get("infrastructure_pid") or "").rsplit(":", 1)[-1]
                if pid.isdigit():
                    return int(pid)
        return None

    def cut_catalog(self, seconds: float) -> None:
        self.pg.ctl("stop")
        self.report.catalog_cuts += 1
        time.sleep(seconds)
        self.pg.ctl("start")

    def heal(self) -> None:
        """Between cycles: runs left Running by a kill hold the deployment's slot; mark them Crashed."""
        with contextlib.suppress(*prefect_api.API_ERRORS):
            prefect_api.crash_stuck_runs(self.settings, pid_alive, "killed by the chaos harness")

    # -- one cycle ------------------------------------------------------------------------------------------
    def cycle(self) -> None:
        rng = self.rng
        roll = rng.random()
        self.insert(rng.randint(8_000, 15_000) if roll < 0.1 else rng.randint(100, 2500))
        if rng.random() < 0.25:
            self.insert(rng.randint(3, 40), late=True)
        self.trigger()
        if rng.random() < 0.3:  # an operator's manual run, racing the cycle
            self.report.manual_triggers += 1
            prefect_cli(self.settings, "deployment", "run", names.MAIN, timeout=60)
        if rng.random() < 0.1:
            self.report.maintenance_runs += 1
            self.trigger((names.MAINT_FLOW, names.MAINT_DEPLOYMENT))
        time.sleep(rng.uniform(0.5, 5.0))
        for target in rng.sample(TARGETS, rng.randint(1, 3)):  # one to three kills at random moments
            self.kill(target)
            time.sleep(rng.uniform(0.2, 2.0))
        time.sleep(rng.uniform(1.0, 3.0))
        if rng.random() < 0.15:
            self.cut_catalog(rng.uniform(1.0, 5.0))
        self.heal()
        self.report.cycles += 1

    # -- the end --------------------------------------------------------------------------------------------
    def finish(self) -> Report:
        self.pg.ctl("start")
        done = json.loads(self._finish_step("recover", "recover", "--yes", "--json").stdout or "{}")
        self.report.final_recover_ok = bool(done.get("ok"))
        if not self.report.final_recover_ok:  # one more plain cycle, in the foreground
            self._finish_step("run", "run")
        self._finish_step("reconcile", "maintain", "reconcile", "--yes")
        self.compare()
        return self.report

    def _finish_step(self, label: str, *argv: str) -> Any:
        """One closing command; its output is kept in the work folder, its exit code in the report."""
        done = cli(self.settings, *argv, check=False, timeout=600)
        (self.root / f"finish-{label}.log").write_text(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        self.report.finish_exit_codes[label] = done.returncode
        return done

    def compare(self) -> None:
        sink = Sink(open_catalog(self.settings.catalog), self.settings.catalog.namespace)
        with open_source(self.settings.source) as ch:
            for t in TABLES:
                hot = {(int(a), int(b)) for a, b in ch.rows(f"SELECT toUnixTimestamp64Milli(ts), seq FROM k2.{t}")}
                table = sink.load(t)
                arrow = table.scan(selected_fields=("ts", "seq")).to_arrow() if table is not None else None
                cold = (
                    []
                    if arrow is None
                    else list(
                        zip(
                            [int(v.timestamp() * 1000 + 0.5) for v in arrow.column("ts").to_pylist()],
                            arrow.column("seq").to_pylist(),
                            strict=True,
                        )
                    )
                )
                cold_set = set(cold)
                mark, _ = sink.watermark(table) if table is not None else (None, None)
                missing = hot - cold_set
                above = {k for k in missing if mark is None or (k[0] * 1_000_000, k[1]) > (mark.ts_ns, mark.seq or 0)}
                if table is not None:
                    marks = [
                        c.watermark
                        for c in reversed(sink.history(table))
                        if c.props.get("offload.run-id") and c.watermark is not None
                    ]
                    self.report.windows_written_twice += sum(
                        (b.ts_ns, b.seq or 0) <= (a.ts_ns, a.seq or 0) for a, b in zip(marks, marks[1:], strict=False)
                    )
                stats = {
                    "hot": len(hot),
                    "cold": len(cold),
                    "lost": len(missing - above),
                    "not_offloaded": len(above),
                    "duplicated": len(cold) - len(cold_set),
                    "unexpected": len(cold_set - hot),
                }
                self.report.per_table[t] = stats
                self.report.hot_rows += stats["hot"]
                self.report.cold_rows += stats["cold"]
                self.report.rows_lost += stats["lost"]
                self.report.rows_not_offloaded += stats["not_offloaded"]
                self.report.rows_duplicated += stats["duplicated"]
                self.report.rows_unexpected += stats["unexpected"]

    def close(self) -> None:
        for p in self.procs:
            stop(p)
        if self.exporter is not None:
            stop(self.exporter)
        cli(self.settings, "down", check=False, timeout=120)
        stop_flow_runs(self.root)  # flow runs of killed workers outlive them (each in a session of its own)
        self.pg.drop()


def run(root: Path, cycles: int, seed: int, log: Any = None) -> Report:
    started = time.monotonic()
    chaos = Chaos(root, seed)
    try:
        chaos.start()
        for i in range(cycles):
            chaos.cycle()
            if log is not None:
                print(
                    f"cycle {i + 1}/{cycles}: kills {chaos.report.kills}, rows {chaos.report.rows_inserted}",
                    file=log,
                    flush=True,
                )
        report = chaos.finish()
    finally:
        chaos.close()
    report.seconds = round(time.monotonic() - started, 1)
    return report
