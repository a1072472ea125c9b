"""Iceberg through pyiceberg: ensure the table, read the watermark, commit data + watermark atomically.

The watermark lives only in snapshot summaries: the newest snapshot in the main branch's ancestry
that carries `offload.watermark.*`. A commit is a compare-and-swap on the snapshot the watermark was
read from: pyiceberg would rebase a conflicting append onto the new head and retry it, which for an
offload appends the same window twice, so our transaction refuses to rebase and the commit fails
instead (`CommitConflict`), with its data files removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.sorting import NullOrder
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform, MonthTransform
from pyiceberg.types import IcebergType, ListType, MapType, NestedField, StructType

from iceberg_offload import names
from iceberg_offload.clickhouse.window import Watermark
from iceberg_offload.errors import CommitConflict, CommitOutcomeUnknown, SchemaDrift, redact
from iceberg_offload.iceberg.cas import CasTransaction, discard_files
from iceberg_offload.iceberg.catalog import (
    catalog_errors,
    missing_file,
    storage_error,
    warehouse_error,
    warehouse_missing,
    warehouse_reads,
)
from iceberg_offload.iceberg.history import Commit
from iceberg_offload.iceberg.sortorder import claimed_order_id, sort_order

COMMIT_ID = names.COMMIT_ID
# Offload commits must never be rebased (see CasTransaction); with no retries pyiceberg also stops
# logging "retrying" for a conflict that we are about to report.
TABLE_PROPERTIES = {"write.parquet.compression-codec": "zstd", "commit.retry.num-retries": "0"}
_TRANSFORMS = {"hour": HourTransform, "day": DayTransform, "month": MonthTransform}


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
        sort_columns: Sequence[str] = (),
        loaded: Table | None = None,
    ) -> Table:
        """Create the table (with `properties` besides ours, sorted by `sort_columns`), or add new columns (by
        name) and refuse dropped or retyped ones; `properties` the table lacks are added, and an unsorted
        table gets the sort order (a table created before they existed). `loaded`: the table as just loaded."""
        table = loaded if loaded is not None else self.load(target)
        if table is None:
            table = self._create(target, fields, partition_by, ts_column, properties or {}, sort_columns)
        elif missing := {k: v for k, v in (properties or {}).items() if k not in table.properties}:
            with catalog_errors(f"recording properties of {target}", self.warehouse):
                table = table.transaction().set_properties(missing).commit_transaction()
        table = self._evolve(table, fields, evolve)
        if sort_columns and not table.sort_order().fields:
            with catalog_errors(f"declaring the sort order of {target}", self.warehouse):
                with table.update_sort_order() as order:
                    for c in sort_columns:
                        order.asc(c, IdentityTransform(), NullOrder.NULLS_LAST)
                table = self.catalog.load_table(self.ident(target))
        return table

    def _create(
        self,
        target: str,
        fields: list[NestedField],
        partition_by: str,
        ts_column: str,
        properties: dict[str, str],
        sort_columns: Sequence[str],
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
                    sort_order=sort_order(schema, sort_columns),
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
        return list(self.walk(table))

    def walk(self, table: Table) -> Iterator[Commit]:
        """The main branch's snapshots, newest first, one at a time: a reader that stops early reads only
        what it needs. Parents are found through an index built once (pyiceberg's `snapshot_by_id` scans
        every snapshot, which made a walk O(snapshots²))."""
        snap = table.current_snapshot()
        by_id: dict[int, Snapshot] | None = None
        while snap is not None:
            yield _commit(snap)
            if snap.parent_snapshot_id is None:
                return
            if by_id is None:
                by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
            snap = by_id.get(snap.parent_snapshot_id)

    def watermark(self, table: Table) -> tuple[Watermark | None, Commit | None]:
        """The newest watermark of the main branch: the current snapshot's summary (every commit of ours
        carries it forward), else the first ancestor that carries one."""
        for commit in self.walk(table):
            wm = commit.watermark
            if wm is not None:
                return wm, commit
        return None, None

    def find_commit(self, target: str, commit_id: str) -> Snapshot | None:
        """Settle an unknown outcome: did a commit with this id land?"""
        table = self.load(target)
        if table is None:
            return None
        for commit in self.walk(table):
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
        sorted_by: Sequence[str] = (),
    ) -> tuple[Table, int]:
        """Write `chunks` as data files and commit them with `props` in one snapshot, CAS on the table's
        current snapshot, setting `table_props` in the same commit. `started` (monotonic) times the commit
        for its summary; `sorted_by`: the columns the chunks (concatenated) are sorted by (the files claim
        the table's sort order when it is a prefix of them). Returns the new table state and the row count."""
        # pyiceberg's pyarrow module (pyarrow.dataset, which imports pandas): only once there is data to write
        from iceberg_offload.iceberg.datafiles import DataFileWriter  # noqa: PLC0415 - ~0.2 s, see above

        txn = CasTransaction(table)
        if table_props:
            txn.set_properties(table_props)
        rows = 0
        written: list[str] = []
        try:
            with (
                txn.update_snapshot(snapshot_properties=props).fast_append() as append,
                DataFileWriter(
                    txn.table_metadata,
                    table.io,
                    append.commit_uuid,
                    written,
                    sort_order_id=claimed_order_id(txn.table_metadata, sorted_by),
                ) as files,
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
            raise warehouse_error(f"{'.'.join(table.name())} at {table.location()}", self.warehouse, exc) from exc
        except BaseException:
            discard_files(table, written, str(append.commit_uuid))
            raise
        try:
            new_table = txn.commit_transaction()
        except OSError as exc:
            if (path := missing_file(exc)) is not None:  # read before the catalog was asked: nothing landed
                discard_files(table, written, str(append.commit_uuid))
                raise warehouse_missing(".".join(table.name()), path, self.warehouse) from exc
            if not storage_error(exc) or self.find_commit(table.name()[-1], props.get(COMMIT_ID, "")) is not None:
                raise CommitOutcomeUnknown(
                    f"{'.'.join(table.name())}: commit {props.get(COMMIT_ID)} outcome unknown: "
                    f"{redact(str(exc)).splitlines()[0][:300]}",
                    "none needed: the next run reads the watermark from Iceberg and settles it",
                ) from exc
            # the new metadata file could not be written, so the catalog never saw this commit
            discard_files(table, written, str(append.commit_uuid))
            raise warehouse_error(f"{'.'.join(table.name())} at {table.location()}", self.warehouse, exc) from exc
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


def _commit(snap: Snapshot) -> Commit:
    summary = snap.summary
    props = dict(summary.additional_properties) if summary is not None else {}
    return Commit(snap.snapshot_id, snap.timestamp_ms, summary.operation.value if summary is not None else "?", props)


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
