"""Helpers for tests that run the real native stack: Prefect server, workers, our CLI as processes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from conftest import TRADES_DDL, _toml, insert_trades, processes_naming
from iceberg_offload import config
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.config import Settings

ENV_BASE = {k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD", "PREFECT"))}
ENV_BASE["PYTHONPATH"] = os.pathsep.join(sys.path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    root: Path,
    tables: list[str],
    *,
    prefect: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
    extra_tables: list[dict[str, Any]] | None = None,
    source: dict[str, Any] | None = None,
    offload: dict[str, Any] | None = None,
    fresh_prefect: bool = False,
) -> Settings:
    """A config for a test stack under `root`. Its Prefect server's SQLite database starts as a copy of a
    migrated one (`prefect_db_template`: a first start costs ~17 s of CPU, a migrated one ~8 s) unless
    `fresh_prefect` or a `database_url` is given."""
    root.mkdir(parents=True, exist_ok=True)
    api_port, metrics_port = free_port(), free_port()
    source = {"dsn": f"chdb://{root}/ch", "lock_timeout_seconds": 60, **(source or {})}
    offload = {"settle_seconds": 0, **(offload or {})}
    lines = [
        "[source]",
        *(f"{k} = {_toml(v)}" for k, v in source.items()),
        "",
        "[catalog]",
        f'uri = "sqlite:///{root}/catalog.db"',
        f'warehouse = "file://{root}/warehouse"',
        "",
        "[offload]",
        *(f"{k} = {_toml(v)}" for k, v in offload.items()),
        "",
        "[prefect]",
        f'api_url = "http://127.0.0.1:{api_port}/api"',
        f'home = "{root}/prefect"',
        "worker_query_seconds = 2",
    ]
    lines += [f"{k} = {_toml(v)}" for k, v in (prefect or {}).items()]
    lines += ["", "[metrics]", f"port = {metrics_port}", "", "[schedule]"]
    # by default, schedules that never fire during a test: a cron run would take the deployment's one slot
    # and cancel the runs a test triggers
    schedule = {"offload_cron": "0 0 1 1 *", "maintenance_cron": "0 0 1 1 *", **(schedule or {})}
    lines += [f"{k} = {_toml(v)}" for k, v in schedule.items()]
    for i, name in enumerate(tables):
        layer = "bronze" if i % 3 == 0 else "silver" if i % 3 == 1 else "gold"
        lines += [
            "",
            "[[tables]]",
            f'source = "{name}"',
            f'layer = "{layer}"',
            'timestamp_column = "ts"',
            'sequence_column = "seq"',
        ]
    for t in extra_tables or []:
        lines += ["", "[[tables]]"] + [f"{k} = {_toml(v)}" for k, v in t.items()]
    path = root / "offload.toml"
    path.write_text("\n".join(lines) + "\n")
    if not fresh_prefect and "database_url" not in (prefect or {}) and not (root / "prefect" / "prefect.db").exists():
        (root / "prefect").mkdir(exist_ok=True)
        shutil.copyfile(prefect_db_template(), root / "prefect" / "prefect.db")
    return config.load(path, env={})


def prefect_db_template() -> Path:
    """A Prefect SQLite database as a first server start leaves it (migrated, block types registered, nothing
    else), made once per Prefect version and machine; a lock keeps parallel test workers to one maker."""
    path = Path(tempfile.gettempdir()) / f"offload-tests-prefect-{metadata.version('prefect')}.db"
    if path.exists():
        return path
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        root = Path(tempfile.mkdtemp(prefix="offload-prefect-template-"))
        try:
            settings = write_config(root, [], fresh_prefect=True)
            stop(start_server(settings, root / "server.log"))
            db = root / "prefect" / "prefect.db"
            with contextlib.closing(sqlite3.connect(db)) as c:
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                migrated = c.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
                blocks = c.execute("SELECT count(*) FROM block_type").fetchone()[0]
            assert migrated and blocks, (
                f"the template database is not migrated ({migrated} versions, {blocks} block types)"
            )
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(db, tmp)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return path


def seed(settings: Settings, tables: list[str], rows: int, start_ms: int | None = None) -> None:
    start = start_ms or (int(time.time()) - 4 * 3600) * 1000
    with open_source(settings.source) as ch:
        ch.command("CREATE DATABASE IF NOT EXISTS k2")
        for name in tables:
            ch.command(TRADES_DDL.format(name=name).replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
            seq0 = int(ch.rows(f"SELECT count() FROM k2.{name}")[0][0])
            insert_trades(ch, name, start + seq0 * 1000, rows, seq0=seq0)


def cli(settings: Settings, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", *args, "--config", settings.path],
        env=ENV_BASE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"iceberg-offload {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def cli_json(settings: Settings, *args: str, timeout: float = 300) -> Any:
    return json.loads(cli(settings, *args, "--json", timeout=timeout).stdout)


def prefect_env(settings: Settings) -> dict[str, str]:
    return {**ENV_BASE, **config.prefect_env(settings)}


def prefect_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=prefect_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_process(
    settings: Settings, args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "iceberg_offload.cli", *args, "--config", settings.path],
        env={**ENV_BASE, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_server(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    from iceberg_offload.orchestration.stack import api_ready, server_argv_env

    argv, env = server_argv_env(settings)
    env = {**ENV_BASE, **{k: v for k, v in env.items() if k.startswith("PREFECT")}}
    out = open(log, "ab")  # noqa: SIM115
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: api_ready(settings), 90, f"Prefect server ready (log {log})")
    except BaseException:
        stop(proc)  # never leave a server that did not come up
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop_flow_runs(folder: Path) -> None:
    """Kill what a killed worker leaves: its flow runs (Prefect starts each in a session of its own, so they
    outlive the worker's process group; their environment names the stack's folder)."""
    import signal

    for pid in processes_naming(str(folder) + os.sep):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not processes_naming(str(folder) + os.sep), 20, f"processes under {folder} gone")


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
        except (OSError, ValueError) as exc:  # a service still starting; the timeout reports it
            last_error, value = exc, None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


def client(settings: Settings) -> Any:
    """A sync Prefect client for the settings' server."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(settings.prefect.api_url, auth_string=settings.prefect.auth_string or None)


def prefect_settings(settings: Settings) -> contextlib.AbstractContextManager[Any]:
    """In this process, Prefect talks to the settings' server (it read its environment once, at import: a
    variable set later is not seen, and a call would start a temporary server of its own instead)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: settings.prefect.api_url})


def flow_runs(settings: Settings, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with client(settings) as c:
        dep = c.read_deployment_by_name(deployment)
        return list(
            c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])), limit=200)
        )


def wait_run_final(settings: Settings, run_id: Any, timeout: float = 180) -> Any:
    def final() -> Any:
        with client(settings) as c:
            run = c.read_flow_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    return wait_for(final, timeout, f"flow run {run_id} to finish")


class PgCluster:
    """A Postgres cluster of its own (Debian's pg_createcluster, trust auth on 127.0.0.1), so a test can stop
    and start it without touching the machine's main cluster."""

    def __init__(self, prefix: str) -> None:
        if not shutil.which("pg_createcluster"):
            raise AssertionError("pg_createcluster is missing: apt-get install postgresql (postgresql-common)")
        self.version = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.split()[0]
        self.port = free_port()
        self.name = f"{prefix}_{self.port}"
        subprocess.run(
            ["pg_createcluster", self.version, self.name, "-p", str(self.port), "--start", "--", "--auth=trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def ctl(self, action: str) -> None:
        extra = ["-m", "fast"] if action == "stop" else []
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action, *extra],
            capture_output=True,
            timeout=60,
        )

    def url(self, driver: str, db: str = "postgres") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{db}"

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", "--stop", self.version, self.name], capture_output=True, timeout=120)
