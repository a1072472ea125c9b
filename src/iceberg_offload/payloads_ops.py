"""The `--json` payloads of the operations commands: doctor, recover, deploy, up/down/ps, schedule, trigger
(the rules: payloads.py)."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict


class Check(TypedDict):
    name: str
    status: Literal["ok", "warn", "fail"]
    saw: str
    fix: str
    scenario: Annotated[str | None, "the runbook scenario a failure points to"]
    cause: Annotated[bool, "this check names the cause (it wins over the symptoms)"]


class Doctor(TypedDict):
    """`doctor`. `ok`: no check failed (warnings allowed)."""

    ok: bool
    scenario: str | None
    runbook: Annotated[str | None, "the runbook of the scenario"]
    checks: list[Check]


class RecoverStep(TypedDict):
    name: str
    action: str
    done: bool
    result: str
    run_state: Annotated[str | None, "the final state of the flow run the run step waited for"]


class Recover(TypedDict):
    """`recover`: the plan (a preview unless --yes) and, applied, doctor before and after. `ok`: applied, all
    checks pass after it and the run it triggered completed."""

    ok: bool
    applied: bool
    steps: list[RecoverStep]
    before: Doctor
    after: Doctor | None
    seconds: float


class WorkPool(TypedDict):
    name: str
    status: str


class DeployedDeployment(TypedDict):
    deployment: str
    status: Annotated[str, "created, updated (what changed) or unchanged"]


class TableLimit(TypedDict):
    table: str
    limit: Annotated[str, "the global concurrency limit: one offload of the table in flight"]
    status: str


class Deploy(TypedDict):
    """`deploy`: the work pool, deployments and per-table limits it created or updated."""

    ok: bool
    work_pool: WorkPool
    deployments: list[DeployedDeployment]
    limits: list[TableLimit]
    notes: list[str]


class Process(TypedDict):
    name: str
    pid: int | None
    running: bool
    log: str | None
    restarts: int


class Urls(TypedDict):
    ui: str
    api: str
    metrics: str


class Ps(TypedDict):
    """`ps`. `ok`: the stack is running."""

    ok: bool
    running: bool
    api_ready: bool
    workers_online: int
    processes: list[Process]
    urls: Urls
    deploy_log: str


class Up(Ps):
    """`up`: as `ps`, and whether this call started it."""

    started: bool


class Down(TypedDict):
    """`down`."""

    ok: bool
    stopped: Annotated[bool, "this call stopped it (false: it was not running)"]
    message: str


class Schedule(TypedDict):
    id: str
    schedule: str
    active: bool


class DeploymentSchedule(TypedDict):
    deployment: str
    exists: bool
    paused: bool | None
    active: Annotated[bool, "not paused and every schedule active"]
    schedules: list[Schedule]


class Schedules(TypedDict):
    """`schedule show|pause|resume`: each deployment's schedule after the command."""

    ok: bool
    deployments: list[DeploymentSchedule]


class Trigger(TypedDict):
    """`trigger`: the run it created (or, when that was cancelled because another run held the deployment's
    slot, the holder it waited for). `ok`: not waiting, or the run completed."""

    ok: bool
    flow_run_id: str
    name: str
    deployment: str
    state: str
    seconds: float
    held_by: Annotated[str | None, "the run that held the slot and cancelled ours"]
    holder_stuck: Annotated[bool, "that run stayed PENDING past the stuck age (recover --yes crashes it)"]
    note: str | None
