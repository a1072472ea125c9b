"""`doctor` checks of the engine alone (no orchestrator): the warehouse holds what the catalog lists, and
whether the Prefect stack is used here at all (a cron or manual `iceberg-offload run` needs none)."""

from __future__ import annotations

from .config import PrefectSettings, Settings
from .doctor import Check
from .errors import OffloadError
from .sink import Sink, open_catalog, warehouse_reads
from .stack import stack_dir

LOCAL_API_URL = str(PrefectSettings.model_fields["api_url"].default)


def stack_used(settings: Settings) -> bool:
    """From durable facts: `iceberg-offload up` left its state file here, or the config points at a Prefect
    server that is not the local default (compose, a shared server)."""
    return (stack_dir(settings) / "state.json").exists() or \
        settings.prefect.api_url.rstrip("/") != LOCAL_API_URL.rstrip("/")


def check_orchestrator(settings: Settings, engine_only: bool) -> Check:
    if engine_only:
        return Check("orchestrator", "ok", "not checked (--engine-only)")
    return Check("orchestrator", "ok", f"not used (no stack started: no {stack_dir(settings) / 'state.json'}, "
                 f"[prefect] api_url is the local default); `iceberg-offload up` starts one")


def check_warehouse(settings: Settings) -> list[Check]:
    """Each table's current metadata file and its current snapshot's manifest list are in the warehouse."""
    try:
        sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    except OffloadError:
        return []  # the catalog check says why
    missing, tables = [], 0
    for cfg in settings.tables:
        try:
            table = sink.load(cfg.target)
            if table is None:
                continue
            tables += 1
            snap = table.current_snapshot()
            if snap is not None:
                with warehouse_reads(f"reading {cfg.target}", sink.warehouse):
                    if not table.io.new_input(snap.manifest_list).exists():
                        raise FileNotFoundError(2, "No such file or directory", snap.manifest_list)
        except OffloadError as exc:
            if exc.kind != "warehouse_missing":
                continue  # the table's own check reports it
            missing.append(exc)
    if missing:
        return [Check("warehouse", "fail", "; ".join(e.message for e in missing), missing[0].fix, "warehouse lost")]
    return [Check("warehouse", "ok", f"current metadata and manifest list of {tables} tables present under "
                  f"{settings.catalog.warehouse}")]
