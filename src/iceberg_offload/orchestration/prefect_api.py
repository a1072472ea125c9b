"""Prefect REST calls without importing Prefect (fast, and safe in any process): readiness, workers,
deployments, runs, artifacts; the one write is marking stuck runs Crashed (never deleted).

Used by the exporter, `ps`, `up`, `doctor`, `recover` and the operator commands (orchestration/control).
"""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

from iceberg_offload import names
from iceberg_offload.config import Settings

API_ERRORS = (urllib.error.URLError, OSError, ValueError)
PAGE = 200  # the server's largest page (PREFECT_API_DEFAULT_LIMIT)
FINAL = ["COMPLETED", "FAILED", "CRASHED"]
"""The state types of a finished run the exporter reads (a Cancelled run is none of its outcomes)."""


RETRY_STATUS = (429, 502, 503)
"""Answers that mean "not now" (a busy SQLite answers 503). With `retry`, the request is sent again, as Prefect's
client does: the operator's actions (control.py) retry; reads that report health (ready, the exporter) do not."""
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


def request(
    settings: Settings, method: str, path: str, body: Any = None, timeout: float = 3.0, retry: bool = False
) -> Any:
    url = settings.prefect.api_url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if settings.prefect.auth_string:
        token = base64.b64encode(settings.prefect.auth_string.encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    for delay in (*RETRY_DELAYS, None) if retry else (None,):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
            return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUS or delay is None:
                raise
            after = exc.headers.get("Retry-After", "") if exc.headers else ""
            time.sleep(min(float(after), 10.0) if after.replace(".", "", 1).isdigit() else delay)
    raise AssertionError("unreachable")


def ready(settings: Settings) -> bool:
    """`/api/ready`: the server and its database answer (`/api/health` stays true without the database)."""
    try:
        request(settings, "GET", "/ready")
        return True
    except API_ERRORS:
        return False


def workers(settings: Settings) -> list[dict[str, Any]]:
    """Workers of the pool with status and last heartbeat (`prefect worker ls` does not exist in Prefect 3)."""
    try:
        found = request(settings, "POST", f"/work_pools/{names.POOL}/workers/filter", {"limit": 100})
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    return [
        {"name": w["name"], "status": w.get("status"), "last_heartbeat": w.get("last_heartbeat_time")}
        for w in found or []
    ]


def online_workers(settings: Settings) -> int:
    try:
        return sum(w["status"] == "ONLINE" for w in workers(settings))
    except API_ERRORS:
        return 0


def deployment(settings: Settings, flow: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(request(settings, "GET", f"/deployments/name/{flow}/{name}"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def schedule_active(dep: dict[str, Any] | None) -> bool:
    """False when the deployment is missing, paused, or has no active schedule."""
    if not dep or dep.get("paused"):
        return False
    schedules = dep.get("schedules") or []
    return bool(schedules) and all(s.get("active") for s in schedules)


def count_runs(settings: Settings, deployment_id: str, state_names: list[str]) -> int:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}, "state": {"name": {"any_": state_names}}}}
    return int(request(settings, "POST", "/flow_runs/count", body))


def flow_runs(settings: Settings, deployment_id: str, state_types: list[str], limit: int = 200) -> list[dict[str, Any]]:
    return runs_page(settings, "flow_runs", deployment_run_filter(deployment_id, state_types), {}, limit=limit)


def deployment_run_filter(deployment_id: str, state_types: list[str]) -> dict[str, Any]:
    return {"deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": state_types}}}


def runs_page(
    settings: Settings, kind: str, where: dict[str, Any], end_time: dict[str, str], offset: int = 0, limit: int = PAGE
) -> list[dict[str, Any]]:
    """One page of `kind` ("flow_runs" or "task_runs") matching `where` and an `end_time` filter (`after_`,
    `before_`: both inclusive), newest end first."""
    body = {
        kind: {**where, "end_time": end_time} if end_time else where,
        "sort": "END_TIME_DESC",
        "limit": limit,
        "offset": offset,
    }
    return list(request(settings, "POST", f"/{kind}/filter", body) or [])


def runs_count(settings: Settings, kind: str, where: dict[str, Any], end_time: dict[str, str]) -> int:
    body = {kind: {**where, "end_time": end_time} if end_time else where}
    return int(request(settings, "POST", f"/{kind}/count", body))


PENDING_STUCK_SECONDS = 120


def age_seconds(iso: str | None) -> float | None:
    if not iso:
        return None
    return time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def stuck_runs(
    settings: Settings, deployment_id: str, alive: Callable[[int], bool], pending_seconds: float = PENDING_STUCK_SECONDS
) -> list[dict[str, Any]]:
    """Runs that hold the deployment's concurrency slot but will never finish: RUNNING or PENDING with their
    process on this host gone, or PENDING with no process known here for more than `pending_seconds`."""
    out = []
    for run in flow_runs(settings, deployment_id, ["RUNNING", "PENDING"], limit=50):
        state = run.get("state") or {}
        infra = str(run.get("infrastructure_pid") or "")
        host, _, pid = infra.rpartition(":")
        here = pid.isdigit() and host in (socket.gethostname(), "")
        if here:  # its process on this host decides, PENDING or RUNNING: a slow start is not stuck
            if not alive(int(pid)):
                out.append(run)
        elif state.get("type") == "PENDING":
            age = age_seconds(state.get("timestamp"))
            if age is not None and age > pending_seconds:
                out.append(run)
    return out


def crash_stuck_runs(
    settings: Settings, alive: Callable[[int], bool], message: str, pending_seconds: float = PENDING_STUCK_SECONDS
) -> list[str]:
    """Mark the stuck runs of our deployments Crashed (never deleted); return their names."""
    crashed = []
    for flow, name in names.SCHEDULED:
        dep = deployment(settings, flow, name)
        for run in stuck_runs(settings, dep["id"], alive, pending_seconds) if dep else []:
            answer = request(
                settings,
                "POST",
                f"/flow_runs/{run['id']}/set_state",
                {"state": {"type": "CRASHED", "message": message}, "force": True},
            )
            if (answer or {}).get("status", "ACCEPT") == "ACCEPT":
                crashed.append(run["name"])
            else:
                crashed.append(f"{run['name']} (refused: {(answer or {}).get('details')})")
    return crashed


def latest_artifact(settings: Settings, key: str) -> tuple[float | None, list[dict[str, Any]]]:
    """(when it was made, its rows) of the newest table artifact with this key ((None, []) when none)."""
    found = (
        request(settings, "POST", "/artifacts/latest/filter", {"artifacts": {"key": {"any_": [key]}}, "limit": 1}) or []
    )
    made = found[0].get("updated") or found[0].get("created") if found else None
    when = datetime.fromisoformat(made.replace("Z", "+00:00")).timestamp() if isinstance(made, str) else None
    return when, table_rows(found[0]) if found else []


def run_artifacts(settings: Settings, key: str, flow_run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The rows of the table artifact with this key that each of these flow runs made (the newest, should one
    have made several; a run that made none is absent): one call per 200 artifacts (`/artifacts/filter`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    offset = 0
    while flow_run_ids:
        found = (
            request(
                settings,
                "POST",
                "/artifacts/filter",
                {
                    "artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": flow_run_ids}},
                    "sort": "CREATED_DESC",
                    "limit": PAGE,
                    "offset": offset,
                },
                timeout=ARTIFACTS_TIMEOUT,
            )
            or []
        )
        for artifact in found:
            out.setdefault(str(artifact.get("flow_run_id")), table_rows(artifact))
        if len(found) < PAGE:
            break
        offset += PAGE
    return out


ARTIFACTS_TIMEOUT = 15.0
"""A page of 200 cycle artifacts of many tables is larger than any other answer read here."""


def table_rows(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    """A table artifact's rows: `data` is the table as a JSON text (or already decoded)."""
    data = artifact.get("data")
    try:
        rows = json.loads(data) if isinstance(data, str) else data
    except ValueError:  # not ours: as if it had no rows
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
