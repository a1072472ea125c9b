"""The native stack: a supervisor that runs the Prefect server and `iceberg-offload worker` (ops.worker), and
restarts either when it dies (the native `restart: unless-stopped`). `up` / `down` / `ps` drive it; state and logs
live in `<prefect home>/../stack/`. The processes themselves (started in their own group, stopped with it): processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from iceberg_offload.config import Settings, apply_prefect_env, prefect_env
from iceberg_offload.errors import ConfigError, TransientError
from iceberg_offload.orchestration.prefect_api import API_ERRORS, crash_stuck_runs, online_workers, request
from iceberg_offload.orchestration.prefect_api import ready as api_ready
from iceberg_offload.orchestration.processes import Child, pid_alive, signal_group

RESTART_BACKOFF = (1, 2, 5, 10, 30)


def stack_dir(settings: Settings) -> Path:
    return Path(settings.prefect.home).parent / "stack"


# -- the supervisor -----------------------------------------------------------------------------------------
def server_argv_env(settings: Settings) -> tuple[list[str], dict[str, str]]:
    url = urlparse(settings.prefect.api_url)
    env = {**os.environ, **prefect_env(settings)}
    db = settings.prefect.database_url or f"sqlite+aiosqlite:///{settings.prefect.home}/prefect.db"
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = db
    env["PREFECT_UI_API_URL"] = settings.prefect.api_url
    if settings.prefect.auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = settings.prefect.auth_string
    argv = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        url.hostname or "127.0.0.1",
        "--port",
        str(url.port or 4200),
    ]
    return argv, env


def supervise(settings: Settings) -> int:
    """Run server and worker, restart whichever dies, stop both on SIGTERM. Runs in the foreground."""
    d = stack_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    apply_prefect_env(settings)
    server_argv, server_env = server_argv_env(settings)
    cli = [sys.executable, "-m", "iceberg_offload.cli"]
    config = ["--config", settings.path] if settings.path else []
    children = {
        "server": Child("server", server_argv, server_env, d / "server.log"),
        "worker": Child("worker", [*cli, "worker", *config], {**os.environ, **prefect_env(settings)}, d / "worker.log"),
    }
    stopping = False

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deployed = False
    children["server"].start()
    while not stopping:
        server = children["server"]
        if not server.alive():
            _restart(server)
        elif not deployed and api_ready(settings):
            deployed = _deploy(settings, d)
            if deployed:  # runs a previous stack left Running hold the deployment's slot: free it
                with contextlib.suppress(*API_ERRORS):
                    crashed = crash_stuck_runs(settings, pid_alive, "its process is gone (found by `up`)")
                    if crashed:
                        print(f"marked Crashed: {', '.join(crashed)}", flush=True)
        if deployed:
            worker = children["worker"]
            if worker.proc is None:
                worker.start()
            elif not worker.alive():
                _restart(worker)
        _write_state(d, children)
        time.sleep(0.5)
    for name in ("worker", "server"):
        children[name].stop()
    _write_state(d, children, stopped=True)
    return 0


def _restart(child: Child) -> None:
    now = time.time()
    if child.proc is not None and child.next_start == 0.0:
        signal_group(child.proc.pid, signal.SIGKILL)
        child.history = [t for t in child.history if now - t < 300] + [now]
        child.next_start = now + RESTART_BACKOFF[min(len(child.history) - 1, len(RESTART_BACKOFF) - 1)]
        return
    if now >= child.next_start:
        child.restarts += 1
        child.next_start = 0.0
        child.start()


def _deploy(settings: Settings, d: Path) -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "deploy", "--config", settings.path],
        env={**os.environ, **prefect_env(settings)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    with open(d / "deploy.log", "a") as log:
        log.write(proc.stdout + proc.stderr)
    return proc.returncode == 0


def _write_state(d: Path, children: dict[str, Child], stopped: bool = False) -> None:
    state = {
        "supervisor_pid": os.getpid(),
        "stopped": stopped,
        "updated_at": time.time(),
        "children": {n: c.state() for n, c in children.items()},
    }
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(d / "state.json")


# -- up / down / ps -------------------------------------------------------------------------------------------
def read_state(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads((stack_dir(settings) / "state.json").read_text())
    except (OSError, ValueError):
        return None


def urls(settings: Settings) -> dict[str, str]:
    api = settings.prefect.api_url.rstrip("/")
    return {
        "ui": api.removesuffix("/api"),
        "api": api,
        "metrics": f"http://{settings.metrics.host}:{settings.metrics.port}/metrics",
    }


def up(settings: Settings, timeout: float = 180.0) -> dict[str, Any]:
    """Start the supervisor (if not running) and return when the API is ready and a worker is ONLINE."""
    if not settings.path:
        raise ConfigError("up needs a config file with [[tables]]", "pass --config PATH, or run `iceberg-offload demo`")
    d = stack_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    state = read_state(settings)
    started = False
    sup: subprocess.Popen[bytes] | None = None
    if not (state and not state.get("stopped") and pid_alive(state.get("supervisor_pid"))):
        log = open(d / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
        sup = subprocess.Popen(
            [sys.executable, "-m", "iceberg_offload.cli", "_supervise", "--config", settings.path],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **prefect_env(settings)},
        )
        log.close()
        started = True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_ready(settings):
            _check_credentials(settings)
        if api_ready(settings) and online_workers(settings) > 0:
            return {"started": started, **ps(settings)}
        if sup is not None and sup.poll() is not None:
            tail = (d / "supervisor.log").read_text(errors="replace")[-1500:]
            raise TransientError(
                f"the supervisor exited with code {sup.returncode}:\n{tail}",
                f"fix what {d / 'supervisor.log'} says, then run `iceberg-offload up` again",
            )
        time.sleep(0.5)
    raise TransientError(
        f"the stack did not become ready within {timeout:.0f}s",
        f"look at the logs in {d} (server.log, worker.log, deploy.log, supervisor.log)",
    )


def _check_credentials(settings: Settings) -> None:
    """/api/ready answers without credentials: ask something that needs them, and fail fast on a 401."""
    try:
        request(settings, "GET", "/admin/version")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ConfigError(
                f"the Prefect API at {settings.prefect.api_url} rejected our credentials ({exc.code})",
                "set [prefect] auth_string (or OFFLOAD__PREFECT__AUTH_STRING) to the server's "
                "PREFECT_SERVER_API_AUTH_STRING",
            ) from None
    except API_ERRORS:
        pass


def down(settings: Settings, timeout: float = 60.0) -> dict[str, Any]:
    state = read_state(settings)
    pid = state.get("supervisor_pid") if state else None
    if not pid_alive(pid):
        return {"stopped": False, "message": "the stack is not running"}
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        signal_group(pid, signal.SIGKILL)
    for child in (state or {}).get("children", {}).values():
        if pid_alive(child.get("pid")):
            signal_group(child["pid"], signal.SIGKILL)
    return {"stopped": True, "message": "stack stopped"}


def restart_child(settings: Settings, name: str) -> bool:
    """Kill one child's process group; the supervisor starts it again (after its backoff)."""
    child = ((read_state(settings) or {}).get("children") or {}).get(name) or {}
    if not pid_alive(child.get("pid")):
        return False
    signal_group(child["pid"], signal.SIGKILL)
    return True


def ps(settings: Settings) -> dict[str, Any]:
    state = read_state(settings) or {}
    sup = state.get("supervisor_pid")
    running = bool(sup) and not state.get("stopped") and pid_alive(sup)
    procs = [
        {
            "name": "supervisor",
            "pid": sup,
            "running": running,
            "log": str(stack_dir(settings) / "supervisor.log"),
            "restarts": 0,
        }
    ]
    for name, child in state.get("children", {}).items():
        procs.append(
            {
                "name": name,
                "pid": child.get("pid"),
                "running": running and pid_alive(child.get("pid")),
                "log": child.get("log"),
                "restarts": child.get("restarts", 0),
            }
        )
    return {
        "running": running,
        "api_ready": api_ready(settings),
        "workers_online": online_workers(settings),
        "processes": procs,
        "urls": urls(settings),
        "deploy_log": str(stack_dir(settings) / "deploy.log"),
    }
