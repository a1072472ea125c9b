"""Compaction: rewrite each partition's small data files into files near the target size.

One run is one atomic `replace` snapshot: the old files deleted and the new ones added together, so a
reader sees either all small files or all new ones, with the same rows. The snapshot summary carries
the table's watermark (and running totals) forward, so `Sink.watermark` answers the same on the new head.
The commit is a compare-and-swap like an offload's: if anything committed after compaction read the
table, it fails (`CommitConflict`), deletes the files it wrote, and changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import FileFormat
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import Operation, Summary
from pyiceberg.table.update.snapshot import _OverwriteFiles
from pyiceberg.typedef import EMPTY_DICT

from iceberg_offload import names
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.compare import Progress
from iceberg_offload.engine.identity import SourceIdentity
from iceberg_offload.engine.identity import check as check_identity
from iceberg_offload.errors import CommitConflict, CommitOutcomeUnknown, CompactionMismatch, WarehouseError, redact
from iceberg_offload.iceberg.cas import CasTransaction, discard_files
from iceberg_offload.iceberg.catalog import catalog_errors, missing_file, warehouse_missing
from iceberg_offload.iceberg.datafiles import DataFileWriter
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.iceberg.sortorder import claimed_order_id

DEFAULT_TARGET = 128 * 1024 * 1024
CARRIED = (names.ROWS_TOTAL, names.COMMITS_TOTAL)
"""Summary properties a compaction copies from the watermark commit, besides every `offload.watermark.*`."""


@dataclass
class Bin:
    """Small files of one partition rewritten into one new file."""

    partition: str
    tasks: list[FileScanTask]

    @property
    def bytes(self) -> int:
        return sum(t.file.file_size_in_bytes for t in self.tasks)

    @property
    def rows(self) -> int:
        return sum(t.file.record_count for t in self.tasks)


@dataclass
class CompactResult:
    table: str
    applied: bool
    status: str = "ok"  # ok | nothing_to_do | no_table
    data_files_before: int = 0
    data_files_after: int = 0
    files_rewritten: int = 0
    files_written: int = 0
    rows_rewritten: int = 0
    bytes_rewritten: int = 0
    partitions: list[dict[str, Any]] = field(default_factory=list)
    snapshot_id: int | None = None
    watermark: dict[str, Any] | None = None
    duration_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Replace(_OverwriteFiles):
    """pyiceberg's overwrite producer (explicit delete_data_file/append_data_file), recorded as `replace`:
    the data is unchanged. pyiceberg's summary totals only know append/overwrite/delete, so the totals are
    computed as an overwrite and the operation renamed afterwards."""

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Summary:
        summary = super()._summary(snapshot_properties)
        return Summary(Operation.REPLACE, **summary.additional_properties)


def plan(table: Table, target_file_bytes: int, min_files: int) -> tuple[int, list[Bin]]:
    """(data files in the table, bins to rewrite). A file is small below 3/4 of the target; a partition is
    compacted when it has at least `min_files` small files; its small files are packed first-fit by size
    into bins of at most the target, and bins of one file are left alone."""
    spec = table.spec()
    small: dict[str, list[FileScanTask]] = {}
    total = 0
    for task in table.scan().plan_files():
        total += 1
        f = task.file
        if (
            task.delete_files
            or f.spec_id != spec.spec_id
            or f.file_format != FileFormat.PARQUET
            or f.file_size_in_bytes >= target_file_bytes * 3 // 4
        ):
            continue
        label = spec.partition_to_path(f.partition, table.schema()) if spec.fields else "(unpartitioned)"
        small.setdefault(label, []).append(task)
    bins: list[Bin] = []
    for label, tasks in sorted(small.items()):
        if len(tasks) < min_files:
            continue
        packed: list[Bin] = []
        for task in sorted(tasks, key=lambda t: -t.file.file_size_in_bytes):
            fit = next((b for b in packed if b.bytes + task.file.file_size_in_bytes <= target_file_bytes), None)
            if fit is None:
                packed.append(Bin(label, [task]))
            else:
                fit.tasks.append(task)
        bins += [b for b in packed if len(b.tasks) > 1]
    return total, bins


def compact(
    settings: Settings,
    cfg: TableSettings,
    sink: Sink,
    apply: bool,
    target_file_bytes: int = DEFAULT_TARGET,
    min_files: int = 5,
    progress: Progress | None = None,
) -> CompactResult:
    """Preview (or, with apply, commit) the compaction of one table. Raises CommitConflict (transient)
    when another writer committed meanwhile: nothing changed, run it again. With apply, `progress` hears
    the rows rewritten, a bin (one new file) at a time."""
    started = time.monotonic()
    result = CompactResult(cfg.target, applied=False)
    table = sink.load(cfg.target)
    if table is None or table.current_snapshot() is None:
        result.status = "no_table" if table is None else "nothing_to_do"
        return result
    # the configured source (its UUID unread: compaction opens no source), refused if another
    check_identity(table, SourceIdentity.of(settings.source, cfg.source), cfg.target)
    wm, wm_commit = sink.watermark(table)
    result.watermark = wm.as_dict() if wm else None
    with catalog_errors(f"planning the compaction of {cfg.target}"):
        total, bins = plan(table, target_file_bytes, min_files)
    result.data_files_before = result.data_files_after = total
    by_part: dict[str, dict[str, Any]] = {}
    for b in bins:
        p = by_part.setdefault(b.partition, {"partition": b.partition, "files": 0, "bytes": 0, "rows": 0, "bins": 0})
        p["files"], p["bytes"], p["rows"], p["bins"] = (
            p["files"] + len(b.tasks),
            p["bytes"] + b.bytes,
            p["rows"] + b.rows,
            p["bins"] + 1,
        )
    result.partitions = list(by_part.values())
    result.files_rewritten = sum(len(b.tasks) for b in bins)
    result.rows_rewritten = sum(b.rows for b in bins)
    result.bytes_rewritten = sum(b.bytes for b in bins)
    if not bins:
        result.status = "nothing_to_do"
    elif apply:
        props = {
            k: v
            for k, v in (wm_commit.props if wm_commit else {}).items()
            if k.startswith(names.WATERMARK_PREFIX) or k in CARRIED
        }
        props.update(
            {
                names.OPERATION: "compact",
                names.COMPACT_FILES_REMOVED: str(result.files_rewritten),
                names.COMPACT_FILES_ADDED: str(len(bins)),
                names.COMPACT_ROWS: str(result.rows_rewritten),
            }
        )
        new_table, written = _rewrite(table, cfg, bins, props, progress)
        result.applied, result.files_written = True, written
        result.snapshot_id = new_table.metadata.current_snapshot_id
        result.data_files_after = total - result.files_rewritten + written
    result.duration_seconds = round(time.monotonic() - started, 3)
    return result


def _rewrite(
    table: Table, cfg: TableSettings, bins: list[Bin], props: dict[str, str], progress: Progress | None = None
) -> tuple[Table, int]:
    """Write one file per bin and commit them with the deletes of the bins' files: one CAS snapshot."""
    name = ".".join(table.name())
    txn = CasTransaction(table)
    replace = _Replace(operation=Operation.OVERWRITE, transaction=txn, io=table.io, snapshot_properties=props)
    written: list[str] = []
    schema = table.schema()
    order = [(c, "ascending") for c in (cfg.timestamp_column, cfg.sequence_column) if c and c in schema.column_names]
    total, done = sum(b.rows for b in bins), 0
    try:
        with DataFileWriter(
            txn.table_metadata,
            table.io,
            replace.commit_uuid,
            written,
            sort_order_id=claimed_order_id(txn.table_metadata, [c for c, _ in order]),
        ) as files:
            for b in bins:
                data = ArrowScan(table.metadata, table.io, schema, AlwaysTrue()).to_table(b.tasks)
                if data.num_rows != b.rows:
                    raise CompactionMismatch(
                        f"{name}: {b.partition}: read {data.num_rows} rows from files whose "
                        f"manifests count {b.rows}; nothing was changed",
                        "check the table's files with a full scan before compacting it",
                    )
                if order:
                    data = data.sort_by(order)
                # one bin, one file: the writer's own split (in Arrow bytes) is lifted above the bin's size
                files.submit(data, max_file_bytes=2 * data.nbytes + 1)
                for task in b.tasks:
                    replace.delete_data_file(task.file)
                done += b.rows
                if progress:
                    progress(cfg.target, done, total)
            files.finish(replace)
            replace.commit()  # writes the manifests and stages the snapshot in the transaction
    except OSError as exc:
        discard_files(table, written)
        if (path := missing_file(exc)) is not None:
            raise warehouse_missing(f"compacting {name}", path, str(table.io.properties.get("warehouse", ""))) from exc
        raise WarehouseError(
            f"compacting {name} failed reading or writing files: {exc}; nothing was changed",
            "check free space and write permission at [catalog] warehouse",
        ) from exc
    except BaseException:
        discard_files(table, written)
        raise
    try:
        return txn.commit_transaction(), len(written)
    except CommitFailedException as exc:
        discard_files(table, written)
        raise CommitConflict(
            f"{name}: another writer committed while compaction ran ({exc}); the compaction "
            f"was discarded, nothing changed",
            "run the compaction again later",
        ) from exc
    except Exception as exc:
        raise CommitOutcomeUnknown(
            f"{name}: compaction commit outcome unknown: {redact(str(exc)).splitlines()[0][:300]}",
            "run the compaction again (it re-plans from the table as it is); files of a "
            "commit that did not land are removed by the orphan-file cleanup",
        ) from exc
