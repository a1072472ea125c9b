"""The `--json` payloads of `maintain` and `view` (the rules: payloads.py)."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict

from iceberg_offload.payloads import Error, Watermark

StepStatus = Literal["ok", "nothing_to_do", "no_table"]


class Bucket(TypedDict):
    """One hour that differs between the tiers."""

    bucket: Annotated[str, "the hour's start"]
    bucket_ns: int
    hot: int
    cold: int
    missing: int
    duplicates: int
    changed: int
    extra: int
    action: Annotated[Literal["repair", "skipped_ttl", "skipped_cold_ahead"], "what reconcile does with it"]


class HourLeft(TypedDict):
    hour: str
    hour_ns: int
    rows: int


class Reconcile(TypedDict):
    """`maintain reconcile`: hours compared, repaired (with --yes) and left."""

    table: str
    applied: bool
    watermark: Watermark | None
    buckets_compared: int
    buckets_missing: int
    buckets_duplicates: int
    buckets_repaired: int
    buckets_skipped_ttl: int
    buckets_skipped_cold_ahead: int
    buckets_changed: int
    values: bool
    rows_missing: int
    rows_changed: int
    rows_added: int
    duplicate_rows_removed: int
    rows_left_missing: Annotated[int, "missing rows still missing after it (skipped, failed, or a preview)"]
    oldest_left: str | None
    oldest_left_ns: int | None
    left_buckets: list[HourLeft]
    rows_deleted: int
    rows_written: int
    snapshot_id: int | None
    buckets: Annotated[list[Bucket], "the hours that differ"]
    error: Error | None
    seconds: float


class Partition(TypedDict):
    partition: str
    files: int
    bytes: int
    rows: int
    bins: int


class Compact(TypedDict):
    """`maintain compact`: small files rewritten into large ones, per partition."""

    table: str
    applied: bool
    status: StepStatus
    data_files_before: int
    data_files_after: int
    files_rewritten: int
    files_written: int
    rows_rewritten: int
    bytes_rewritten: int
    partitions: list[Partition]
    snapshot_id: int | None
    watermark: Watermark | None
    duration_seconds: float
    error: None
    seconds: float


class Expire(TypedDict):
    """`maintain expire`: snapshots past the retention, never the watermark's chain."""

    table: str
    applied: bool
    status: StepStatus
    snapshots_before: int
    snapshots_after: int
    expired: Annotated[list[int], "snapshot ids"]
    expire_before: str
    watermark_snapshot_id: int | None
    kept_for_watermark: int
    error: None
    seconds: float


class Orphan(TypedDict):
    path: str
    bytes: int
    age_seconds: int


class Orphans(TypedDict):
    """`maintain orphans`: unreferenced files older than the safety age."""

    table: str
    applied: bool
    status: StepStatus
    files_listed: int
    files_referenced: int
    orphans: list[Orphan]
    too_young: int
    deleted: int
    bytes: int
    error: None
    seconds: float


class StepFailed(TypedDict):
    """A step that stopped on an error (the next steps still ran)."""

    table: str
    applied: bool
    status: Literal["failed"]
    error: Error
    seconds: float


class Steps(TypedDict):
    """Each step's outcome; null: not asked for."""

    reconcile: Reconcile | StepFailed | None
    compact: Compact | StepFailed | None
    expire: Expire | StepFailed | None
    orphans: Orphans | StepFailed | None


class TableMaintenance(TypedDict):
    table: str
    applied: bool
    ok: bool
    steps: Steps
    error: Annotated[Error | None, "the table could not be opened: no step ran"]


class Maintain(TypedDict):
    """`maintain <step>|all`: a preview unless applied. `ok`: no step failed."""

    ok: bool
    applied: bool
    tables: list[TableMaintenance]


class View(TypedDict):
    """One table's hot + cold view. With --print only `table` and `sql` are set."""

    table: str
    view: str | None
    watermark: Watermark | None
    metadata_location: str | None
    snapshot_id: int | None
    sql: str


class Views(TypedDict):
    """`view`."""

    ok: bool
    tables: list[View]
