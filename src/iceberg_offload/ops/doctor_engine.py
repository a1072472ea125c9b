"""`doctor` checks of the engine alone (no orchestrator): the warehouse holds what the catalog lists, and
whether the Prefect stack is used here at all (a cron or manual `iceberg-offload run` needs none). `Check`,
the shape of every doctor check, lives here so that doctor imports this module and not the reverse."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyiceberg.io import FileIO
from pyiceberg.table import Snapshot

from iceberg_offload import names
from iceberg_offload.config import PrefectSettings, Settings
from iceberg_offload.errors import OffloadError, WarehouseError, WarehouseMissing
from iceberg_offload.iceberg.catalog import open_catalog, warehouse_missing, warehouse_reads
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.orchestration.stack import stack_dir

LOCAL_API_URL = str(PrefectSettings.model_fields["api_url"].default)
NAMED = 3
"""How many missing data files a failed warehouse check names (the count says the rest)."""
CHECKERS = 16
"""Existence checks in flight: a local disk answers in microseconds, an object store in a round trip each."""


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    saw: str
    fix: str = ""
    scenario: str | None = None
    cause: bool = False  # names the cause, not a symptom: its scenario wins over the others' order


def stack_used(settings: Settings) -> bool:
    """From durable facts: `iceberg-offload up` left its state file here, or the config points at a Prefect
    server that is not the local default (compose, a shared server)."""
    return (stack_dir(settings) / "state.json").exists() or settings.prefect.api_url.rstrip(
        "/"
    ) != LOCAL_API_URL.rstrip("/")


def check_orchestrator(settings: Settings, engine_only: bool) -> Check:
    if engine_only:
        return Check("orchestrator", "ok", "not checked (--engine-only)")
    return Check(
        "orchestrator",
        "ok",
        f"not used (no stack started: no {stack_dir(settings) / 'state.json'}, "
        f"[prefect] api_url is the local default); `iceberg-offload up` starts one",
    )


def check_warehouse(settings: Settings) -> list[Check]:
    """Each table's current metadata file, its current snapshot's manifest list and manifests, and every data
    file the snapshot references are in the warehouse."""
    try:
        sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    except OffloadError:
        return []  # the catalog check says why
    missing, tables, files = [], 0, 0
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
                    files += check_data_files(f"reading {cfg.target}", table.io, snap, sink.warehouse)
        except OffloadError as exc:
            if not isinstance(exc, WarehouseError):
                continue  # the table's own check reports it
            # a file missing, or the warehouse refusing access (an object store's credentials)
            missing.append(exc)
    if missing:
        return [Check("warehouse", "fail", "; ".join(e.message for e in missing), missing[0].fix, "warehouse lost")]
    return [
        Check(
            "warehouse",
            "ok",
            f"current metadata, manifests and {files} data files of {tables} tables "
            f"present under {settings.catalog.warehouse}",
        )
    ]


def check_data_files(what: str, io: FileIO, snap: Snapshot, warehouse: str) -> int:
    """The number of live data files `snap` references, all present; else WarehouseMissing naming the first
    NAMED missing ones and how many are missing (a missing manifest is named the same way)."""
    paths: list[str] = []
    for manifest in snap.manifests(io):
        if not io.new_input(manifest.manifest_path).exists():
            raise FileNotFoundError(2, "No such file or directory", manifest.manifest_path)
        paths += (e.data_file.file_path for e in manifest.fetch_manifest_entry(io, discard_deleted=True))
    with ThreadPoolExecutor(max_workers=CHECKERS, thread_name_prefix="doctor-exists") as pool:
        present = list(pool.map(lambda p: io.new_input(p).exists(), paths))
    lost = [p for p, ok in zip(paths, present, strict=True) if not ok]
    if not lost:
        return len(paths)
    if len(lost) == 1:
        raise warehouse_missing(what, lost[0], warehouse)
    first = warehouse_missing(what, lost[0], warehouse)
    named = ", ".join(lost[:NAMED]) + (f" and {len(lost) - NAMED} more" if len(lost) > NAMED else "")
    raise WarehouseMissing(
        f"{what}: {len(lost)} of the {len(paths)} data files of the current snapshot are "
        f"missing from the warehouse: {named}",
        first.fix,
    )


def check_history(settings: Settings) -> list[Check]:
    """Each table's snapshots and current metadata file. Every commit rewrites (and every load parses) the
    metadata file, which holds every snapshot: beyond `[maintenance] warn_snapshots` expiry is not keeping
    up, and commits slow down with each snapshot (docs/benchmarks.md "Scale in history")."""
    try:
        sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
    except OffloadError:
        return []  # the catalog check says why
    limit = settings.maintenance.warn_snapshots
    seen: list[tuple[str, int, int]] = []  # (table, snapshots, metadata file bytes)
    for cfg in settings.tables:
        try:
            table = sink.load(cfg.target)
            if table is None:
                continue
            size = len(table.io.new_input(table.metadata_location))
        except (OffloadError, OSError):
            continue  # the table's own check or the warehouse check reports it
        seen.append((cfg.target, len(table.metadata.snapshots), size))
    if not seen:
        return []
    over = [t for t in seen if t[1] > limit]
    if over:
        saw = "; ".join(f"{t}: {n} snapshots, metadata file {_size(b)}" for t, n, b in over)
        tables = " ".join(f"--table {t}" for t, _, _ in over)
        return [
            Check(
                "history",
                "warn",
                f"{saw} (more than [maintenance] warn_snapshots = {limit}): each snapshot makes every commit "
                "and load of the table slower; is the daily expiry running?",
                f"iceberg-offload maintain expire {tables} --yes, and keep the daily maintenance running "
                f"({names.MAINT}, or `iceberg-offload maintain all --yes` once a day); if it runs, lower "
                "[maintenance] snapshot_retention_days",
            )
        ]
    name, most, size = max(seen, key=lambda t: t[1])
    return [
        Check(
            "history",
            "ok",
            f"at most {most} snapshots in a table ({name}, metadata file {_size(size)}; warns above {limit})",
        )
    ]


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"
