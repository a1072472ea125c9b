"""`iceberg-offload deploy`: the work pool, the deployments and the per-table limits, idempotently.

Runs of the deployments load their flows from the installed package (module entrypoints such as
`iceberg_offload.orchestration.flows.offload_main`): no image, no remote storage. Re-running changes only what differs,
never deletes or duplicates runs, and never resumes a schedule or deployment an operator paused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from prefect import get_client
from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    DeploymentUpdate,
    WorkPoolCreate,
)
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.utilities.callables import parameter_schema
from prefect.workers.process import ProcessWorker

from iceberg_offload.config import Settings
from iceberg_offload.errors import ConfigError, PrefectUnavailable
from iceberg_offload.names import (
    DEPLOYMENT_TAG,
    MAIN_DEPLOYMENT,
    MAIN_FLOW,
    MAINT_DEPLOYMENT,
    MAINT_FLOW,
    POOL,
    TABLE_DEPLOYMENT,
    TABLE_FLOW,
    table_limit,
)
from iceberg_offload.orchestration.control import schedule_text
from iceberg_offload.orchestration.flows import maintenance, offload_main, offload_table_flow


@contextlib.contextmanager
def _client() -> Iterator[Any]:
    """A sync Prefect client whose transport failures become errors with a fix, not tracebacks."""
    url = "the Prefect API at " + os.environ.get("PREFECT_API_URL", "PREFECT_API_URL")
    try:
        with get_client(sync_client=True) as client:
            yield client
    except (httpx.TransportError, PrefectHTTPStatusError) as exc:
        status = exc.response.status_code if isinstance(exc, PrefectHTTPStatusError) else None
        if status in (401, 403):
            raise ConfigError(
                f"{url} refused our credentials ({status})",
                "set [prefect] auth_string (or OFFLOAD__PREFECT__AUTH_STRING) to the server's",
            ) from exc
        if status is not None and status < 500:
            raise
        raise PrefectUnavailable(
            f"{url} does not answer: {str(exc).splitlines()[0][:200] or type(exc).__name__}",
            "start the stack: `iceberg-offload up` (or `iceberg-offload recover --yes`); check [prefect] api_url",
        ) from exc


@dataclass
class DeploySpec:
    flow_name: str
    name: str
    entrypoint: str
    fn: Any
    schedule: Any | None
    parameters: dict[str, Any]
    concurrency_limit: int | None

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


@dataclass
class DeployReport:
    pool: str = ""
    deployments: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """payloads_ops.Deploy (`limits`: by table, each the limit `offload-table:<table>`)."""
        return {
            "ok": True,
            "work_pool": {"name": POOL, "status": self.pool},
            "deployments": [{"deployment": k, "status": v} for k, v in self.deployments.items()],
            "limits": [{"table": k, "limit": table_limit(k), "status": v} for k, v in self.limits.items()],
            "notes": self.notes,
        }


FLOWS = "iceberg_offload.orchestration.flows"  # module entrypoints; iceberg_offload.flows keeps older ones running


def specs(settings: Settings) -> list[DeploySpec]:
    if not settings.path:
        raise ConfigError(
            "deploy needs a config file: flow runs load it by path",
            "pass --config PATH (or run `iceberg-offload demo` to write offload.toml)",
        )
    sched = settings.schedule
    offload_schedule: Any = (
        IntervalSchedule(interval=timedelta(seconds=sched.offload_interval_seconds))
        if sched.offload_interval_seconds
        else CronSchedule(cron=sched.offload_cron, timezone=sched.timezone)
    )
    params = {"config": settings.path}
    return [
        DeploySpec(MAIN_FLOW, MAIN_DEPLOYMENT, f"{FLOWS}.offload_main", offload_main, offload_schedule, params, 1),
        DeploySpec(
            MAINT_FLOW,
            MAINT_DEPLOYMENT,
            f"{FLOWS}.maintenance",
            maintenance,
            CronSchedule(cron=sched.maintenance_cron, timezone=sched.timezone),
            params,
            1,
        ),
        DeploySpec(TABLE_FLOW, TABLE_DEPLOYMENT, f"{FLOWS}.offload_table_flow", offload_table_flow, None, params, None),
    ]


def deploy(settings: Settings) -> DeployReport:
    report = DeployReport()
    with _client() as client:
        report.pool = _ensure_pool(client)
        for spec in specs(settings):
            report.deployments[spec.full_name] = _ensure_deployment(client, spec, report.notes)
        for table in settings.tables:
            tag = table_limit(table.target)
            try:
                client.read_concurrency_limit_by_tag(tag)
                report.limits[table.target] = "unchanged"
            except ObjectNotFound:
                client.create_concurrency_limit(tag=tag, concurrency_limit=1)
                report.limits[table.target] = "created"
    return report


def _ensure_pool(client: Any) -> str:
    try:
        pool = client.read_work_pool(POOL)
    except ObjectNotFound:
        client.create_work_pool(
            WorkPoolCreate(name=POOL, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
        )
        return "created"
    if pool.type != "process":
        raise ConfigError(
            f"work pool {POOL!r} exists with type {pool.type!r}, not 'process'",
            f"delete it (prefect work-pool delete {POOL}) and run deploy again",
        )
    return "unchanged"


def _schedule_key(schedule: Any) -> str:
    if isinstance(schedule, CronSchedule):
        return schedule_text({"cron": schedule.cron, "timezone": schedule.timezone})
    if isinstance(schedule, IntervalSchedule):
        return schedule_text({"interval": schedule.interval.total_seconds()})
    return repr(schedule)


def _ensure_deployment(client: Any, spec: DeploySpec, notes: list[str]) -> str:
    concurrency = dict(
        concurrency_limit=spec.concurrency_limit,
        concurrency_options=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
        if spec.concurrency_limit
        else None,
    )
    try:
        existing = client.read_deployment_by_name(spec.full_name)
    except ObjectNotFound:
        flow_id = client.create_flow_from_name(spec.flow_name)
        client.create_deployment(
            flow_id=flow_id,
            name=spec.name,
            entrypoint=spec.entrypoint,
            work_pool_name=POOL,
            parameters=spec.parameters,
            parameter_openapi_schema=parameter_schema(spec.fn).model_dump(),
            schedules=[DeploymentScheduleCreate(schedule=spec.schedule, active=True)] if spec.schedule else [],
            enforce_parameter_schema=False,
            pull_steps=[],
            tags=[DEPLOYMENT_TAG],
            **concurrency,
        )
        return "created"
    changed = []
    update: dict[str, Any] = {}
    if existing.entrypoint != spec.entrypoint:
        update["entrypoint"] = spec.entrypoint
    if existing.parameters != spec.parameters:
        update["parameters"] = spec.parameters
    if existing.work_pool_name != POOL:
        update["work_pool_name"] = POOL
    gcl = getattr(existing, "global_concurrency_limit", None)
    current_limit = gcl.limit if gcl is not None else existing.concurrency_limit
    current_strategy = existing.concurrency_options.collision_strategy if existing.concurrency_options else None
    wanted_strategy = ConcurrencyLimitStrategy.CANCEL_NEW if spec.concurrency_limit else None
    if current_limit != spec.concurrency_limit or (spec.concurrency_limit and current_strategy != wanted_strategy):
        update.update(concurrency)
    if update:
        client.update_deployment(existing.id, DeploymentUpdate(**update))
        changed += sorted(k for k in update if k != "concurrency_options")
    want = _schedule_key(spec.schedule) if spec.schedule else None
    have = [s for s in existing.schedules]
    if want is not None and not have:
        client.create_deployment_schedules(existing.id, [(spec.schedule, True)])
        changed.append("schedule added")
    elif want is not None and _schedule_key(have[0].schedule) != want:
        client.update_deployment_schedule(existing.id, have[0].id, schedule=spec.schedule)  # keeps `active`
        changed.append(f"schedule -> {want}")
    if existing.paused or any(not s.active for s in have):
        notes.append(
            f"{spec.full_name}: schedule paused by an operator; left paused. Resume: "
            f"iceberg-offload schedule resume --deployment '{spec.full_name}'"
        )
    return "updated: " + ", ".join(changed) if changed else "unchanged"
