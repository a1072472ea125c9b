"""Orphan files: files under a table's folders that no retained snapshot or metadata file references (left by
expiry, or written by a killed offload and never committed), deleted once older than the safety age.
Previews by default; deletes only with `apply=True`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.errors import WarehouseError
from iceberg_offload.iceberg.catalog import catalog_errors
from iceberg_offload.iceberg.sink import Sink


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


def orphans(
    settings: Settings,
    cfg: TableSettings,
    sink: Sink,
    apply: bool,
    older_than_seconds: float = 3 * 86400,
    now: float | None = None,
) -> OrphanResult:
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
                raise WarehouseError(
                    f"{name}: deleting orphan file {orphan['path']} failed: {exc} ({result.deleted} deleted before it)",
                    "check write permission at [catalog] warehouse, then run orphans again",
                ) from exc
            result.deleted += 1
    return result
