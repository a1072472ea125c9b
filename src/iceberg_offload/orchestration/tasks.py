"""The Prefect tasks of one table: its offload and its maintenance, each retried only for transient errors
(`_transient_only`: ClickHouse or catalog unreachable, a lost race; a terminal or unexpected error fails at
once), and the exclusion between them (invariant I11): in tasks fan-out an offload task waits while the
table's maintenance task is Running, and a maintenance task gives way while a cycle is Running.

Like flows, import this module only after `prefect_env()` has set PREFECT_API_URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterName,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import State

from iceberg_offload import names
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.config import load
from iceberg_offload.engine.offload import offload_table
from iceberg_offload.errors import OffloadError, OffloadInFlight, TableBusy, TableFailed
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.maintenance.daily import maintain_table
from iceberg_offload.orchestration.share import shared


def _transient_only(task: Any, task_run: Any, state: State) -> bool:
    """Retry a table only for transient errors (ClickHouse or catalog unreachable, a lost race)."""
    try:
        state.result()
    except TableFailed as exc:
        return exc.transient
    except OffloadError as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - an unexpected error: do not hammer, let the operator look
        return False
    return False


def run_table(config: str, table: str, run_id: str) -> dict[str, Any]:
    """Offload one table in this process (with the cycle's shared catalog and sources, when it has them);
    raise TableFailed when it failed."""
    share = shared(run_id)
    if share is None:
        settings = load(config or None)
        sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
        with open_source(settings.source) as source:
            result = offload_table(settings, settings.table(table), source, sink, run_id)
    else:
        with share.source() as source:
            result = offload_table(share.settings, share.settings.table(table), source, share.sink, run_id)
    if result.status != "ok":
        raise TableFailed(result.as_dict())
    return result.as_dict()


@task(
    name="offload-table",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_transient_only,
    task_run_name=names.TABLE_RUN_NAME,
)
def offload_table_task(config: str, table: str, run_id: str, wait_for_maintenance: bool = False) -> dict[str, Any]:
    if wait_for_maintenance:
        share = shared(run_id)
        _wait_while_maintained(table, share.maintaining if share is not None else _maintaining)
    return run_table(config, table, run_id)


MAINTENANCE_WAIT_SECONDS = 15 * 60


LOOK_TABLES = 100
"""Tables per API read of `maintained_tables`: the server returns at most 200 runs a read (PREFECT_API_DEFAULT_LIMIT),
room for two Running maintenance tasks of each."""


def maintained_tables(tables: set[str]) -> set[str]:
    """Which of these tables have a maintenance task Running (anywhere): one API read per LOOK_TABLES tables."""
    names_ = sorted(tables)
    running: set[str] = set()
    with get_client(sync_client=True) as client:
        for at in range(0, len(names_), LOOK_TABLES):
            where = TaskRunFilter(
                name=TaskRunFilterName(any_=[f"maintain {t}" for t in names_[at : at + LOOK_TABLES]]),
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])),
            )
            offset = 0
            while True:  # a full page: read on (Running runs a crashed worker left may fill it)
                runs = client.read_task_runs(task_run_filter=where, limit=2 * LOOK_TABLES, offset=offset)
                running |= {r.name.removeprefix("maintain ") for r in runs}
                if len(runs) < 2 * LOOK_TABLES:
                    break
                offset += len(runs)
    return running & tables


def _maintaining(table: str) -> bool:
    return bool(maintained_tables({table}))


def _wait_while_maintained(table: str, maintaining: Callable[[str], bool] = _maintaining) -> None:
    """Tasks fan-out takes no tag slot (too slow per cycle), so it looks: while the maintenance task of this
    table is Running, wait. The maintenance task looks too (after it is Running): it gives way while a cycle
    runs. Each looks after its own Running state is set, so at least one of them sees the other (with the
    cycle's CycleShare, every look is answered by a read that started after the task asked)."""
    deadline = time.monotonic() + MAINTENANCE_WAIT_SECONDS
    while maintaining(table):
        if time.monotonic() > deadline:
            raise TableBusy(
                f"the maintenance of {table} has held it for {MAINTENANCE_WAIT_SECONDS // 60} min",
                "it is offloaded by the next cycle; look at the iceberg-maintenance flow run",
            )
        time.sleep(2)


@task(
    name="maintain-table",
    retries=20,
    retry_delay_seconds=30,
    retry_condition_fn=_transient_only,
    task_run_name="maintain {table}",
)
def maintain_table_task(config: str, table: str) -> dict[str, Any]:
    """Holds the table's `offload-table:<table>` slot (tagged by the flow). A running offload cycle may be at
    this table without a slot (tasks fan-out): then give the slot back and retry in 30 s."""
    settings = load(config or None)
    with get_client(sync_client=True) as client:
        cycles = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[names.MAIN_DEPLOYMENT])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
            limit=1,
        )
    if cycles:
        raise OffloadInFlight(f"offload cycle {cycles[0].name} is running", "maintenance retries in 30 s")
    result = maintain_table(settings, settings.table(table))
    if not result["ok"]:
        errors = [r["error"] for r in result["steps"].values() if r.get("error")] or [result.get("error") or {}]
        raise TableFailed({"table": table, "error": errors[0]} | {"maintenance": result})
    return result
