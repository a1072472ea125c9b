"""`iceberg-offload recover`: the runbook's resolution steps, in its order, for the native stack.

Without `--yes` it only says what it would do. It never deletes data, watermarks or snapshots: commits
whose outcome was unknown settle by themselves (the watermark is read from the Iceberg history), and
stuck runs are marked Crashed, not deleted.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

from iceberg_offload import names
from iceberg_offload.config import Settings
from iceberg_offload.ops.doctor import Report, diagnose
from iceberg_offload.ops.doctor_engine import Check
from iceberg_offload.ops.doctor_stack import check_metrics, check_processes, check_server, check_workers
from iceberg_offload.orchestration import prefect_api
from iceberg_offload.orchestration.control import set_paused, trigger
from iceberg_offload.orchestration.processes import pid_alive
from iceberg_offload.orchestration.stack import down, read_state, restart_child, up

COMPOSE_ORDER = ["k2-prefect-db", "k2-prefect-server", "k2-prefect-worker"]
STACK_CHECKS = {"processes", "prefect server", "workers", "metrics endpoint"}
SUPERVISOR_WAIT_SECONDS = 45


@dataclass
class Step:
    name: str
    action: str
    done: bool = False
    result: str = ""
    run_state: str | None = None
    """The final state of the flow run this step waited for (the run step only)."""


@dataclass
class Recovery:
    steps: list[Step] = field(default_factory=list)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """payloads_ops.Recover."""
        ran = next((s.run_state for s in self.steps if s.name == "run now and wait"), None)
        return {
            "applied": self.after is not None,
            "steps": [asdict(s) for s in self.steps],
            "before": self.before,
            "after": self.after,
            "seconds": round(self.seconds, 1),
            "ok": bool(self.after and self.after["ok"]) and ran == "COMPLETED",
        }


def plan(settings: Settings, report: Report, resume_schedule: bool) -> list[Step]:
    checks = {c.name: c for c in report.checks}
    failed = {c.name for c in report.checks if c.status == "fail"}
    steps: list[Step] = []
    state = read_state(settings)
    stack_up = state is not None and not state.get("stopped") and pid_alive(state.get("supervisor_pid"))
    if _local_postgres(settings) and not _database_answers(settings):
        steps.append(
            Step(
                "start the database",
                "pg_ctlcluster VERSION CLUSTER start  (the local cluster of "
                "[prefect] database_url; compose: docker start k2-prefect-db)",
            )
        )
    if not stack_up:
        steps.append(
            Step(
                "start the stack",
                "iceberg-offload up  (database, server, deploy, worker, in that "
                "order; compose: docker start " + " ".join(COMPOSE_ORDER) + ")",
            )
        )
    elif failed & STACK_CHECKS:
        steps.append(
            Step(
                "restart the stack",
                "wait up to 45 s for the supervisor to bring server, worker and "
                "metrics back, else iceberg-offload down && iceberg-offload up  (compose: docker restart "
                + " ".join(COMPOSE_ORDER)
                + ")",
            )
        )
    dep = checks.get("deployment")
    if dep is None or "does not exist" in dep.saw or not stack_up:
        steps.append(Step("deploy", "iceberg-offload deploy  (idempotent; keeps pauses)"))
    if dep is not None and "paused" in dep.saw:
        steps.append(
            Step(
                "resume the schedule" if resume_schedule else "leave the schedule paused",
                "iceberg-offload schedule resume"
                if resume_schedule
                else "none: a pause may be deliberate; rerun with --resume-schedule to resume it",
            )
        )
    if "stuck runs" in checks:
        steps.append(Step("mark stuck runs Crashed", "set state CRASHED on RUNNING runs with no live process"))
    steps.append(
        Step(
            "settle unknown commits",
            "none needed: each table's watermark is read from its Iceberg "
            "history, so a lost commit answer is settled by the next run",
        )
    )
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
        if step.name == "run now and wait":
            step.result, step.run_state = _run_now(settings, timeout)
        else:
            step.result = _do(settings, step, timeout)
        step.done = True
    out.after = diagnose(settings).as_dict()
    out.seconds = time.monotonic() - started
    return out


def _do(settings: Settings, step: Step, timeout: float) -> str:
    if step.name == "start the database":
        return _start_local_postgres(settings)
    if step.name == "start the stack":
        return "up: " + ("started" if up(settings, timeout)["started"] else "already running")
    if step.name == "restart the stack":
        return _heal_stack(settings, timeout)
    if step.name == "deploy":
        from iceberg_offload.orchestration.deployments import deploy  # noqa: PLC0415 - Prefect: ~3 s, only to deploy

        return ", ".join(f"{k}: {v}" for k, v in deploy(settings).deployments.items())
    if step.name == "resume the schedule":
        set_paused(settings, None, paused=False)
        return "resumed"
    if step.name == "mark stuck runs Crashed":
        return f"{_crash_stuck(settings)} runs marked Crashed"
    return "nothing to do"


def _run_now(settings: Settings, timeout: float) -> tuple[str, str]:
    """Trigger the main deployment and wait. A run that holds the deployment's slot but never starts (its
    worker died after submitting it) may turn stuck while we wait for it: mark it Crashed, then run once more."""
    started = time.monotonic()
    said: list[str] = []
    for attempt in (1, 2):
        crashed = _crash_stuck(settings)  # a run with no process would hold the slot and cancel ours
        if crashed:
            said.append(f"{crashed} stuck runs marked Crashed")
        left = max(timeout - (time.monotonic() - started), 30.0)
        run = trigger(settings, names.MAIN, wait=True, timeout=left)
        note = f" ({run['note']})" if run["note"] else ""
        said.append(f"flow run {run['name']} ({run['flow_run_id']}): {run['state']} in {run['seconds']}s{note}")
        # again only when another run took the slot: it never started (stuck), or it ended between our
        # run's cancel and our look at the slot (cancelled, no holder). A timeout is not retried: it may yet finish.
        lost_slot = run["holder_stuck"] or (run["state"] == "CANCELLED" and run["held_by"] is None)
        if not lost_slot or attempt == 2:
            break
    return "; ".join(said), run["state"]


def _crash_stuck(settings: Settings) -> int:
    return len(prefect_api.crash_stuck_runs(settings, pid_alive, "its process is gone; marked by recover"))


def _heal_stack(settings: Settings, timeout: float) -> str:
    """The supervisor restarts a dead server or worker by itself (and the worker binds a freed metrics port):
    wait for it; restart the stack only if it does not come back."""
    deadline = time.monotonic() + SUPERVISOR_WAIT_SECONDS
    restarted_server = False
    checks: dict[str, Check] = {}
    while time.monotonic() < deadline:
        checks = {c.name: c for c in stack_checks(settings)}
        bad = [c for c in checks.values() if c.status == "fail"]
        if not bad:
            return "the supervisor had brought it back: " + checks["processes"].saw
        if [c.name for c in bad] == ["metrics endpoint"] and bad[0].cause:  # another program holds the port
            return f"not restarted (it would not help): {bad[0].saw}; fix: {bad[0].fix}"
        server = checks["prefect server"]
        if (
            server.status == "fail"
            and "database" in server.fix
            and not restarted_server
            and _database_answers(settings)
        ):  # the database is back, the server's pool is not
            restart_child(settings, "server")
            restarted_server = True
        time.sleep(1)
    down(settings)
    up(settings, timeout)
    return "restarted: iceberg-offload down && iceberg-offload up"


def stack_checks(settings: Settings) -> list[Check]:
    checks = [check_processes(settings), check_server(settings)]
    if checks[-1].status == "ok":
        checks.append(check_workers(settings))
    return [*checks, check_metrics(settings)]


def _local_postgres(settings: Settings) -> tuple[str, int] | None:
    """(host, port) of [prefect] database_url when it is a Postgres on this machine."""
    url = urlparse(settings.prefect.database_url.replace("+asyncpg", ""))
    if url.scheme.startswith("postgres") and url.hostname in ("127.0.0.1", "localhost"):
        return url.hostname, url.port or 5432
    return None


def _database_answers(settings: Settings) -> bool:
    where = _local_postgres(settings)
    if where is None:
        return True
    try:
        socket.create_connection(where, timeout=2).close()
        return True
    except OSError:
        return False


def _start_local_postgres(settings: Settings) -> str:
    """Start the local Postgres cluster that serves [prefect] database_url (Debian's pg_ctlcluster)."""
    where = _local_postgres(settings)
    if where is None:
        return "nothing to start: the database is not a local Postgres"
    if _database_answers(settings):
        return f"postgres on port {where[1]} already answers"
    if not (shutil.which("pg_ctlcluster") and shutil.which("pg_lsclusters")):
        return f"start the Postgres on port {where[1]} by hand (no pg_ctlcluster here)"
    for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
        version, cluster, port = line.split()[:3]
        if int(port) == where[1]:
            proc = subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not _database_answers(settings):
                time.sleep(0.5)
            if proc.returncode != 0:
                return f"pg_ctlcluster {version} {cluster} start failed: {proc.stderr.strip()[-300:]}"
            return f"started postgres {version}/{cluster} on port {port}"
    return f"no local cluster on port {where[1]} (pg_lsclusters); start that database by hand"
