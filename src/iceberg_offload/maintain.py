"""Table maintenance: compaction (compact.py), snapshot expiry and orphan-file removal.

Every function previews by default and changes the table only with `apply=True`. Expiry never breaks the
chain from the current snapshot back to the snapshot that carries the watermark (the watermark is read
by walking that chain), and commits with a compare-and-swap on the current snapshot like every other
writer. pyiceberg's expiry removes snapshots from the metadata only: the files only they referenced are
left on storage, and `orphans` deletes them (with anything a killed offload wrote and never committed)
once they are older than its safety age.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.update import AssertRefSnapshotId
from pyiceberg.table.update.snapshot import ExpireSnapshots

from .compact import CompactResult, compact
from .config import Settings, TableSettings
from .errors import CommitConflict
from .sink import CasTransaction, Sink, WarehouseError, catalog_errors
from .window import iso

__all__ = ["CompactResult", "ExpireResult", "OrphanResult", "compact", "expire", "orphans", "referenced_files"]


@dataclass
class ExpireResult:
    table: str
    applied: bool
    status: str = "ok"  # ok | nothing_to_do | no_table
    snapshots_before: int = 0
    snapshots_after: int = 0
    expired: list[int] = field(default_factory=list)
    expire_before: str = ""
    watermark_snapshot_id: int | None = None
    kept_for_watermark: int = 0
    """Snapshots kept only because the chain from the head to the watermark snapshot runs through them."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OrphanResult:
    table: str
    applied: bool
    status: str = "ok"  # ok | nothing_to_do | no_table
    files_listed: int = 0
    files_referenced: int = 0
    orphans: list[dict[str, Any]] = field(default_factory=list)
    """Unreferenced files older than the safety age: deleted with apply, else what would be deleted."""
    too_young: int = 0
    """Unreferenced files kept because they are younger than the safety age (perhaps an offload in flight)."""
    deleted: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ancestry(table: Table, snapshot_id: int | None) -> list[int]:
    out, meta = [], table.metadata
    snap = meta.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    while snap is not None:
        out.append(snap.snapshot_id)
        snap = meta.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return out


def expire(settings: Settings, cfg: TableSettings, sink: Sink, apply: bool, older_than_seconds: float = 7 * 86400,
           keep_last: int = 10, now_ms: int | None = None) -> ExpireResult:
    """Expire snapshots older than `older_than_seconds`, keeping the newest `keep_last` of the main branch
    (at least the current one) and every snapshot from the head down to the one holding the watermark.
    Only the oldest end of the main chain is cut, so the chain the watermark is read from stays whole;
    snapshots no branch or tag reaches are expired by age alone."""
    result = ExpireResult(cfg.target, applied=False)
    table = sink.load(cfg.target)
    if table is None:
        result.status = "no_table"
        return result
    meta = table.metadata
    cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(older_than_seconds * 1000)
    result.expire_before = iso(cutoff * 1_000_000)
    result.snapshots_before = result.snapshots_after = len(meta.snapshots)
    chain = sink.history(table)  # the main branch, newest first
    _, wm_commit = sink.watermark(table)
    keep = max(keep_last, 1)
    if wm_commit is not None:
        result.watermark_snapshot_id = wm_commit.snapshot_id
        need = 1 + next(i for i, c in enumerate(chain) if c.snapshot_id == wm_commit.snapshot_id)
        result.kept_for_watermark = max(0, need - keep)
        keep = max(keep, need)
    cut = len(chain)
    while cut > keep and chain[cut - 1].timestamp_ms < cutoff:
        cut -= 1
    expired = [c.snapshot_id for c in chain[cut:]]
    reachable = {sid for ref in meta.refs.values() for sid in _ancestry(table, ref.snapshot_id)}
    expired += [s.snapshot_id for s in meta.snapshots if s.snapshot_id not in reachable and s.timestamp_ms < cutoff]
    heads = {ref.snapshot_id for ref in meta.refs.values()}  # pyiceberg refuses to expire a branch or tag head
    result.expired = expired = [sid for sid in expired if sid not in heads]
    if not expired:
        result.status = "nothing_to_do"
        return result
    if apply:
        name = ".".join(table.name())
        txn = CasTransaction(table)
        ExpireSnapshots(txn).by_ids(expired).commit()
        # like an offload commit, only onto the head this plan was made from
        head = chain[0].snapshot_id if chain else None
        txn._apply((), (AssertRefSnapshotId(snapshot_id=head, ref=MAIN_BRANCH),))  # type: ignore[call-arg]
        try:
            with catalog_errors(f"expiring snapshots of {name}"):
                new_table = txn.commit_transaction()
        except CommitFailedException as exc:
            raise CommitConflict(f"{name}: another writer committed while snapshots were being expired ({exc}); "
                                 "nothing was expired", "run the expiry again") from exc
        result.applied = True
        result.snapshots_after = len(new_table.metadata.snapshots)
    return result


def _norm(location: str) -> str:
    """A file's location as the file system lists it ("/abs/path" for file://, "bucket/key" for s3://)."""
    return PyArrowFileIO.parse_location(location)[2]


def _filesystem(io: FileIO, location: str) -> tuple[pafs.FileSystem, str]:
    """The table's file system through its FileIO (credentials and endpoints of the catalog properties)."""
    if isinstance(io, PyArrowFileIO):
        scheme, netloc, path = io.parse_location(location, io.properties)
        return io.fs_by_scheme(scheme, netloc), path
    return pafs.FileSystem.from_uri(location)


def referenced_files(table: Table) -> set[str]:
    """Every file a retained snapshot or the metadata needs: metadata JSON (current and its log),
    statistics, manifest lists, manifests, and the live data and delete files of every snapshot."""
    meta, io = table.metadata, table.io
    refs = {table.metadata_location, *(e.metadata_file for e in meta.metadata_log)}
    refs |= {s.statistics_path for s in (*meta.statistics, *meta.partition_statistics)}
    seen: set[str] = set()
    for snap in meta.snapshots:
        refs.add(snap.manifest_list)
        for manifest in snap.manifests(io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            refs |= {e.data_file.file_path for e in manifest.fetch_manifest_entry(io, discard_deleted=True)}
    refs |= seen
    return {_norm(r) for r in refs}


def orphans(settings: Settings, cfg: TableSettings, sink: Sink, apply: bool, older_than_seconds: float = 3 * 86400,
            now: float | None = None) -> OrphanResult:
    """Find (and with apply, delete) files under the table's data and metadata folders that no snapshot
    or metadata file references and that are older than `older_than_seconds`. Files are listed before the
    table is loaded, so a file committed meanwhile is seen as referenced; a file still being written is
    younger than the safety age."""
    result = OrphanResult(cfg.target, applied=False)
    table = sink.load(cfg.target)
    if table is None:
        result.status = "no_table"
        return result
    name, props, location = ".".join(table.name()), table.metadata.properties, table.location().rstrip("/")
    dirs = [props.get("write.data.path", f"{location}/data"), props.get("write.metadata.path", f"{location}/metadata")]
    listed: dict[str, tuple[pafs.FileSystem, pafs.FileInfo]] = {}
    with catalog_errors(f"listing the files of {name}"):
        for d in dirs:
            fs, path = _filesystem(table.io, d)
            for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
                if info.type == pafs.FileType.File:
                    listed[info.path] = (fs, info)
        table = sink.load(cfg.target) or table  # after listing: whatever committed meanwhile is referenced
        refs = referenced_files(table)
    result.files_listed = len(listed)
    result.files_referenced = sum(p in refs for p in listed)
    now = time.time() if now is None else now
    for path, (_, info) in sorted(listed.items()):
        if path in refs:
            continue
        age = now - info.mtime_ns / 1e9 if info.mtime_ns is not None else 0.0
        if age < older_than_seconds:
            result.too_young += 1
            continue
        result.orphans.append({"path": path, "bytes": info.size, "age_seconds": int(age)})
        result.bytes += info.size or 0
    if not result.orphans:
        result.status = "nothing_to_do"
    elif apply:
        result.applied = True
        for orphan in result.orphans:
            try:
                listed[orphan["path"]][0].delete_file(orphan["path"])
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise WarehouseError(f"{name}: deleting orphan file {orphan['path']} failed: {exc} "
                                     f"({result.deleted} deleted before it)",
                                     "check write permission at [catalog] warehouse, then run orphans again") from exc
            result.deleted += 1
    return result
