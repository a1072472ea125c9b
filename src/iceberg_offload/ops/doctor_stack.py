"""`doctor`'s checks of the Prefect stack: the supervisor and its children, the server, the workers, the
offload deployment and its schedule, recent and stuck runs, the metrics endpoint (and who holds its port).

Each check reads durable state (the stack's state file, the Prefect REST API, /proc) and returns a `Check`
with what it saw, the runbook's fix and its scenario; none changes anything. Run only where the stack is
used (doctor_engine.stack_used); doctor composes them with the engine's checks.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from iceberg_offload import names
from iceberg_offload.config import Settings
from iceberg_offload.ops.doctor_engine import Check
from iceberg_offload.orchestration import prefect_api
from iceberg_offload.orchestration.processes import pid_alive
from iceberg_offload.orchestration.stack import read_state, stack_dir

_age = prefect_api.age_seconds


RESTART_RECENT_SECONDS = 120
CHILD_SCENARIO = {"server": "server down", "worker": "worker down"}


def check_processes(settings: Settings) -> Check:
    state = read_state(settings)
    if state is None:
        return Check(
            "processes",
            "warn",
            "no native stack state (not started with `iceberg-offload up` here)",
            "compose: `docker ps --filter name=k2-prefect`; native: `iceberg-offload up`",
        )
    sup = state.get("supervisor_pid")
    if state.get("stopped") or not pid_alive(sup):
        return Check(
            "processes", "fail", f"supervisor (pid {sup}) is not running", "iceberg-offload up", "full restart"
        )
    children = state.get("children", {})
    restarts = {n: c.get("restarts", 0) for n, c in children.items()}
    logs = stack_dir(settings)
    for name in ("server", "worker"):  # the server first: a worker without a server is not the cause
        child = children.get(name) or {}
        if not pid_alive(child.get("pid")):
            return Check(
                "processes",
                "fail",
                f"{name} (pid {child.get('pid')}) is not running; the supervisor "
                f"restarts it within 30 s (restarts so far: {restarts})",
                f"iceberg-offload recover --yes; why it died: tail {logs / f'{name}.log'}",
                CHILD_SCENARIO[name],
            )
    for name in ("server", "worker"):
        child = children[name]
        age = time.time() - float(child.get("started_at") or 0)
        if child.get("restarts", 0) and age < RESTART_RECENT_SECONDS:
            return Check(
                "processes",
                "warn",
                f"{name} was restarted by the supervisor {age:.0f}s ago (restarts so far: {restarts})",
                f"iceberg-offload recover --yes runs a cycle now; why it died: tail {logs / f'{name}.log'}",
                CHILD_SCENARIO[name],
            )
    return Check("processes", "ok", f"supervisor, server and worker running; restarts: {restarts}")


def check_server(settings: Settings) -> Check:
    try:
        prefect_api.request(settings, "GET", "/ready")
        prefect_api.request(settings, "GET", "/admin/version")  # /ready answers without credentials; this not
        return Check("prefect server", "ok", f"{settings.prefect.api_url}/ready answers")
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return Check(
                "prefect server",
                "fail",
                "the API rejected our credentials (401)",
                "set [prefect] auth_string (OFFLOAD__PREFECT__AUTH_STRING) to the server's auth string",
                "server down",
            )
        health = _health(settings)
        return Check(
            "prefect server",
            "fail",
            f"/api/ready answered {exc.code}; /api/health {health}",
            "the server's database is down: start it (native: `iceberg-offload recover --yes`; compose: "
            "`docker start k2-prefect-db`)",
            "server down",
        )
    except prefect_api.API_ERRORS as exc:
        return Check(
            "prefect server",
            "fail",
            f"{settings.prefect.api_url} unreachable: {exc}",
            "native: `iceberg-offload up`; compose: `docker start k2-prefect-db k2-prefect-server`",
            "server down",
        )


def _health(settings: Settings) -> str:
    try:
        prefect_api.request(settings, "GET", "/health")
        return "true"
    except prefect_api.API_ERRORS:
        return "unreachable"


def check_workers(settings: Settings) -> Check:
    try:
        found = prefect_api.workers(settings)
    except prefect_api.API_ERRORS as exc:
        return Check("workers", "fail", f"cannot list workers: {exc}", "see the prefect server check", "server down")
    online = [w for w in found if w["status"] == "ONLINE"]
    if not online:
        last = max((w["last_heartbeat"] or "" for w in found), default="")
        return Check(
            "workers",
            "fail",
            f"no ONLINE worker in pool {names.POOL} ({len(found)} known; last heartbeat {last or 'never'})",
            "native: `iceberg-offload up` (the supervisor restarts it); compose: `docker start k2-prefect-worker`",
            "worker down",
        )
    ages = [a for a in (_age(w["last_heartbeat"]) for w in online) if a is not None]
    return Check(
        "workers",
        "ok",
        f"{len(online)} ONLINE in pool {names.POOL}; newest heartbeat {min(ages):.0f}s ago"
        if ages
        else f"{len(online)} ONLINE",
    )


def check_deployment(settings: Settings) -> tuple[Check, dict[str, Any] | None]:
    name = names.MAIN
    try:
        dep = prefect_api.deployment(settings, names.MAIN_FLOW, names.MAIN_DEPLOYMENT)
    except prefect_api.API_ERRORS as exc:
        return Check(
            "deployment", "fail", f"cannot read {name}: {exc}", "see the prefect server check", "server down"
        ), None
    if dep is None:
        return Check(
            "deployment",
            "fail",
            f"{name} does not exist (the server lost its state?)",
            "iceberg-offload deploy",
            "server down",
        ), None
    late = prefect_api.count_runs(settings, dep["id"], ["Late"])
    if not prefect_api.schedule_active(dep):
        return Check(
            "deployment",
            "fail",
            f"{name} is paused or its schedule is inactive; {late} Late runs",
            "if the pause is not deliberate: iceberg-offload schedule resume",
            "no runs",
            cause=True,
        ), dep
    polled = _age(dep.get("last_polled"))
    saw = f"{name} active ({', '.join(str(s['schedule'].get('cron') or s['schedule']) for s in dep['schedules'])})"
    saw += f"; last polled {polled:.0f}s ago" if polled is not None else "; never polled by a worker"
    if late:
        return Check(
            "deployment",
            "warn",
            saw + f"; {late} Late runs waiting",
            "a worker must pick them up: see the workers check",
            "worker down",
        ), dep
    return Check("deployment", "ok", saw), dep


def check_runs(settings: Settings, dep: dict[str, Any] | None) -> list[Check]:
    if dep is None:
        return []
    out = []
    last = {}
    for kind in ("COMPLETED", "FAILED", "CRASHED"):
        runs = prefect_api.flow_runs(settings, dep["id"], [kind], limit=1)
        last[kind] = runs[0] if runs else None
    completed = last["COMPLETED"]
    age = _age(completed.get("end_time")) if completed else None
    bad = [r for r in (last["FAILED"], last["CRASHED"]) if r and (age is None or (_age(r.get("end_time")) or 0) < age)]
    if completed is None:
        out.append(Check("recent runs", "warn", "no completed run yet", "iceberg-offload trigger --wait", "no runs"))
    elif age is not None and age > 45 * 60:
        out.append(
            Check(
                "recent runs",
                "fail",
                f"last completed run {age / 60:.0f} min ago (3 cycles missed)",
                "iceberg-offload trigger --wait; if it does not run, see the workers check",
                "no runs",
            )
        )
    elif bad:
        r = bad[0]
        msg = ((r.get("state") or {}).get("message") or "")[:200]
        out.append(
            Check(
                "recent runs",
                "fail",
                f"the newest run ended {r['state']['type']}: {msg}",
                "iceberg-offload run --table TABLE shows the error and its fix",
                "offload failing",
            )
        )
    else:
        out.append(Check("recent runs", "ok", f"last completed {age:.0f}s ago" if age is not None else "completed"))
    stuck = stuck_runs(settings, dep["id"])
    if stuck:
        out.append(
            Check(
                "stuck runs",
                "fail",
                f"{len(stuck)} runs hold the deployment's slot with no live process: "
                + ", ".join(f"{r['name']} ({r['state']['type']})" for r in stuck),
                "iceberg-offload recover --yes marks them Crashed",
                "no runs",
                cause=True,
            )
        )
    return out


def stuck_runs(settings: Settings, deployment_id: str) -> list[dict[str, Any]]:
    return prefect_api.stuck_runs(settings, deployment_id, pid_alive)


def check_metrics(settings: Settings) -> Check:
    m = settings.metrics
    host = "127.0.0.1" if m.host in ("0.0.0.0", "") else m.host
    url = f"http://{host}:{m.port}/metrics"
    state = read_state(settings) or {}
    worker_pid = (state.get("children", {}).get("worker") or {}).get("pid")
    holder = port_holder(m.port)
    held = f"; port {m.port} is held by {holder[1]} (pid {holder[0]})" if holder else f"; nothing listens on {m.port}"
    foreign = holder is not None and holder[0] != worker_pid
    fix = (
        f"stop pid {holder[0] if holder else '?'} or set [metrics] port (and the Prometheus target); "
        "the worker binds the port within 5 s once it is free"
        if foreign
        else "iceberg-offload recover --yes (restarts the worker); compose: docker restart k2-prefect-worker"
    )
    try:
        body = urllib.request.urlopen(url, timeout=3).read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return Check(
            "metrics endpoint", "fail", f"{url} unreachable: {exc}{held}", fix, "metrics unreachable", cause=foreign
        )
    if names.METRIC_INFO not in body:
        return Check(
            "metrics endpoint",
            "fail",
            f"{url} answers without {names.METRIC_INFO}{held}",
            fix,
            "metrics unreachable",
            cause=foreign,
        )
    return Check("metrics endpoint", "ok", f"{url} serves {names.METRIC_INFO}")


def port_holder(port: int) -> tuple[int, str] | None:
    """(pid, command) of the local process listening on a TCP port, from /proc (Linux); None if unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return int(proc.name), cmd[:120]
        except OSError:
            continue
    return None
