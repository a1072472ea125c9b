"""The command line, declared with click: every command, sub-action and option, its help and one example.

Parsing only: a command's callback returns an `Invocation` (cli/declare.py: the name of the cmd_* function
and the options, merged); cli/main.py runs it. So a command line can be checked without running anything
(`parse`).

`-c/--config`, `-o/--output` and `--json` are valid before the command, after it and after a sub-action
(`watermark set`, `maintain reconcile`, `schedule pause`); the innermost given wins. A group's own options
(`maintain --table X reconcile`, `schedule --deployment D pause`) reach its sub-actions the same way; given
at both levels, repeatable ones add up. Only click is imported here: --help loads nothing of the engine.
"""

from __future__ import annotations

import click

from iceberg_offload import __version__, names
from iceberg_offload.cli.declare import (
    CONTEXT,
    Ordered,
    command,
    flag,
    global_options,
    nothing,
    one_table,
    seconds,
    subgroup,
    tables,
    values,
    yes,
)

root = Ordered(
    None,
    params=global_options(),
    callback=nothing,
    context_settings=CONTEXT,
    help="Copy ClickHouse rows into Iceberg before the TTL deletes them.\n\nExit codes: 0 ok, 1 a table "
    "failed or a check found a problem, 2 bad config or input. -c/--config, -o/--output and --json "
    "are valid before or after the command.",
    epilog="\b\nExample:\n  iceberg-offload status -t trades -o json",
)
click.version_option(__version__, "--version", message="%(prog)s %(version)s")(root)

# -- the engine ---------------------------------------------------------------------------------------------
command(
    root,
    "run",
    "cmd_run",
    "one offload cycle over all (or --table) tables",
    "iceberg-offload run -t trades",
    tables(),
    more="Bronze, then silver, then gold; a failing table does not stop the others. A backlog shows a "
    "progress bar (rows/s, time left) on a terminal.",
)
command(
    root,
    "status",
    "cmd_status",
    "watermark, lag, hot/cold rows and TTL headroom per table",
    "iceberg-offload status -t trades",
    tables(),
)
wm = subgroup(
    root,
    "watermark",
    "the watermark history from Iceberg snapshots, or a new watermark",
    "iceberg-offload watermark show -t trades",
)
command(
    wm,
    "show",
    "cmd_watermark_show",
    "every commit that carried a watermark, newest first",
    "iceberg-offload watermark show -t trades",
    tables(),
    action="show",
)
command(
    wm,
    "set",
    "cmd_watermark_set",
    "preview (or --yes: commit) a new watermark for one table",
    "iceberg-offload watermark set -t trades --to 2026-11-29T16:00:00Z",
    one_table(),
    click.Option(["--to"], required=True, metavar="TIME", help="ISO 8601 (UTC) or epoch seconds"),
    click.Option(["--seq"], type=int, default=None, metavar="N", help="sequence value at that time (default: none)"),
    yes("commit it (default: only show the effect)"),
    flag("--reoffload", "allow moving back: rows are offloaded again"),
    flag("--future", "allow a watermark after now - settle_seconds (every row until then is skipped)"),
    action="set",
)
command(
    root,
    "adopt",
    "cmd_adopt",
    "take the configured ClickHouse table as the source of an Iceberg table "
    "offloaded from another (a deliberate move); a preview unless --yes",
    "iceberg-offload adopt -t trades",
    one_table(),
    yes("record the new source (default: only show the effect)"),
    more="Its rows above the watermark are offloaded next; rows at or below it are assumed to be in Iceberg already.",
)
command(
    root,
    "verify",
    "cmd_verify",
    "hot vs cold per hour: rows missing, duplicated or changed in cold",
    "iceberg-offload verify -t trades --values",
    tables(),
    values("compare every column of every row, not only keys (default: on for final tables)"),
)
command(
    root, "demo", "cmd_demo", "seed the embedded ClickHouse with market data and offload it", "iceberg-offload demo"
)

# -- maintenance --------------------------------------------------------------------------------------------
REPAIR_VALUES = "reconcile compares every column of every row, not only keys (default: on for final tables)"
mt = subgroup(
    root,
    "maintain",
    "reconcile (repair), compact, expire snapshots, remove orphan files; a preview unless --yes",
    "iceberg-offload maintain reconcile -t trades -y",
    tables(),
    yes("apply (default: only show what would change)"),
    values(REPAIR_VALUES),
)
for step, summary, example in [
    (
        "reconcile",
        "replace hour buckets with rows missing, duplicated or changed in cold by the hot tier's",
        "iceberg-offload maintain reconcile -t trades -y",
    ),
    (
        "compact",
        "rewrite each partition's small files into files near [maintenance] target_file_mb",
        "iceberg-offload maintain compact -t trades",
    ),
    (
        "expire",
        "expire snapshots older than snapshot_retention_days (keeping the watermark's)",
        "iceberg-offload maintain expire -y",
    ),
    (
        "orphans",
        "remove files no snapshot references, older than orphan_age_days",
        "iceberg-offload maintain orphans -y",
    ),
    (
        "all",
        "reconcile, compact, expire, orphans in that order (the daily maintenance)",
        "iceberg-offload maintain all -y",
    ),
]:
    command(
        mt,
        step,
        "cmd_maintain",
        summary + "; a preview unless --yes",
        example,
        tables(),
        yes("apply (default: only show what would change)"),
        values(REPAIR_VALUES),
        step=step,
    )
command(
    root,
    "view",
    "cmd_view",
    "create a ClickHouse view reading recent rows from the MergeTree table and older ones from Iceberg",
    "iceberg-offload view -t trades --print",
    tables(),
    click.Option(["--print", "print_only"], is_flag=True, default=False, help="print the SQL, create nothing"),
)

# -- orchestration and operations -----------------------------------------------------------------------------
command(
    root,
    "doctor",
    "cmd_doctor",
    "diagnose like the runbook: processes, server, workers, schedule, runs, metrics, tables; exit 1 on any fail",
    "iceberg-offload doctor --engine-only",
    flag("--engine-only", "only ClickHouse, catalog, warehouse and tables (no Prefect stack checks)"),
)
command(
    root,
    "recover",
    "cmd_recover",
    "what the runbook would do, in its order; --yes does it, runs the offload and checks again",
    "iceberg-offload recover -y",
    yes("do it (default: only show the plan)"),
    flag("--resume-schedule", "also resume a paused schedule"),
    seconds(300.0, "seconds to wait for the stack and the run"),
)
command(
    root,
    "deploy",
    "cmd_deploy",
    "create or update the work pool, deployments and per-table limits (idempotent)",
    "iceberg-offload deploy -c /etc/offload/offload.toml",
)
command(
    root,
    "worker",
    "cmd_worker",
    f"a Prefect process worker on pool {names.POOL} plus the metrics endpoint",
    "iceberg-offload worker --limit 4",
    click.Option(["--name"], metavar="NAME", help="worker name (default HOST-PID)"),
    click.Option(
        ["--limit"], type=int, metavar="N", help="flow runs at once (default [prefect] worker_limit; 0 = no limit)"
    ),
)
command(
    root,
    "metrics",
    "cmd_metrics",
    "serve the Prometheus endpoint alone ([metrics] host:port)",
    "iceberg-offload metrics",
)
command(
    root,
    "up",
    "cmd_up",
    "start Prefect server, worker and deployments natively; returns when the API is ready and a worker is ONLINE",
    "iceberg-offload up --timeout 300",
    seconds(180.0, "seconds to wait for readiness"),
)
command(root, "down", "cmd_down", "stop the native stack that `up` started", "iceberg-offload down")
command(root, "ps", "cmd_ps", "the native stack's processes, their logs and the URLs", "iceberg-offload ps")
command(
    root,
    "_supervise",
    "cmd_supervise",
    "the native stack's supervisor (started by `up`)",
    "iceberg-offload _supervise",
    hidden=True,
)
command(
    root,
    "trigger",
    "cmd_trigger",
    "start a run of a deployment now (default: the offload)",
    "iceberg-offload trigger --wait",
    click.Option(
        ["--deployment"],
        default=names.MAIN,
        metavar="FLOW/DEPLOYMENT",
        help="the deployment (default: the offload's, as `prefect deployment ls` names it)",
    ),
    flag("--wait", "wait until the run is final; exit 1 unless COMPLETED"),
    seconds(600.0, "seconds to wait with --wait"),
)


def deployments() -> click.Option:
    return click.Option(
        ["--deployment"],
        multiple=True,
        metavar="FLOW/DEPLOYMENT",
        help="repeatable (default: the offload's and the maintenance's)",
    )


sc = subgroup(
    root, "schedule", "show, pause or resume the deployments' schedules", "iceberg-offload schedule show", deployments()
)
for action, summary in [
    ("show", "each deployment's schedules and whether they are active"),
    ("pause", "pause the deployments and their schedules"),
    ("resume", "resume the deployments and their schedules"),
]:
    command(
        sc,
        action,
        "cmd_schedule",
        summary,
        f"iceberg-offload schedule {action} --deployment {names.MAIN}",
        deployments(),
        action=action,
    )
