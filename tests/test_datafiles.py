"""The data-file writer: partitions split without copying, files that carry field ids, statistics and a
dictionary only where values repeat, and no file left behind when a write fails."""

from __future__ import annotations

import datetime as dt
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import GreaterThanOrEqual
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

from conftest import TRADES_DDL, clickhouse, insert_trades, sink_for, trades_table
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.datafiles import DataFileWriter, dictionary_columns, split_by_partition

UTC = dt.UTC
HOUR_US = 3600 * 10**6


def _hourly(settings, name: str):
    catalog = open_catalog(settings.catalog)
    catalog.create_namespace_if_not_exists("t")
    schema = Schema(
        NestedField(1, "ts", TimestamptzType(), required=True),
        NestedField(2, "id", LongType(), required=True),
        NestedField(3, "s", StringType(), required=False),
    )
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import HourTransform

    spec = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=HourTransform(), name="ts_hour"))
    return catalog.create_table(f"t.{name}", schema=schema, partition_spec=spec)


def _rows(hours: list[int]) -> pa.Table:
    ts = pa.array([h * HOUR_US + i for i, h in enumerate(hours)], pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "ts": ts,
            "id": pa.array(range(len(hours)), pa.int64()),
            "s": pa.array([None if i % 3 == 0 else f"v{i % 2}" for i in range(len(hours))], pa.string()),
        },
        schema=pa.schema(
            [
                pa.field("ts", ts.type, nullable=False),
                pa.field("id", pa.int64(), nullable=False),
                pa.field("s", pa.string()),
            ]
        ),
    )


def test_interleaved_partitions_are_split_by_value_without_copying(make_settings, sqlite_uri):
    table = _hourly(make_settings([], catalog_uri=sqlite_uri), "split")
    hours = [5, 5, 6, 6, 5, 7, 6, 6, 5] * 20_000  # runs like blocks read by two threads
    chunk = _rows(hours)
    before = pa.total_allocated_bytes()
    parts = split_by_partition(table.metadata, chunk)
    assert pa.total_allocated_bytes() - before < chunk.nbytes // 10  # slices of the chunk, not copies
    got = {p.partition[0]: t for p, t in parts}
    assert sorted(got) == [5, 6, 7]
    for hour, part in got.items():
        ids = part.column("id").to_pylist()
        assert ids == [i for i, h in enumerate(hours) if h == hour]  # every row, in arrival order
    assert sum(t.num_rows for t in got.values()) == chunk.num_rows


def test_written_files_have_field_ids_stats_and_dictionary_only_where_values_repeat(make_settings, sqlite_uri):
    s = make_settings([trades_table()], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", 1_767_225_600_000, 200_000, step_ms=900)  # ~2 days from 2026-01-01
    assert run_cycle(s).tables[0].status == "ok"
    table = sink_for(s).load("trades")
    tasks = list(table.scan().plan_files())
    assert len({t.file.partition[0] for t in tasks}) == 3
    for task in tasks:
        path = task.file.file_path.removeprefix("file://")
        meta = pq.ParquetFile(path).metadata
        ids = {
            meta.schema.column(i).name: meta.schema.to_arrow_schema().field(i).metadata[b"PARQUET:field_id"]
            for i in range(meta.num_columns)
        }
        assert ids == {"ts": b"1", "seq": b"2", "symbol": b"3", "price": b"4"}
        encodings = {
            meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings
            for i in range(meta.num_columns)
        }
        assert "RLE_DICTIONARY" in encodings["symbol"]  # two values: a dictionary pays
        assert "RLE_DICTIONARY" not in encodings["seq"]  # unique keys: plain
        assert task.file.record_count == meta.num_rows and task.file.file_size_in_bytes == os.path.getsize(path)
        assert task.file.lower_bounds and task.file.upper_bounds and task.file.value_counts[2] == meta.num_rows
    cut = dt.datetime(2026, 1, 2, 12, tzinfo=UTC)
    pruned = list(table.scan(row_filter=GreaterThanOrEqual("ts", cut.isoformat())).plan_files())
    assert 0 < len(pruned) < len(tasks)  # file statistics let a reader skip files
    assert table.scan().to_arrow().num_rows == 200_000


def test_dictionary_choice_samples_each_column():
    t = pa.table(
        {
            "unique": pa.array([f"id-{i}" for i in range(20_000)]),
            "few": pa.array(["a", "b"] * 10_000),
            "nested": pa.array([[1]] * 20_000),
        }
    )
    assert dictionary_columns(t) is True  # nested columns keep Parquet's default
    assert dictionary_columns(t.drop_columns(["nested"])) == ["few"]


def test_a_failed_write_raises_and_every_path_is_known(make_settings, sqlite_uri, monkeypatch):
    table = _hourly(make_settings([], catalog_uri=sqlite_uri), "fail")
    calls = {"n": 0}
    real = pq.ParquetWriter.write

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write", flaky)
    paths: list[str] = []
    with (
        pytest.raises(OSError, match="No space"),
        DataFileWriter(table.metadata, table.io, uuid.uuid4(), paths, workers=2) as files,
    ):
        for h in range(4):
            files.submit(_rows([h] * 1000))
        files.finish(snapshot=None)  # fails before any file is added
    root = table.location().removeprefix("file://")
    on_disk = {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".parquet")}
    assert on_disk and on_disk <= {p.removeprefix("file://") for p in paths}  # the caller can delete them all


def test_manifests_count_nan_values_and_bounds_never_hold_one(make_settings, sqlite_uri):
    """nan_value_counts per float field, nested ones too (Parquet statistics carry none); min/max bounds
    leave NaN out, and a column of NaN only has no bounds."""
    import math
    import struct

    s = make_settings(
        [{"source": "floats", "timestamp_column": "ts", "sequence_column": "id", "partition_by": "none"}],
        catalog_uri=sqlite_uri,
    )
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.floats (ts DateTime64(3, 'UTC'), id UInt32, f Float64, nf Nullable(Float32), "
            "only_nan Float64, arr Array(Float64), m Map(String, Float64), t Tuple(a Float64, b String)) "
            "ENGINE = MergeTree ORDER BY (ts, id)"
        )
        ch.command(
            "INSERT INTO k2.floats VALUES "
            "('2026-01-01 00:00:00', 1, nan, nan, nan, [nan, 1, nan], {'x': nan}, (nan, 'a')), "
            "('2026-01-01 00:00:01', 2, 2.5, NULL, nan, [], {'y': 3}, (1, 'b')), "
            "('2026-01-01 00:00:02', 3, -1, 0.5, nan, [inf], {}, (2, 'c'))"
        )
    assert run_cycle(s).tables[0].status == "ok"
    table = sink_for(s).load("floats")
    (task,) = list(table.scan().plan_files())
    schema = table.schema()
    ids = {name: schema.find_field(name).field_id for name in ("f", "nf", "only_nan", "arr.element", "m.value", "t.a")}
    assert {name: task.file.nan_value_counts.get(i) for name, i in ids.items()} == {
        "f": 1,
        "nf": 1,
        "only_nan": 3,
        "arr.element": 2,
        "m.value": 1,
        "t.a": 1,
    }
    f, nf = ids["f"], ids["nf"]
    assert struct.unpack("<d", task.file.lower_bounds[f])[0] == -1
    assert struct.unpack("<d", task.file.upper_bounds[f])[0] == 2.5
    assert struct.unpack("<f", task.file.lower_bounds[nf])[0] == 0.5
    for bounds in (task.file.lower_bounds, task.file.upper_bounds):
        only = bounds.get(ids["only_nan"])
        assert only is None or not math.isnan(struct.unpack("<d", only)[0])


def test_decimals_up_to_18_digits_are_int64_in_parquet_and_read_back_exact(make_settings, sqlite_uri):
    """Decimal(P <= 18) goes from ClickHouse's unscaled integers to Parquet INT64 (INT32 for P <= 9) as decimal64,
    never widened to 128 bits; pyiceberg and DuckDB read back every value exactly, the extremes included."""
    from decimal import Decimal

    from test_readers import _duckdb, read_duckdb

    s = make_settings([trades_table("decs")], catalog_uri=sqlite_uri)
    top, small = "9999999999.99999999", "9999999.99"  # (10^18 - 1) / 10^8 and (10^9 - 1) / 10^2
    values = [f"-{top}", "-0.00000001", "0", "0.00000001", "12345.67891234", top]
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.decs (ts DateTime64(3), seq UInt64, d18 Decimal(18, 8), d9n Nullable(Decimal(9, 2)), "
            "d18n Nullable(Decimal(18, 8))) ENGINE = MergeTree ORDER BY (ts, seq)"
        )
        rows = ", ".join(
            f"(fromUnixTimestamp64Milli({1_767_225_600_000 + i}), {i}, '{v}', "
            f"{'NULL' if i % 2 else repr(small if i % 4 == 0 else '-' + small)}, {'NULL' if i % 3 == 0 else repr(v)})"
            for i, v in enumerate(values)
        )
        ch.command(f"INSERT INTO k2.decs VALUES {rows}")
    assert run_cycle(s).tables[0].status == "ok"
    table = sink_for(s).load("decs")
    for task in table.scan().plan_files():
        meta = pq.ParquetFile(task.file.file_path.removeprefix("file://")).metadata
        physical = {meta.schema.column(i).name: meta.schema.column(i).physical_type for i in range(meta.num_columns)}
        assert physical["d18"] == physical["d18n"] == "INT64" and physical["d9n"] == "INT32"
    expected = [
        (
            i,
            Decimal(v),
            None if i % 2 else Decimal(small if i % 4 == 0 else "-" + small),
            None if i % 3 == 0 else Decimal(v),
        )
        for i, v in enumerate(values)
    ]
    cols = ["seq", "d18", "d9n", "d18n"]
    got = table.scan().to_arrow().select(cols).sort_by("seq")
    assert [tuple(r.values()) for r in got.to_pylist()] == expected
    assert [f.type for f in got.schema][1:] == [pa.decimal128(18, 8), pa.decimal128(9, 2), pa.decimal128(18, 8)]
    duck = read_duckdb(_duckdb(), table.metadata_location, cols).sort_by("seq")
    assert [tuple(r.values()) for r in duck.to_pylist()] == expected


def test_a_decimal_up_to_18_digits_crosses_to_the_writer_without_a_copy():
    from iceberg_offload.engine.wire import Wire, file_schema

    raw = pa.array([-(10**18 - 1), None, 10**18 - 1, 5], pa.int64())
    wire = Wire(decimal=(18, 8, 64))
    narrow = wire.decode(pa.chunked_array([raw]), pa.decimal64(18, 8))
    assert narrow.type == pa.decimal64(18, 8)
    assert narrow.chunk(0).buffers()[1].address == raw.buffers()[1].address  # the integers as they crossed
    wide = wire.decode(pa.chunked_array([raw]))  # compare and repair read decimal128, as pyiceberg does
    assert wide.type == pa.decimal128(18, 8) and wide.to_pylist() == narrow.to_pylist()
    assert narrow.to_pylist()[1] is None and str(narrow.to_pylist()[0]) == "-9999999999.99999999"
    target = pa.schema([pa.field("a", pa.decimal128(18, 8)), pa.field("b", pa.decimal128(19, 8))])
    assert file_schema(target).types == [pa.decimal64(18, 8), pa.decimal128(19, 8)]


def test_day_and_hour_partitions_floor_like_the_spec():
    """Days (hours) since the epoch, floored as Iceberg's spec defines them (floorDiv): a row in the last second
    before a pre-1970 midnight belongs to that earlier day. (pyiceberg's Arrow transform gives the next day
    there; the writer computes them itself.)"""
    from pyiceberg.transforms import DayTransform, HourTransform

    from iceberg_offload.iceberg.datafiles import _time_buckets

    day, hour = 86_400 * 10**6, 3_600 * 10**6
    micros = [-17_524 * day - 732_456, -1, 0, day - 1, day, 20_000 * day + 5]
    full = pa.array(micros, pa.timestamp("us", tz="UTC"))
    ts = pa.chunked_array([full.slice(1, 2), full.slice(3)])  # chunks at an offset into their buffers
    assert _time_buckets(DayTransform(), ts).to_pylist() == [m // day for m in micros[1:]]
    assert _time_buckets(HourTransform(), ts).to_pylist() == [m // hour for m in micros[1:]]
    assert _time_buckets(DayTransform(), full).to_pylist()[0] == -17_525
    assert _time_buckets(DayTransform(), pa.array([None, 0], pa.timestamp("us", tz="UTC"))) is None  # pyiceberg's
