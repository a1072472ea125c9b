"""Iceberg through pyiceberg: ensure the table, read the watermark, commit data + watermark atomically.

The watermark lives only in snapshot summaries: the newest snapshot in the main branch's ancestry
that carries `offload.watermark.*`. A commit is a compare-and-swap on the snapshot the watermark was
read from: pyiceberg would rebase a conflicting append onto the new head and retry it, which for an
offload appends the same window twice, so our transaction refuses to rebase and the commit fails
instead (`CommitConflict`), with its data files removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NoSuchTableError,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import DayTransform, HourTransform, MonthTransform
from pyiceberg.types import IcebergType, ListType, MapType, NestedField, StructType

from iceberg_offload import names
from iceberg_offload.clickhouse.window import Watermark
from iceberg_offload.config import CatalogSettings
from iceberg_offload.errors import (
    CatalogUnavailable,
    CommitConflict,
    CommitOutcomeUnknown,
    OffloadError,
    SchemaDrift,
    WarehouseError,
    WarehouseMissing,
    redact,
)
from iceberg_offload.iceberg.datafiles import DataFileWriter

COMMIT_ID = names.COMMIT_ID
# Offload commits must never be rebased (see CasTransaction); with no retries pyiceberg also stops
# logging "retrying" for a conflict that we are about to report.
TABLE_PROPERTIES = {"write.parquet.compression-codec": "zstd", "commit.retry.num-retries": "0"}
_TRANSFORMS = {"hour": HourTransform, "day": DayTransform, "month": MonthTransform}


# A file-system answer that retrying will not change: full, read-only, no permission, not a directory.
_STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
}


def _storage_error(exc: BaseException) -> bool:
    if not isinstance(exc, OSError) or isinstance(exc, ConnectionError | TimeoutError):
        return False
    if exc.errno in _STORAGE_ERRNOS:
        return True
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)  # pyarrow puts the errno in the text
    return found is not None and int(found.group(1)) in _STORAGE_ERRNOS


def missing_file(exc: BaseException) -> str | None:
    """The path of the file a read (or write) did not find, when `exc` says a file is missing; else None.
    pyarrow says `[Errno 2] Failed to open local file '/path'` (no filename attribute); fsspec sets it."""
    if not isinstance(exc, FileNotFoundError) and not (isinstance(exc, OSError) and exc.errno == errno.ENOENT):
        return None
    if exc.filename:
        return str(exc.filename)
    quoted = re.search(r"'([^']+)'", str(exc))
    return quoted.group(1) if quoted else redact(str(exc)).splitlines()[0][:300]


def _file_kind(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".metadata.json"):
        return "the table's metadata file"
    if name.startswith("snap-") and name.endswith(".avro"):
        return "a manifest list"
    if name.endswith(".avro"):
        return "a manifest"
    return "a data file" if name.endswith(".parquet") else "a file"


def warehouse_missing(what: str, path: str, warehouse: str = "") -> WarehouseMissing:
    where = f"[catalog] warehouse ({warehouse})" if warehouse else "[catalog] warehouse"
    return WarehouseMissing(
        f"{what}: the catalog lists {path} ({_file_kind(path)}), but the warehouse does not have it",
        f"check that {where} is the right path, mount or bucket, or restore the file from "
        f"backup; if it is gone for good: docs/runbooks/warehouse-lost.md",
    )


@contextlib.contextmanager
def warehouse_reads(what: str, warehouse: str = "") -> Iterator[None]:
    """A file the catalog or a snapshot names but the warehouse lacks becomes WarehouseMissing, naming it."""
    try:
        yield
    except OSError as exc:
        path = missing_file(exc)
        if path is None:
            raise
        raise warehouse_missing(what, path, warehouse) from exc


def _warehouse_error(what: str, warehouse: str, exc: BaseException) -> WarehouseError:
    return WarehouseError(
        f"{what}: cannot write to the warehouse: {redact(str(exc)).splitlines()[0][:300]}; nothing was committed",
        f"free space or make [catalog] warehouse ({warehouse}) a writable directory, then run again",
    )


class CasTransaction(Transaction):
    """A transaction whose commit never rebases onto a snapshot it did not read."""

    def _rebuild_snapshot_updates(self) -> None:
        raise CommitFailedException("the table changed after the watermark was read")


@dataclass(frozen=True)
class Commit:
    snapshot_id: int
    timestamp_ms: int
    operation: str
    props: dict[str, str]

    @property
    def watermark(self) -> Watermark | None:
        return Watermark.from_props(self.props)

    @property
    def totals(self) -> tuple[int, int]:
        """(rows, commits) offloaded into the table up to and including this commit. Counted forward in
        every summary, so they survive snapshot expiry (maintenance carries the newest summary forward)."""
        return int(self.props.get(names.ROWS_TOTAL, 0)), int(self.props.get(names.COMMITS_TOTAL, 0))

    def as_dict(self) -> dict[str, Any]:
        wm = self.watermark
        return {
            "snapshot_id": self.snapshot_id,
            "committed_at_ms": self.timestamp_ms,
            "operation": self.operation,
            "watermark": wm.as_dict() if wm else None,
            "run_id": self.props.get(names.RUN_ID),
            "rows": int(self.props.get(names.ROWS, 0)),
            "window_lower_ns": self.props.get(names.WINDOW_LOWER_NS) or None,
            "window_upper_ns": self.props.get(names.WINDOW_UPPER_NS) or None,
        }


@contextlib.contextmanager
def catalog_errors(what: str, warehouse: str = "") -> Iterator[None]:
    """Translate catalog-transport failures into CatalogUnavailable, and a warehouse that refuses a write
    into WarehouseError; our own errors pass through."""
    try:
        yield
    except OffloadError:
        raise
    except (NoSuchTableError, CommitFailedException):
        raise
    except Exception as exc:
        if (path := missing_file(exc)) is not None:
            raise warehouse_missing(what, path, warehouse) from exc
        if warehouse and _storage_error(exc):
            raise _warehouse_error(what, warehouse, exc) from exc
        raise CatalogUnavailable(
            f"Iceberg catalog failed while {what}: {redact(str(exc)).splitlines()[0][:300]}",
            "check that the catalog is reachable and [catalog] uri is right",
        ) from exc


def open_catalog(settings: CatalogSettings) -> Catalog:
    props = {"type": settings.type, "uri": settings.uri, "warehouse": settings.warehouse, **settings.properties}
    if settings.uri.startswith("sqlite:////"):  # the embedded default: make its folder on first use
        os.makedirs(os.path.dirname(settings.uri[len("sqlite:///") :]), exist_ok=True)
    with catalog_errors("connecting"):
        for attempt in range(5):
            try:
                return load_catalog(settings.name, **props)
            except Exception as exc:
                if "already exists" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class Sink:
    def __init__(self, catalog: Catalog, namespace: str) -> None:
        self.catalog = catalog
        self.namespace = namespace
        self.warehouse = str(catalog.properties.get("warehouse", ""))

    def ident(self, target: str) -> tuple[str, str]:
        return (self.namespace, target)

    def load(self, target: str) -> Table | None:
        with catalog_errors(f"loading {target}"), warehouse_reads(f"loading {target}", self.warehouse):
            try:
                return self.catalog.load_table(self.ident(target))
            except NoSuchTableError:
                return None

    def ensure_table(
        self,
        target: str,
        fields: list[NestedField],
        partition_by: str,
        ts_column: str,
        evolve: bool,
        properties: dict[str, str] | None = None,
    ) -> Table:
        """Create the table (with `properties` besides ours), or add new columns (by name) and refuse dropped
        or retyped ones; `properties` the table lacks are added (a table created before they existed)."""
        table = self.load(target)
        if table is None:
            table = self._create(target, fields, partition_by, ts_column, properties or {})
        elif missing := {k: v for k, v in (properties or {}).items() if k not in table.properties}:
            with catalog_errors(f"recording properties of {target}", self.warehouse):
                table = table.transaction().set_properties(missing).commit_transaction()
        return self._evolve(table, fields, evolve)

    def _create(
        self, target: str, fields: list[NestedField], partition_by: str, ts_column: str, properties: dict[str, str]
    ) -> Table:
        schema = Schema(*fields)
        spec = PartitionSpec()
        if partition_by != "none":
            source = schema.find_field(ts_column)
            spec = PartitionSpec(
                PartitionField(
                    source_id=source.field_id,
                    field_id=1000,
                    transform=_TRANSFORMS[partition_by](),
                    name=f"{ts_column}_{partition_by}",
                )
            )
        with catalog_errors(f"creating {target}", self.warehouse):
            try:
                self.catalog.create_namespace_if_not_exists(self.namespace)
            except Exception:  # another process created it between the check and the insert
                if (self.namespace,) not in self.catalog.list_namespaces():
                    raise
            try:
                return self.catalog.create_table(
                    self.ident(target),
                    schema=schema,
                    partition_spec=spec,
                    properties={**properties, **TABLE_PROPERTIES},
                )
            except Exception:  # another offload created it first (TableAlreadyExists or a unique violation)
                existing = self.load(target)
                if existing is None:
                    raise
                return existing

    def _evolve(self, table: Table, fields: list[NestedField], evolve: bool) -> Table:
        current = {f.name: f for f in table.schema().fields}
        planned = {f.name: f for f in fields}
        name = ".".join(table.name())
        problems = []
        for f in fields:
            have = current.get(f.name)
            if have is None:
                continue
            if _shape(have.field_type) != _shape(f.field_type):
                problems.append(
                    f"column {f.name!r} is {_shape(f.field_type)} in ClickHouse but "
                    f"{_shape(have.field_type)} in Iceberg (retyped)"
                )
            elif have.required and not f.required:
                problems.append(f"column {f.name!r} became Nullable in ClickHouse but is required in Iceberg")
        dropped = [n for n in current if n not in planned]
        if dropped and evolve:
            problems.append(
                f"column(s) {', '.join(map(repr, dropped))} exist in Iceberg but not in ClickHouse (dropped)"
            )
        if problems:
            raise SchemaDrift(
                f"{name}: " + "; ".join(problems) + "; nothing was written",
                "restore the ClickHouse column, or point [[tables]] target at a new Iceberg table, "
                "or list the columns to keep in columns = [...] (the others get NULL from then on)",
            )
        left_out = [n for n in dropped if current[n].required]  # not in the explicit columns list
        if left_out:
            with (
                catalog_errors(f"making {', '.join(left_out)} optional in {name}", self.warehouse),
                table.update_schema() as update,
            ):
                for n in left_out:
                    update.make_column_optional(n)
            table = self.load(table.name()[-1]) or table
        added = [f for f in fields if f.name not in current]
        if added and not evolve:
            raise SchemaDrift(
                f"{name}: ClickHouse has columns not in Iceberg: {', '.join(f.name for f in added)}",
                "add them to columns = [...] (after evolving the table) or leave columns empty",
            )
        if added:
            with catalog_errors(f"adding columns to {name}", self.warehouse), table.update_schema() as update:
                for f in added:
                    update.add_column(f.name, f.field_type, required=False)
            table = self.load(table.name()[-1]) or table
        return table

    # -- history and watermark --------------------------------------------------------------------
    def history(self, table: Table) -> list[Commit]:
        """Snapshots of the main branch, newest first (expired ones are gone from here)."""
        meta = table.metadata
        out = []
        snap = table.current_snapshot()
        while snap is not None:
            summary = snap.summary
            props = dict(summary.additional_properties) if summary is not None else {}
            op = summary.operation.value if summary is not None else "?"
            out.append(Commit(snap.snapshot_id, snap.timestamp_ms, op, props))
            snap = meta.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id else None
        return out

    def watermark(self, table: Table) -> tuple[Watermark | None, Commit | None]:
        for commit in self.history(table):
            wm = commit.watermark
            if wm is not None:
                return wm, commit
        return None, None

    def find_commit(self, target: str, commit_id: str) -> Snapshot | None:
        """Settle an unknown outcome: did a commit with this id land?"""
        table = self.load(target)
        if table is None:
            return None
        for commit in self.history(table):
            if commit.props.get(COMMIT_ID) == commit_id:
                return table.metadata.snapshot_by_id(commit.snapshot_id)
        return None

    # -- commit -------------------------------------------------------------------------------------
    def commit(
        self,
        table: Table,
        chunks: Iterable[pa.Table],
        props: dict[str, str],
        started: float,
        table_props: dict[str, str] | None = None,
    ) -> tuple[Table, int]:
        """Write `chunks` as data files and commit them with `props` in one snapshot, CAS on the table's
        current snapshot, setting `table_props` in the same commit. `started` (monotonic) times the commit
        for its summary. Returns the new table state and the row count."""
        txn = CasTransaction(table)
        if table_props:
            txn.set_properties(table_props)
        rows = 0
        written: list[str] = []
        try:
            with (
                txn.update_snapshot(snapshot_properties=props).fast_append() as append,
                DataFileWriter(txn.table_metadata, table.io, append.commit_uuid, written) as files,
            ):
                for chunk in chunks:
                    rows += chunk.num_rows
                    files.submit(chunk)
                files.finish(append)
                # pyiceberg builds the summary from this same dict when the block exits
                props[names.ROWS] = str(rows)
                # the caller passes the running total before this commit; it now includes it
                props[names.ROWS_TOTAL] = str(int(props.get(names.ROWS_TOTAL, "0")) + rows)
                props[names.DURATION_MS] = str(int((time.monotonic() - started) * 1000))
        except OSError as exc:
            discard_files(table, written, str(append.commit_uuid))
            if (path := missing_file(exc)) is not None:
                raise warehouse_missing(".".join(table.name()), path, self.warehouse) from exc
            raise _warehouse_error(f"{'.'.join(table.name())} at {table.location()}", self.warehouse, exc) from exc
        except BaseException:
            discard_files(table, written, str(append.commit_uuid))
            raise
        try:
            new_table = txn.commit_transaction()
        except OSError as exc:
            if (path := missing_file(exc)) is not None:  # read before the catalog was asked: nothing landed
                discard_files(table, written, str(append.commit_uuid))
                raise warehouse_missing(".".join(table.name()), path, self.warehouse) from exc
            if not _storage_error(exc) or self.find_commit(table.name()[-1], props.get(COMMIT_ID, "")) is not None:
                raise CommitOutcomeUnknown(
                    f"{'.'.join(table.name())}: commit {props.get(COMMIT_ID)} outcome unknown: "
                    f"{redact(str(exc)).splitlines()[0][:300]}",
                    "none needed: the next run reads the watermark from Iceberg and settles it",
                ) from exc
            # the new metadata file could not be written, so the catalog never saw this commit
            discard_files(table, written, str(append.commit_uuid))
            raise _warehouse_error(f"{'.'.join(table.name())} at {table.location()}", self.warehouse, exc) from exc
        except CommitFailedException as exc:
            discard_files(table, written)  # the commit surely did not land: its files are ours to remove
            raise CommitConflict(
                f"{'.'.join(table.name())}: another writer committed after the watermark was "
                f"read ({exc}); this commit was discarded, nothing appended",
                "none needed: the next run continues from the new watermark",
            ) from exc
        except Exception as exc:
            raise CommitOutcomeUnknown(
                f"{'.'.join(table.name())}: commit {props.get(COMMIT_ID)} outcome unknown: "
                f"{redact(str(exc)).splitlines()[0][:300]}",
                "none needed: the next run reads the watermark from Iceberg and settles it",
            ) from exc
        return new_table, rows


def discard_files(table: Table, paths: list[str], commit_uuid: str = "") -> None:
    """Delete the files of a commit that did not land: the data files it wrote and, when the warehouse is
    local, every file named with its commit uuid (a half-written data file, manifests, manifest list)."""
    for path in paths:
        with contextlib.suppress(Exception):
            table.io.delete(path)
    location = table.location()
    if not commit_uuid or not location.startswith(("file://", "/")):
        return
    root = location.removeprefix("file://")
    with contextlib.suppress(OSError):
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if commit_uuid in name:
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, name))


def _shape(t: IcebergType) -> str:
    """A type's structure without field ids, for comparing planned and existing schemas."""
    if isinstance(t, StructType):
        return (
            "struct<"
            + ", ".join(f"{f.name}: {'' if f.required else 'optional '}{_shape(f.field_type)}" for f in t.fields)
            + ">"
        )
    if isinstance(t, ListType):
        return f"list<{'' if t.element_required else 'optional '}{_shape(t.element_type)}>"
    if isinstance(t, MapType):
        return f"map<{_shape(t.key_type)}, {'' if t.value_required else 'optional '}{_shape(t.value_type)}>"
    return str(t)
