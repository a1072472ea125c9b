"""`iceberg-offload recover`: the runbook's resolution steps, in its order, for the native stack.

Without `--yes` it only says what it would do. It never deletes data, watermarks or snapshots: commits
whose outcome was unknown settle by themselves (the watermark is read from the Iceberg history), and
stuck runs are marked Crashed, not deleted.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import prefect_api
from .config import Settings
from .doctor import Report, diagnose, stuck_runs
from .stack import down, pid_alive, read_state, up

COMPOSE_ORDER = ["k2-prefect-db", "k2-prefect-server", "k2-prefect-worker"]


@dataclass
class Step:
    name: str
    action: str
    done: bool = False
    result: str = ""


@dataclass
class Recovery:
    steps: list[Step] = field(default_factory=list)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        ran = next((s.result for s in self.steps if s.name == "run now and wait"), "")
        return {"steps": [asdict(s) for s in self.steps], "before": self.before, "after": self.after,
                "seconds": round(self.seconds, 1),
                "ok": bool(self.after and self.after["ok"]) and "COMPLETED" in ran}


def plan(settings: Settings, report: Report, resume_schedule: bool) -> list[Step]:
    checks = {c.name: c for c in report.checks}
    failed = {c.name for c in report.checks if c.status == "fail"}
    steps: list[Step] = []
    state = read_state(settings)
    stack_up = state is not None and not state.get("stopped") and pid_alive(state.get("supervisor_pid"))
    if not stack_up:
        steps.append(Step("start the stack", "iceberg-offload up  (database, server, deploy, worker, in that "
                          "order; compose: docker start " + " ".join(COMPOSE_ORDER) + ")"))
    elif failed & {"prefect server", "workers", "metrics endpoint"}:
        steps.append(Step("restart the stack", "wait 30 s for the supervisor, then iceberg-offload down && "
                          "iceberg-offload up  (compose: docker restart " + " ".join(COMPOSE_ORDER) + ")"))
    dep = checks.get("deployment")
    if dep is None or "does not exist" in dep.saw or not stack_up:
        steps.append(Step("deploy", "iceberg-offload deploy  (idempotent; keeps pauses)"))
    if dep is not None and "paused" in dep.saw:
        steps.append(Step("resume the schedule" if resume_schedule else "leave the schedule paused",
                          "iceberg-offload schedule resume" if resume_schedule else
                          "none: a pause may be deliberate; rerun with --resume-schedule to resume it"))
    if "stuck runs" in checks:
        steps.append(Step("mark stuck runs Crashed", "set state CRASHED on RUNNING runs with no live process"))
    steps.append(Step("settle unknown commits", "none needed: each table's watermark is read from its Iceberg "
                      "history, so a lost commit answer is settled by the next run"))
    steps.append(Step("run now and wait", "iceberg-offload trigger --wait"))
    steps.append(Step("check again", "iceberg-offload doctor"))
    return steps


def recover(settings: Settings, yes: bool, resume_schedule: bool = False, timeout: float = 300.0) -> Recovery:
    started = time.monotonic()
    report = diagnose(settings)
    out = Recovery(before=report.as_dict())
    out.steps = plan(settings, report, resume_schedule)
    if not yes:
        return out
    for step in out.steps:
        step.result = _do(settings, step, timeout)
        step.done = True
    out.after = diagnose(settings).as_dict()
    out.seconds = time.monotonic() - started
    return out


def _do(settings: Settings, step: Step, timeout: float) -> str:
    from .deployments import deploy, set_paused, trigger

    if step.name == "start the stack":
        _start_local_postgres(settings)
        return "up: " + ("started" if up(settings, timeout)["started"] else "already running")
    if step.name == "restart the stack":
        _start_local_postgres(settings)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the supervisor restarts a dead server or worker by itself
            healthy = {c.name for c in diagnose(settings).checks if c.status == "ok"}
            if {"prefect server", "workers", "metrics endpoint"} <= healthy:
                return "the supervisor had restarted it"
            time.sleep(2)
        down(settings)
        up(settings, timeout)
        return "restarted"
    if step.name == "deploy":
        return ", ".join(f"{k}: {v}" for k, v in deploy(settings).deployments.items())
    if step.name == "resume the schedule":
        set_paused(None, paused=False)
        return "resumed"
    if step.name == "mark stuck runs Crashed":
        return f"{_crash_stuck(settings)} runs marked Crashed"
    if step.name == "run now and wait":
        crashed = _crash_stuck(settings)  # a run with no process would hold the slot and cancel ours
        run = trigger("/".join(prefect_api.MAIN), wait=True, timeout=timeout)
        if run["state"] == "CANCELLED":  # a late catch-up run already holds the deployment's one slot
            other = _wait_active(settings, timeout)
            if other is not None:
                return f"catch-up run {other['name']} held the slot: {other['state']['type']}"
        prefix = f"{crashed} stuck runs marked Crashed; " if crashed else ""
        return prefix + f"flow run {run['flow_run_id']}: {run['state']} in {run['seconds']}s"
    return "nothing to do"


def _wait_active(settings: Settings, timeout: float) -> dict[str, Any] | None:
    """Wait for the deployment's running (or starting) run to finish; return it, final."""
    dep = prefect_api.deployment(settings, *prefect_api.MAIN)
    active = prefect_api.flow_runs(settings, dep["id"], ["RUNNING", "PENDING"], limit=1) if dep else []
    if not active:
        return None
    deadline = time.monotonic() + timeout
    run = active[0]
    while time.monotonic() < deadline:
        run = prefect_api.request(settings, "GET", f"/flow_runs/{run['id']}")
        if (run.get("state") or {}).get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    return dict(run)


def _crash_stuck(settings: Settings) -> int:
    dep = prefect_api.deployment(settings, *prefect_api.MAIN)
    if dep is None:
        return 0
    stuck = stuck_runs(settings, dep["id"])
    for run in stuck:
        prefect_api.request(settings, "POST", f"/flow_runs/{run['id']}/set_state",
                            {"state": {"type": "CRASHED", "message": "its process is gone; marked by recover"},
                             "force": True})
    return len(stuck)


def _start_local_postgres(settings: Settings) -> None:
    """The native stack's database: SQLite needs nothing; a local Postgres that is down is started."""
    url = settings.prefect.database_url
    if "postgresql" not in url or not any(h in url for h in ("@127.0.0.1", "@localhost")):
        return
    if shutil.which("pg_ctlcluster") and shutil.which("pg_lsclusters"):
        for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
            version, cluster, _port, status = line.split()[:4]
            if status != "online":
                subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"],
                               capture_output=True, timeout=60)
