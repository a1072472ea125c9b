"""Parquet data files for one Iceberg snapshot.

A chunk is split by the table's partition spec (zero-copy slices when each partition's rows are contiguous,
one sort otherwise) and every part is encoded on a worker thread while the caller reads the next chunk.
Statistics come from the written Parquet footers, field ids from the table schema, as pyiceberg's own writer
does; what differs is the encoding: dictionary pages only for columns whose sample repeats values (a
dictionary over unique trade ids costs time and is then abandoned), and encodes overlap instead of running
one chunk at a time.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.io import FileIO
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import (
    _get_field_from_arrow_table,
    _get_parquet_writer_kwargs,
    _to_requested_schema,
    bin_pack_arrow_table,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    pyarrow_to_schema,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
from pyiceberg.schema import Schema, sanitize_column_names
from pyiceberg.table import TableProperties
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.transforms import DayTransform, HourTransform
from pyiceberg.typedef import Record
from pyiceberg.types import DoubleType, FloatType, IcebergType, ListType, MapType, StructType

DICTIONARY_SAMPLE_ROWS = 10_000
WORKERS = max(1, min(4, os.cpu_count() or 1))


class DataFileWriter:
    """Writes chunks as data files of one snapshot (`write_uuid` names every file). Every path is appended
    to `paths` before its file is opened, so a caller can delete them all when the commit does not happen.
    Use as a context manager: leaving it with an error waits for the writes still running."""

    def __init__(
        self,
        metadata: TableMetadata,
        io: FileIO,
        write_uuid: uuid.UUID,
        paths: list[str],
        workers: int = WORKERS,
        sort_order_id: int | None = None,
    ) -> None:
        """`sort_order_id`: the sort order every file is written in (the chunks come sorted by it); None:
        unknown."""
        self.metadata, self.io, self.write_uuid, self.paths = metadata, io, write_uuid, paths
        self.sort_order_id = sort_order_id
        schema = metadata.schema()
        self.file_schema = sanitize_column_names(schema)
        self.props = metadata.properties
        self.writer_kwargs = _get_parquet_writer_kwargs(self.props)
        self.row_group_rows = int(
            self.props.get(TableProperties.PARQUET_ROW_GROUP_LIMIT, TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT)
        )
        self.target_bytes = int(
            self.props.get(
                TableProperties.WRITE_TARGET_FILE_SIZE_BYTES, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT
            )
        )
        self.stats_plan = compute_statistics_plan(self.file_schema, self.props)
        self.column_ids = parquet_path_to_id_mapping(self.file_schema)
        self.locations = load_location_provider(table_location=metadata.location, table_properties=self.props)
        self.format_model = FileFormatFactory.get(FileFormat.PARQUET)
        self.workers = workers
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="offload-encode")
        self.pending: set[cf.Future[DataFile]] = set()
        self.done: list[DataFile] = []
        self.counter = 0

    def __enter__(self) -> DataFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self.pending:
            f.cancel()
        self.pool.shutdown(wait=True)

    def submit(self, chunk: pa.Table, max_file_bytes: int | None = None) -> None:
        """Queue `chunk` for writing; blocks while as many files as there are workers are in flight."""
        if chunk.num_rows == 0:
            return
        task_schema = pyarrow_to_schema(
            _wide_decimals(chunk.schema),
            name_mapping=self.metadata.schema().name_mapping,
            format_version=self.metadata.format_version,
        )
        for key, part in split_by_partition(self.metadata, chunk):
            for batches in bin_pack_arrow_table(part, max_file_bytes or self.target_bytes):
                name = f"00000-{self.counter}-{self.write_uuid}.parquet"
                self.counter += 1
                path = self.locations.new_data_location(data_file_name=name, partition_key=key)
                self.paths.append(path)
                while len(self.pending) >= self.workers:
                    self._collect(cf.FIRST_COMPLETED)
                self.pending.add(self.pool.submit(self._write, path, key, task_schema, batches))

    def finish(self, snapshot: Any) -> list[DataFile]:
        """Wait for every queued file and add each to `snapshot` (a pyiceberg snapshot producer); the data
        files, in no particular order."""
        self._collect(cf.ALL_COMPLETED)
        for data_file in self.done:
            snapshot.append_data_file(data_file)
        return self.done

    def _collect(self, when: str) -> None:
        finished, self.pending = cf.wait(self.pending, return_when=when)
        for f in finished:
            self.done.append(f.result())

    def _write(self, path: str, key: PartitionKey | None, task_schema: Any, batches: list[pa.RecordBatch]) -> DataFile:
        table = pa.Table.from_batches(
            [
                _to_requested_schema(
                    requested_schema=self.file_schema,
                    file_schema=task_schema,
                    batch=b,
                    include_field_ids=True,
                    format_model=self.format_model,
                )
                for b in batches
            ]
        )
        out = self.io.new_output(path)
        with out.create(overwrite=True) as stream:
            writer = pq.ParquetWriter(
                stream,
                schema=table.schema,
                store_decimal_as_integer=True,
                store_schema=False,
                use_dictionary=dictionary_columns(table),
                **self.writer_kwargs,
            )
            with writer:
                writer.write(table, row_group_size=self.row_group_rows)
        stats = data_file_statistics_from_parquet_metadata(
            parquet_metadata=writer.writer.metadata,
            stats_columns=self.stats_plan,
            parquet_column_mapping=self.column_ids,
        )
        counts = stats.to_serialized_dict() | {"nan_value_counts": nan_counts(table, self.file_schema)}
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=key.partition if key else Record(),
            file_size_in_bytes=len(out),
            sort_order_id=self.sort_order_id,
            spec_id=self.metadata.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **counts,
        )


def _wide_decimals(schema: pa.Schema) -> pa.Schema:
    """decimal64 columns as decimal128, for pyiceberg's schema conversion, which knows only the latter. The
    projection leaves the decimal64 values as they are (same Iceberg type), and Parquet stores both as the
    same INT64 (`store_decimal_as_integer`)."""
    wide = [pa.decimal128(t.precision, t.scale) if pa.types.is_decimal64(t) else t for t in schema.types]
    return pa.schema([f.with_type(t) for f, t in zip(schema, wide, strict=True)])


def nan_counts(table: pa.Table, schema: Schema) -> dict[int, int]:
    """NaN values per float and double field (nested ones too), by field id: the manifest's
    `nan_value_counts`, which Parquet's statistics do not carry (readers prune `x = NaN` and `isnan(x)` on
    them; their min/max bounds never hold a NaN)."""
    out: dict[int, int] = {}

    def walk(field_id: int, kind: IcebergType, values: pa.Array) -> None:
        if isinstance(kind, FloatType | DoubleType):
            out[field_id] = out.get(field_id, 0) + int(pc.sum(pc.is_nan(values)).as_py() or 0)
        elif isinstance(kind, ListType):
            walk(kind.element_id, kind.element_type, values.flatten())
        elif isinstance(kind, MapType):
            walk(kind.key_id, kind.key_type, values.keys)
            walk(kind.value_id, kind.value_type, values.items)
        elif isinstance(kind, StructType):
            for i, f in enumerate(kind.fields):
                walk(f.field_id, f.field_type, values.field(i))

    for i, f in enumerate(schema.fields):
        for chunk in table.column(i).chunks:  # only float columns are read; nothing is copied
            walk(f.field_id, f.field_type, chunk)
    return out


def dictionary_columns(table: pa.Table) -> bool | list[str]:
    """The columns worth a dictionary: those whose first rows repeat values (at most half distinct). Nested
    tables keep Parquet's default (every column), since their leaf paths are not the column names."""
    if any(pa.types.is_nested(t) for t in table.schema.types):
        return True
    chosen = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        sample = column.slice(0, DICTIONARY_SAMPLE_ROWS)
        try:
            distinct = pc.count_distinct(sample, mode="all").as_py()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            chosen.append(name)
            continue
        if distinct * 2 <= len(sample):
            chosen.append(name)
    return chosen


def split_by_partition(metadata: TableMetadata, table: pa.Table) -> list[tuple[PartitionKey | None, pa.Table]]:
    """The rows of each partition of the table's spec, with its key, without copying: the chunk is cut into
    runs of rows with equal partition values (a time-partitioned chunk is a few runs per block the engine
    read in parallel) and each partition's runs are joined as chunks of one table."""
    spec, schema = metadata.spec(), metadata.schema()
    if spec.is_unpartitioned() or table.num_rows == 0:
        return [(None, table)] if table.num_rows else []
    keys = []
    for field in spec.fields:
        column = schema.find_column_name(field.source_id)
        if column is None:
            raise ValueError(f"partition source field {field.source_id} is not in the schema")
        source_type = schema.find_field(field.source_id).field_type
        values = _get_field_from_arrow_table(table, column)
        fast = _time_buckets(field.transform, values)
        if fast is None:
            values = field.transform.pyarrow_transform(source_type)(values)
        keys.append(
            fast if fast is not None else values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        )
    starts = [0] + [i + 1 for i in pc.indices_nonzero(_changes(keys)).to_pylist()]
    firsts = [k.take(pa.array(starts, pa.int64())).to_pylist() for k in keys]
    ends = starts[1:] + [table.num_rows]
    runs: dict[tuple[Any, ...], list[pa.Table]] = {}
    for n, (a, b) in enumerate(zip(starts, ends, strict=True)):
        runs.setdefault(tuple(f[n] for f in firsts), []).append(table.slice(a, b - a))
    return [
        (
            PartitionKey(
                field_values=[PartitionFieldValue(field=f, value=v) for f, v in zip(spec.fields, key, strict=True)],
                partition_spec=spec,
                schema=schema,
            ),
            pa.concat_tables(parts),
        )
        for key, parts in runs.items()
    ]


_MICROS: dict[type, int] = {DayTransform: 86_400 * 10**6, HourTransform: 3_600 * 10**6}


def _time_buckets(transform: Any, values: pa.ChunkedArray | pa.Array) -> pa.Array | None:
    """The day or hour transform of a microsecond timestamp column without nulls, computed on its integers:
    days (hours) since the epoch, floored, as Iceberg defines them and pyiceberg computes them (which costs
    more, and its first call in a process starts its Rust runtime); None for anything else."""
    step = _MICROS.get(type(transform))
    t = values.type
    if step is None or not pa.types.is_timestamp(t) or t.unit != "us" or values.null_count:
        return None
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = [np.frombuffer(c.buffers()[1], dtype=np.int64, count=c.offset + len(c))[c.offset :] for c in chunks]
    micros = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return pa.array((micros // step).astype(np.int32), pa.int32())


def _changes(keys: list[pa.Array]) -> pa.Array:
    """True at row i when any key differs between rows i and i+1 (two nulls are equal)."""
    changed = None
    for k in keys:
        a, b = k[:-1], k[1:]
        differs = pc.and_not(pc.fill_null(pc.not_equal(a, b), True), pc.and_(pc.is_null(a), pc.is_null(b)))
        changed = differs if changed is None else pc.or_(changed, differs)
    assert changed is not None
    return changed
