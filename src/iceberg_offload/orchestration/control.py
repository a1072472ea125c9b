"""Operator actions on the deployments over Prefect's REST API, without importing Prefect: show, pause and
resume the schedules, start a run (and wait for it). `trigger`, `schedule` and `recover` start in under a
second instead of the ~3 s Prefect's import costs; `deploy` (deployments.py) still uses Prefect's client.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from iceberg_offload import names
from iceberg_offload.config import Settings
from iceberg_offload.errors import ConfigError, PrefectUnavailable
from iceberg_offload.orchestration import prefect_api
from iceberg_offload.orchestration.prefect_api import API_ERRORS, PENDING_STUCK_SECONDS, age_seconds

T = TypeVar("T")
POLL_SECONDS = 0.5


TIMEOUT_SECONDS = 30.0
"""An operator's call may wait this long for an answer (a busy SQLite-backed server is slow, right after `up`)."""
READ_ATTEMPTS = 3


def request(settings: Settings, method: str, path: str, body: Any = None) -> Any:
    """One REST call of an operator's action: sent again while the server answers "not now" (503); a read
    (GET) also after a timeout. A write is not re-sent after a timeout: it may have landed."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return prefect_api.request(settings, method, path, body, timeout=TIMEOUT_SECONDS, retry=True)
        except (TimeoutError, urllib.error.URLError) as exc:
            timed_out = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
            if isinstance(exc, urllib.error.HTTPError) or method != "GET" or not timed_out or attempt == READ_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def call(settings: Settings, fn: Callable[[], T]) -> T:
    """Run REST calls; an unreachable or failing server becomes an error with the fix, not a traceback."""
    where = f"the Prefect API at {settings.prefect.api_url}"
    try:
        return fn()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ConfigError(
                f"{where} refused our credentials ({exc.code})",
                "set [prefect] auth_string (or OFFLOAD__PREFECT__AUTH_STRING) to the server's",
            ) from exc
        if exc.code < 500:
            raise ConfigError(
                f"{where} refused the request ({exc.code}: {exc.reason})",
                "check the deployment exists (`iceberg-offload schedule show`; `iceberg-offload deploy` makes it) and "
                "[prefect] api_url points at a Prefect 3 server's /api",
            ) from exc
        raise _unavailable(where, exc) from exc
    except API_ERRORS as exc:
        raise _unavailable(where, exc) from exc


def _unavailable(where: str, exc: Exception) -> PrefectUnavailable:
    return PrefectUnavailable(
        f"{where} does not answer: {str(exc).splitlines()[0][:200] or type(exc).__name__}",
        "start the stack: `iceberg-offload up` (or `iceberg-offload recover --yes`); check [prefect] api_url",
    )


def _deployment(settings: Settings, full_name: str) -> dict[str, Any] | None:
    try:
        return dict(request(settings, "GET", f"/deployments/name/{urllib.parse.quote(full_name, safe='/')}"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def schedule_text(schedule: dict[str, Any]) -> str:
    """A schedule as the API returns it, in one spelling for `deploy` (is it changed?) and `schedule show`:
    `cron */15 * * * * UTC`, `interval 900s`."""
    if schedule.get("cron"):
        return f"cron {schedule['cron']} {schedule.get('timezone') or 'UTC'}"
    if schedule.get("interval") is not None:
        return f"interval {float(schedule['interval']):g}s"
    return str(schedule)


def schedule_state(settings: Settings, deployments: list[str] | None = None) -> list[dict[str, Any]]:
    """Whether each deployment exists, is paused, and its schedules are active."""

    def read() -> list[dict[str, Any]]:
        out = []
        for name in deployments or [names.MAIN, names.MAINT]:
            dep = _deployment(settings, name)
            if dep is None:
                out.append({"deployment": name, "exists": False, "paused": None, "active": False, "schedules": []})
                continue
            schedules = [
                {
                    "id": str(s["id"]),
                    "schedule": schedule_text(s.get("schedule") or {}),
                    "active": bool(s.get("active")),
                }
                for s in dep.get("schedules") or []
            ]
            active = not dep.get("paused") and bool(schedules) and all(s["active"] for s in schedules)
            out.append(
                {
                    "deployment": name,
                    "exists": True,
                    "paused": bool(dep.get("paused")),
                    "active": active,
                    "schedules": schedules,
                }
            )
        return out

    return call(settings, read)


def set_paused(settings: Settings, deployments: list[str] | None, paused: bool) -> list[dict[str, Any]]:
    """Pause (or resume) deployments and every schedule they have."""

    def write() -> None:
        for name in deployments or [names.MAIN, names.MAINT]:
            dep = _deployment(settings, name)
            if dep is None:
                raise ConfigError(
                    f"deployment {name!r} does not exist on the Prefect server",
                    "run `iceberg-offload deploy` (or `iceberg-offload up`)",
                )
            request(settings, "PATCH", f"/deployments/{dep['id']}", {"paused": paused})
            for sched in dep.get("schedules") or []:
                if bool(sched.get("active")) == paused:
                    request(
                        settings, "PATCH", f"/deployments/{dep['id']}/schedules/{sched['id']}", {"active": not paused}
                    )

    call(settings, write)
    return schedule_state(settings, deployments)


def trigger(settings: Settings, deployment: str, wait: bool = False, timeout: float = 600.0) -> dict[str, Any]:
    """Create a flow run of a deployment now; with `wait`, poll until it is final. When the deployment's one
    slot is taken (CANCEL_NEW cancels ours), wait for the run holding it instead: it does what we asked."""
    started = time.monotonic()

    def run_it() -> dict[str, Any]:
        dep = _deployment(settings, deployment)
        if dep is None:
            raise ConfigError(
                f"deployment {deployment!r} does not exist on the Prefect server",
                "run `iceberg-offload deploy` (or `iceberg-offload up`)",
            )
        ours = run = dict(request(settings, "POST", f"/deployments/{dep['id']}/create_flow_run", {}))
        held_by: dict[str, Any] | None = None
        stuck = False
        while wait and time.monotonic() - started < timeout:
            run = dict(request(settings, "GET", f"/flow_runs/{run['id']}"))
            state = run.get("state") or {}
            if state.get("type") in FINAL:
                if run["id"] != ours["id"] or state["type"] != "CANCELLED" or held_by is not None:
                    break
                active = request(
                    settings,
                    "POST",
                    "/flow_runs/filter",
                    {
                        "deployments": {"id": {"any_": [dep["id"]]}},
                        "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}},
                        "limit": 1,
                    },
                )
                if not active:
                    break
                run = held_by = dict(active[0])
            elif held_by is not None and state.get("type") == "PENDING":
                age = age_seconds(state.get("timestamp"))
                if age is not None and age > PENDING_STUCK_SECONDS:
                    stuck = True
                    break  # the holder never starts: say so instead of waiting out the timeout
            time.sleep(POLL_SECONDS)
        state_type = (run.get("state") or {}).get("type") or "UNKNOWN"
        out: dict[str, Any] = {
            "ok": not wait or state_type == "COMPLETED",
            "flow_run_id": str(run["id"]),
            "name": run["name"],
            "deployment": deployment,
            "state": state_type,
            "seconds": round(time.monotonic() - started, 1),
            "held_by": held_by["name"] if held_by is not None else None,
            "holder_stuck": stuck,
            "note": None,
        }
        if held_by is not None:
            out["note"] = (
                f"our run {ours['name']} was cancelled: run {held_by['name']} held the deployment's slot; waited for it"
            )
            if stuck:
                out["note"] += "; it is stuck PENDING: iceberg-offload recover --yes marks it Crashed"
        return out

    return call(settings, run_it)


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
