"""Prefect wrappers around the engine: the offload cycle, one table, maintenance, and their deployments.

The engine (`offload`) knows nothing of Prefect. Everything here is thin: load the config named by the
`config` parameter, run one table's tasks (orchestration.tasks) over the engine, turn the results into flow
states. Import this module only after `prefect_env()` has set PREFECT_API_URL (the CLI does), or Prefect
starts a throwaway server.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from iceberg_offload import names
from iceberg_offload.config import LAYERS, Settings, load
from iceberg_offload.engine.offload import TableResult, cycle_status, new_run_id
from iceberg_offload.errors import OrchestrationError, TableFailed
from iceberg_offload.maintenance import view
from iceberg_offload.orchestration.artifacts import cycle_row
from iceberg_offload.orchestration.share import shared_cycle
from iceberg_offload.orchestration.tasks import maintain_table_task, maintained_tables, offload_table_task


def _run_id() -> str:
    rid = flow_run.get_id()
    return str(rid) if rid else new_run_id()


@flow(name=names.TABLE_FLOW, flow_run_name=names.TABLE_RUN_NAME, persist_result=True)
def offload_table_flow(config: str = "", table: str = "", run_id: str = "") -> dict[str, Any]:
    """One table in its own flow run (fan_out = "deployments"): any worker in the pool may take it."""
    delays = load(config or None).prefect.retry_delays_seconds
    return offload_table_task.with_options(
        tags=[names.table_limit(table)], retries=len(delays), retry_delay_seconds=delays or 0
    )(config, table, run_id or _run_id())


def _outcome(table: str, layer: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, TableFailed):
        return value.result
    return TableResult(
        table, layer, status="failed", error=OrchestrationError(str(value)[:500], "see the flow run's logs").as_dict()
    ).as_dict()


def _layer_with_tasks(settings: Settings, tables: list[str], run_id: str) -> list[Any]:
    """Tables of a layer in threads of this flow run. No per-table tags here: the deployment's
    concurrency limit (1, CANCEL_NEW) already keeps one cycle in flight, and tag slots cost ~0.7 s each."""
    delays = settings.prefect.retry_delays_seconds
    task_ = offload_table_task.with_options(retries=len(delays), retry_delay_seconds=delays or 0)
    with shared_cycle(settings, run_id, maintained_tables):
        futures: list[Any] = []
        try:
            futures += [task_.submit(settings.path, n, run_id, wait_for_maintenance=True) for n in tables]
            return [f.result(raise_on_failure=False) for f in futures]
        finally:  # leaving early (cancelled): the share closes only after every task has given its source back
            wait(futures)


def _layer_with_deployments(settings: Settings, tables: list[str], run_id: str) -> list[Any]:
    def one(name: str) -> Any:
        run = cast(
            FlowRun,
            run_deployment(
                names.TABLE,
                timeout=None,
                as_subflow=True,
                parameters={"config": settings.path, "table": name, "run_id": run_id},
            ),
        )
        state = run.state
        if state is not None and state.is_completed():
            return state.result()
        try:
            return state.result() if state is not None else RuntimeError("no state")
        except Exception as exc:  # noqa: BLE001 - the table run's own error, reported per table
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(tables))) as pool:
        return list(pool.map(one, tables))


@flow(name=names.MAIN_FLOW, persist_result=True)
def offload_main(config: str = "", tables: list[str] | None = None) -> Any:
    """One cycle: bronze tables concurrently, then silver, then gold. A failing table does not stop the
    others; the run ends Failed when any failed or a view was left behind, and its result lists every
    table's outcome."""
    logger = get_run_logger()
    settings = load(config or None)
    run_id = _run_id()
    selected = settings.select(tables)
    outcomes: list[dict[str, Any]] = []
    for layer in LAYERS:
        tables = [t.target for t in selected if t.layer == layer]
        if not tables:
            continue
        runner = _layer_with_deployments if settings.prefect.fan_out == "deployments" else _layer_with_tasks
        values = runner(settings, tables, run_id)
        outcomes += [_outcome(n, layer, v) for n, v in zip(tables, values, strict=True)]
        logger.info("layer %s: %s", layer, ", ".join(f"{o['table']}={o['status']}" for o in outcomes[-len(tables) :]))
    failed = [o for o in outcomes if o["status"] != "ok"]
    moved = [o["table"] for o in outcomes if o["status"] == "ok" and (o["rows"] or o.get("late_rows_added"))]
    stale = _refresh_views(settings, moved, outcomes)
    result = {
        "run_id": run_id,
        "status": cycle_status(outcomes),
        "rows": sum(o["rows"] for o in outcomes),
        "tables": outcomes,
    }
    create_table_artifact(
        key=names.CYCLE_ARTIFACT,
        description=f"cycle {run_id}: {result['status']}",
        table=[cycle_row(o) for o in outcomes],
    )  # the exporter counts cycles and errors from it
    if failed or stale:  # the message is for people: nothing parses it
        return Failed(
            message=f"{len(failed)} of {len(outcomes)} tables failed"
            + (": " if failed else "")
            + "; ".join(f"{o['table']}: {(o.get('error') or {}).get('message', '')}"[:300] for o in failed)
            + _stale_text(stale),
            data=result,
        )
    return Completed(message=f"{result['rows']} rows offloaded", data=result)


RECONCILE_FIGURES = (
    "rows_missing",
    "buckets_missing",
    "buckets_duplicates",
    "buckets_repaired",
    "buckets_skipped_ttl",
    "buckets_skipped_cold_ahead",
    "rows_added",
    "duplicate_rows_removed",
    "rows_left_missing",
    "oldest_left_ns",
    "left_buckets",
)


@flow(name=names.MAINT_FLOW, persist_result=True)
def maintenance(config: str = "") -> Any:
    """Daily: per table, reconcile (repair) -> compact -> expire snapshots -> remove orphan files. One table
    at a time, each holding its slot; a failing table does not stop the others."""
    settings = load(config or None)
    outcomes = []
    for cfg in settings.tables:
        fut = maintain_table_task.with_options(tags=[names.table_limit(cfg.target)]).submit(settings.path, cfg.target)
        value = fut.result(raise_on_failure=False)
        outcomes.append(
            value if isinstance(value, dict) else {"table": cfg.target, "ok": False, "error": str(value)[:500]}
        )
    stale = _refresh_views(settings, [o["table"] for o in outcomes], outcomes)
    bad = [o for o in outcomes if not o.get("ok")]
    create_table_artifact(
        key="maintenance",
        description="daily maintenance",
        table=[
            {
                "table": o["table"],
                "ok": o.get("ok"),
                **{s: _brief(r) for s, r in (o.get("steps") or {}).items()},
                "error": o.get("error", ""),
            }
            for o in outcomes
        ],
    )
    found = [
        {"table": o["table"], **{k: rec.get(k) for k in RECONCILE_FIGURES}}
        for o in outcomes
        if isinstance(rec := (o.get("steps") or {}).get("reconcile"), dict) and not rec.get("error")
    ]
    if found:  # the exporter serves these (offload_reconcile_*)
        create_table_artifact(
            key=names.RECONCILE_ARTIFACT, table=found, description="what the daily reconcile found and repaired"
        )
    summary = {"ok": not bad, "tables": outcomes}
    if bad or stale:
        return Failed(
            message=("maintenance failed for " + ", ".join(o["table"] for o in bad) if bad else "maintenance done")
            + _stale_text(stale),
            data=summary,
        )
    return Completed(message=f"maintained {len(outcomes)} tables", data=summary)


def _refresh_views(settings: Settings, tables: list[str], outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Views created by `iceberg-offload view` follow the watermark. Each table's outcome gets `view` and
    `view_error`; returns the views left behind (the run then ends Failed, naming them)."""
    views = view.refresh_views(settings, tables) if tables else []
    by_table = {o["table"]: o for o in outcomes}
    for v in views:
        if (o := by_table.get(v["table"])) is not None:
            o["view"], o["view_error"] = v["view"], v["error"]
    if done := [v["view"] for v in views if not v["error"]]:
        get_run_logger().info("views re-pointed: %s", ", ".join(done))
    return [v for v in views if v["error"]]


def _stale_text(stale: list[dict[str, Any]]) -> str:
    return "".join(f"; view {v['view'] or v['table']} not re-pointed: {v['error']['message']}"[:300] for v in stale)


def _brief(step: dict[str, Any]) -> str:
    if step.get("error"):
        return "error: " + str(step["error"].get("message", ""))[:80]
    keys = ("buckets_repaired", "files_rewritten", "expired", "orphans")
    return ", ".join(f"{k}={len(v) if isinstance(v, list) else v}" for k, v in step.items() if k in keys)
