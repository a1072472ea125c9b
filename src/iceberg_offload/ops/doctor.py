"""`iceberg-offload doctor`: the runbook's diagnosis, as named checks with what they saw and the fix.

Each check is ok / warn / fail. The report names the runbook scenario the failures match (worker down,
server down, no runs, metrics unreachable, full restart; warehouse lost, offload failing, lag, watermark,
TTL risk). The stack checks (doctor_stack) run only where the stack is used (doctor_engine.stack_used); the
table checks here: each table's status and what the next late-row sweep would find.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from iceberg_offload import names
from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.offload import late_since
from iceberg_offload.engine.repair import reconcile
from iceberg_offload.errors import EngineBusy, OffloadError, TTLTooShort, reported_as
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.ops.doctor_engine import Check, check_history, check_orchestrator, check_warehouse, stack_used
from iceberg_offload.ops.doctor_stack import (
    check_deployment,
    check_metrics,
    check_processes,
    check_runs,
    check_server,
    check_workers,
)
from iceberg_offload.ops.status import TableStatus, derive, table_status

LAG_WARN_SECONDS = 30 * 60
TTL_WARN_SECONDS = 86400


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def scenario(self) -> str | None:
        """The scenario of the failing checks, in the runbook's order of likelihood. A check that names the
        cause (a paused schedule, a stuck run, a foreign holder of the metrics port) wins; a supervisor
        restart in the last two minutes explains a server, worker or metrics failure."""
        order = [
            "full restart",
            "server down",
            "worker down",
            "no runs",
            "metrics unreachable",
            "warehouse lost",
            "offload failing",
            "ttl risk",
            "lag",
            "watermark",
        ]
        failed = [c for c in self.checks if c.status == "fail" and c.scenario]
        found = {c.scenario for c in failed if c.cause}
        if not found:
            found = {c.scenario for c in failed}
            restart = next((c for c in self.checks if c.name == "processes" and c.status == "warn"), None)
            if (
                restart is not None
                and restart.scenario
                and found & {"server down", "worker down", "metrics unreachable"}
            ):
                found.add(restart.scenario)
        if not found:  # warnings only: a restart that has healed is the least of them
            warned = [c for c in self.checks if c.status == "warn" and c.scenario]
            found = {c.scenario for c in warned if c.name != "processes"} or {c.scenario for c in warned}
        return next((s for s in order if s in found), None)

    def as_dict(self) -> dict[str, Any]:
        """payloads_ops.Doctor."""
        scenario = self.scenario
        return {
            "ok": self.ok,
            "scenario": scenario,
            "runbook": names.runbook(scenario),
            "checks": [asdict(c) for c in self.checks],
        }


def check_tables(settings: Settings) -> list[Check]:
    out = []
    try:
        sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    except OffloadError as exc:
        return [Check("catalog", "fail", exc.message, exc.fix, "offload failing")]
    src = settings.source.model_copy(update={"lock_timeout_seconds": min(settings.source.lock_timeout_seconds, 10)})
    try:
        with open_source(src) as source:
            statuses = [table_status(settings, cfg, source, sink) for cfg in settings.tables]
            for cfg, st in zip(settings.tables, statuses, strict=True):
                late_rows(settings, cfg, source, sink, st)
        out.append(Check("clickhouse", "ok", f"{settings.source.dsn} answers"))
    except OffloadError as exc:
        scenario = None if isinstance(exc, EngineBusy) else "offload failing"
        out.append(Check("clickhouse", "warn" if scenario is None else "fail", exc.message, exc.fix, scenario))
        statuses = [table_status(settings, cfg, None, sink) for cfg in settings.tables]
    out.append(Check("catalog", "ok", f"{settings.catalog.uri.split('@')[-1]} answers"))
    out += [_table_check(st) for st in statuses]
    return out


def late_rows(settings: Settings, cfg: TableSettings, source: Source, sink: Sink, st: TableStatus) -> None:
    """What the next late-row sweep would find: rows behind the watermark that Iceberg lacks (a preview of
    the sweep over `late_lookback_seconds`; older ones are the daily reconcile's). Sets `st.late_rows` and
    counts the oldest in the TTL headroom."""
    if st.error or st.watermark is None:
        return
    since = late_since(settings, cfg, sink, int(st.watermark["ts_ns"]))
    if since is None:
        return
    rec = reconcile(settings, cfg, source, sink, apply=False, values=False, since_ns=since)
    if rec.error:
        st.error = rec.error
        return
    st.late_rows, st.late_oldest_ns = rec.rows_left_missing, rec.oldest_left_ns
    derive(st, time.time())


def _table_check(st: TableStatus) -> Check:
    name = f"table {st.table}"
    if st.error:
        scenario = "ttl risk" if reported_as(st.error, TTLTooShort) else "offload failing"
        return Check(name, "fail", st.error["message"], st.error["fix"], scenario)
    head, lag, pending, late = st.ttl_headroom_seconds, st.lag_seconds, st.pending_rows or 0, st.late_rows or 0
    saw = (
        (f"lag {lag / 60:.0f} min" if lag is not None else "no watermark yet")
        + f", {pending} rows waiting"
        + (f", {late} late rows behind the watermark not in Iceberg" if late else "")
        + (f", TTL headroom {head / 3600:.1f} h" if head is not None else "")
    )
    repair = f"iceberg-offload maintain reconcile --table {st.table} --yes"
    if head is not None and head < TTL_WARN_SECONDS and (pending or late):
        fix = (
            f"offload it now: iceberg-offload run --table {st.table} (runbook ttl-risk.md)"
            if pending
            else f"lengthen the ClickHouse TTL now (runbook ttl-risk.md step 2), then add them: {repair}"
        )
        return Check(name, "fail", saw, fix, "ttl risk")
    if late:
        return Check(
            name,
            "warn",
            saw,
            f"the next cycle's late-row sweep adds them; now: {repair} (runbook ttl-risk.md)",
            "ttl risk",
        )
    if lag is not None and lag > LAG_WARN_SECONDS and pending:
        return Check(name, "warn", saw, "iceberg-offload trigger --wait (runbook lag.md)", "lag")
    return Check(name, "ok", saw)


def diagnose(settings: Settings, engine_only: bool = False) -> Report:
    """The stack's checks where it is used (else one info line), then the engine's: ClickHouse, catalog,
    warehouse, tables."""
    report = Report()
    if engine_only or not stack_used(settings):
        report.checks.append(check_orchestrator(settings, engine_only))
    else:
        report.checks += _stack_checks(settings)
    report.checks += check_tables(settings)
    report.checks += check_warehouse(settings)
    report.checks += check_history(settings)
    return report


def _stack_checks(settings: Settings) -> list[Check]:
    report = Report()
    report.checks.append(check_processes(settings))
    server = check_server(settings)
    report.checks.append(server)
    dep = None
    if server.status == "ok":
        report.checks.append(check_workers(settings))
        deployment, dep = check_deployment(settings)
        report.checks.append(deployment)
        report.checks += check_runs(settings, dep)
    report.checks.append(check_metrics(settings))
    return report.checks
