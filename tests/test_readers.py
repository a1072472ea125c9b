"""Other readers in the suite: the type-matrix tables and the demo's tables, offloaded once, then read back
with DuckDB (iceberg_scan, the extension loaded from the duckdb-extension-iceberg/-avro wheels, nothing
downloaded) and with ClickHouse itself (chdb's icebergLocal, pinned to the catalog's metadata file), every
value of every row compared by key with what ClickHouse holds, column by column.

A reader that cannot read a column, or reads another value, fails the test unless the difference is one of
KNOWN below: a named reader-side bug or limitation, asserted to be exactly that (and listed in docs/types.md).
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from conftest import _toml, clickhouse, sink_for
from iceberg_offload import config
from iceberg_offload.cli import demo
from iceberg_offload.clickhouse.client import Source
from iceberg_offload.clickhouse.sql import literal, quote
from iceberg_offload.clickhouse.types import parse
from iceberg_offload.config import Settings
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.maintenance.compact import compact
from test_typemap import COLUMNS, ROW1, ROW2

pytestmark = pytest.mark.integration

# The opt-ins and the values the type matrix does not hold: float specials, 64-bit and 128-bit edges,
# nanosecond timestamps, bytes that are not UTF-8, decimals that travel as their unscaled integer.
OPTIN_COLUMNS = """
 id UInt32, ts DateTime64(3, 'UTC'), u64d UInt64, d76s Decimal(76, 10), d76d Decimal(76, 10),
 t9l DateTime64(9, 'UTC'), t9t DateTime64(9, 'UTC'), sb String, lcb LowCardinality(String), fsb FixedString(3),
 f32 Float32, f64 Float64, i128s Int128, d4 Decimal(4, 4), d18n Nullable(Decimal(18, 18)),
 e Nullable(Enum8('lo' = -128, 'hi' = 127)), dt64_old DateTime64(6, 'UTC'), u64 UInt64, i32l Int32
"""
OPTIN_TYPES = {
    "u64d": "decimal(20,0)",
    "d76s": "string",
    "d76d": "double",
    "t9l": "long",
    "t9t": "timestamp",
    "sb": "binary",
    "lcb": "binary",
    "fsb": "binary",
    "i128s": "string",
    "i32l": "long",
}
OPTIN_ROWS = """
 (1, '2026-01-02 00:00:00', 18446744073709551615, '-123456789012345678901234567890123456789012345.0123456789',
  '0.5', '2262-04-11 23:47:16.854775807', '1969-12-31 23:59:59.999999999', '\\xff\\xfe', 'x\\x80', '\\x00\\xff\\x01',
  nan, -inf, -170141183460469231731687303715884105728, '-0.9999', '0.999999999999999999', 'lo',
  '1900-01-01 00:00:00.000001', 9223372036854775807, -2147483648),
 (2, '2026-01-02 00:00:01', 0, '0', '-10000000000000000000000000000000000000000', '1677-09-22 00:00:00.000000001', '2026-01-02 03:04:05.000000999', '',
  '', 'abc', -0., inf, 170141183460469231731687303715884105727, '0.0001', NULL, NULL,
  '2299-12-31 23:59:59.999999', 0, 2147483647),
 (3, '2026-01-02 00:00:02', 1, '1', '1', '1970-01-01 00:00:00', '1970-01-01 00:00:00', 'plain', 'lc', 'xyz',
  1.4e-45, 5e-324, 0, 0, '-0.000000000000000001', 'hi', '1970-01-01 00:00:00', 1, 0)
"""

OPTIN_ADDED_ROW = """(4, '2026-01-02 00:00:03', 2, '2', '2', '2000-01-01 00:00:00.000000001', '2000-01-01 00:00:00.000000001',
  'four', 'four', 'fou', 2.5, 2.5, 4, 0.5, 0.5, 'hi', '2000-01-01 00:00:00', 4, 4, 'added', -12.34)"""

# Nested types: every scalar that crosses converted (UUID, times, decimals, 128-bit integers as text, enums,
# IPs, fixed strings, floats' specials) inside arrays, maps and tuples, and nesting of those.
NESTED_COLUMNS = """
 id UInt32, ts DateTime64(3, 'UTC'), a_uuid Array(UUID), a_dt64 Array(DateTime64(3, 'Asia/Tokyo')),
 a_dtm Array(Nullable(DateTime)), a_dec Array(Decimal(18, 4)), a_dec38 Array(Nullable(Decimal(38, 10))),
 a_i128 Array(Int128), a_enum Array(Enum8('p' = 1, 'q' = 2)), a_fs Array(FixedString(2)), a_ip Array(IPv6),
 a_lc Array(LowCardinality(String)), a_f Array(Float64), a_f32 Array(Nullable(Float32)), a_b Array(Bool),
 a_date Array(Date32), a_tup Array(Tuple(x Int32, y Nullable(String))), a_a Array(Array(Nullable(String))),
 a_u64 Array(UInt64), a_u32 Array(UInt32), m_int Map(UInt64, Array(String)),
 m_lc Map(LowCardinality(String), Tuple(UInt8, Decimal(9, 2))), m_date Map(Date, Nullable(UUID)),
 m_dt Map(String, DateTime64(6, 'UTC')), t_nest Tuple(a Array(Map(String, Int64)), b Tuple(c DateTime64(6, 'UTC'), d Enum16('z' = 300))),
 t_n Nullable(Int8)
"""
NESTED_ROWS = """
 (1, '2026-01-02 00:00:00', ['61f0c404-5cb3-11e7-907b-a6006ad3dba0', '00000000-0000-0000-0000-000000000001'],
  ['2026-01-02 09:00:00.123', '1960-01-01 00:00:00.001'], ['2026-01-02 03:04:05', NULL], ['-99999999999999.9999', '0.0001'],
  ['1234567890123456789012345678.0123456789', NULL], [-170141183460469231731687303715884105728, 5], ['q', 'p'],
  ['ab', '\\0\\xff'], ['2001:db8::1', '::ffff:1.2.3.4'], ['x', ''], [nan, -0., inf, -inf, 5e-324], [1.5, NULL, -0.],
  [true, false], ['1900-01-01', '2299-12-31'], [(1, 'a'), (-2, NULL)], [['a', NULL], [], [NULL]],
  [9223372036854775807, 0], [4294967295], {9223372036854775807: ['big'], 0: []}, {'k': (255, -9999999.99)},
  {'2026-01-02': '61f0c404-5cb3-11e7-907b-a6006ad3dba0', '1970-01-01': NULL}, {'t': '2262-01-01 00:00:00.000001'},
  ([{'m': -9223372036854775808}, {}], ('1969-12-31 23:59:59.999999', 'z')), -1),
 (2, '2026-01-02 00:00:01', [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], {}, {}, {}, {},
  ([], ('1970-01-01 00:00:00', 'z')), NULL)
"""


def _demo_entries() -> list[dict[str, Any]]:
    return [
        {"source": "types", "timestamp_column": "ts", "sequence_column": "id", "partition_by": "day"},
        {
            "source": "optins",
            "timestamp_column": "ts",
            "sequence_column": "id",
            "partition_by": "day",
            "column_types": OPTIN_TYPES,
        },
        {"source": "nested", "timestamp_column": "ts", "sequence_column": "id", "partition_by": "none"},
    ]


@dataclass
class Offloaded:
    settings: Settings
    folder: Path
    tables: list[str]


def offload_all(folder: Path) -> Offloaded:
    """The demo's ten tables (a 20-minute slice that ended two days ago: settled, candles closed) and the
    type-matrix tables, offloaded into a SQLite catalog and a local warehouse under `folder` (which must be
    the working directory: chdb's icebergLocal reads only below it)."""
    # several commits (and data files) per table: readers must combine manifests, not read one file
    text = demo.config_text(config.load(None, env={}))
    text = text.replace("max_rows_per_commit = 2000000", "max_rows_per_commit = 1000")
    for entry in _demo_entries():
        text += "\n[[tables]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in entry.items())
    (folder / "offload.toml").write_text(text)
    settings = config.load(folder / "offload.toml", env={})
    first_slice, demo.FIRST_SLICE_SECONDS = demo.FIRST_SLICE_SECONDS, 20 * 60
    try:
        with clickhouse(settings) as ch:
            demo.create_tables(ch)
            demo.insert_slice(ch, now=dt.datetime.now(dt.UTC).timestamp() - 2 * 86400)
            ch.command(f"CREATE TABLE k2.types ({COLUMNS}) ENGINE = MergeTree ORDER BY (ts, id)")
            ch.command(f"INSERT INTO k2.types VALUES {ROW1}, {ROW2}")
            ch.command(f"CREATE TABLE k2.optins ({OPTIN_COLUMNS}) ENGINE = MergeTree ORDER BY (ts, id)")
            ch.command(f"INSERT INTO k2.optins VALUES {OPTIN_ROWS}")
            ch.command(f"CREATE TABLE k2.nested ({NESTED_COLUMNS}) ENGINE = MergeTree ORDER BY (ts, id)")
            ch.command(f"INSERT INTO k2.nested VALUES {NESTED_ROWS}")
    finally:
        demo.FIRST_SLICE_SECONDS = first_slice
    result = run_cycle(settings)
    for t in result.tables:
        assert t.status == "ok" and t.rows, (t.table, t.error)
    assert {t.table: t.commits for t in result.tables}["silver_trades"] > 1
    # a second commit on a schema that grew: the older data files lack the new columns (read by field id)
    with clickhouse(settings) as ch:
        ch.command(
            "ALTER TABLE k2.optins ADD COLUMN added Nullable(String), ADD COLUMN added_d Nullable(Decimal(18, 2))"
        )
        ch.command(f"INSERT INTO k2.optins VALUES {OPTIN_ADDED_ROW}")
    again = run_cycle(settings, ["optins"]).tables[0]
    assert again.status == "ok" and again.rows == 1, again.error
    # files that compaction rewrote (a replace snapshot; the new files written from a pyiceberg scan)
    for name in ("silver_trades", "bronze_trades_kraken"):
        done = compact(settings, settings.table(name), sink_for(settings), apply=True, min_files=2)
        assert done.applied, done
    return Offloaded(settings, folder, [t.source for t in settings.tables])


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offloaded]:
    folder = tmp_path_factory.mktemp("readers")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        yield offload_all(folder)


# -- what ClickHouse holds, as comparable values ------------------------------------------------------------


_WRAPPERS = ("Nullable", "LowCardinality", "SimpleAggregateFunction")
_TEXT = ("Int128", "UInt128", "Int256", "UInt256", "UUID", "IPv4", "IPv6", "JSON", "Object", "Enum8", "Enum16")


def _strip(t: Any) -> Any:
    while t.name in _WRAPPERS:
        t = t.children[-1]
    return t


@functools.cache
def _parse(type_: str) -> Any:
    return parse(type_)


def _base(type_: str) -> Any:
    return _strip(_parse(type_))


def _conv(t: Any, x: str, depth: int = 0) -> str | None:
    """An expression for x (of ClickHouse type t) whose Arrow value is comparable, or None when x itself is:
    text where ClickHouse's Arrow output is not the value (128/256-bit integers, UUID, IP, Enum, JSON), epoch
    ticks for times; inside arrays, maps and tuples too."""
    t = _strip(t)
    if t.name in _TEXT or (t.name == "Decimal" and int(t.args[0]) > 38):
        return f"toString({x})"
    if t.name == "DateTime":
        return f"toUnixTimestamp64Micro(toDateTime64({x}, 6))"
    if t.name == "DateTime64":
        return f"toUnixTimestamp64Nano({x})" if int(t.args[0]) > 6 else f"toUnixTimestamp64Micro({x})"
    if t.name == "Array":
        e = f"e{depth}"
        inner = _conv(t.children[0], e, depth + 1)
        return None if inner is None else f"arrayMap({e} -> {inner}, {x})"
    if t.name == "Map":
        k, v = f"k{depth}", f"v{depth}"
        ck, cv = _conv(t.children[0], k, depth + 1), _conv(t.children[1], v, depth + 1)
        return None if ck is None and cv is None else f"mapApply(({k}, {v}) -> ({ck or k}, {cv or v}), {x})"
    if t.name == "Tuple":
        parts = [f"tupleElement({x}, {i + 1})" for i in range(len(t.children))]
        conv = [_conv(c, p, depth + 1) for c, p in zip(t.children, parts, strict=True)]
        if all(c is None for c in conv):
            return None
        return f"tuple({', '.join(c or p for c, p in zip(conv, parts, strict=True))})"
    return None


def _source_expr(name: str, type_: str, opt_in: str | None) -> str:
    col = quote(name)
    if opt_in == "binary":
        return f"hex({col})"
    return _conv(_parse(type_), col) or col


def source_rows(ch: Source, settings: Settings, name: str) -> tuple[dict[str, str], dict[tuple, dict[str, Any]]]:
    """ClickHouse's rows that the watermark covers, by key: {column: ClickHouse type}, {key: {column: value}}."""
    cfg = settings.table(name)
    plan = TablePlan.build(ch, cfg)
    wm = sink_for(settings).watermark(sink_for(settings).load(cfg.target))[0]
    assert wm is not None
    types = {p.name: dict(plan.info.columns)[p.name] for p in plan.columns}
    exprs = ", ".join(f"{_source_expr(n, t, cfg.column_types.get(n))} AS {quote(n)}" for n, t in types.items())
    fin = " FINAL" if cfg.final else ""
    # the filter inside: an alias in the outer list would otherwise shadow the key column it filters on
    tbl = ch.arrow(f"SELECT {exprs} FROM (SELECT * FROM {plan.info.qualified}{fin} WHERE {plan.key.at_most(wm)})")
    keys = key_columns(settings, name)
    rows = {tuple(expected(types[k], cfg.column_types.get(k), r[k]) for k in keys): r for r in tbl.to_pylist()}
    assert len(rows) == tbl.num_rows > 0, (name, tbl.num_rows)
    return types, rows


def key_columns(settings: Settings, name: str) -> list[str]:
    cfg = settings.table(name)
    if cfg.key_columns:
        return list(cfg.key_columns)
    return [c for c in (cfg.timestamp_column, cfg.sequence_column) if c]


# -- comparable values --------------------------------------------------------------------------------------

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def norm(v: Any) -> Any:
    """A value as plain data that compares exactly: floats by their bits, times as epoch µs, structs as
    tuples of their values, maps as lists of pairs. Decimals stay as they are: Decimal equality is exact
    (normalize() would round to the context's 28 digits)."""
    if isinstance(v, float):
        return ("float", struct.pack(">d", v).hex())  # NaN's sign and payload too
    if isinstance(v, dt.datetime):  # epoch µs, and whether the reader gave it a zone (timestamptz)
        delta = (v if v.tzinfo is not None else v.replace(tzinfo=dt.UTC)) - EPOCH
        return ("time", (delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds, v.tzinfo is not None)
    if isinstance(v, dict):
        return tuple(norm(x) for x in v.values())
    if isinstance(v, list | tuple):
        return type(v)(norm(x) for x in v)
    if isinstance(v, memoryview | bytearray):
        return bytes(v)
    return v


def same(a: Any, b: Any) -> bool:
    """Equal and of the same Python type, all the way down (5 == Decimal(5) and 1 == True are not the same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def expected(type_: str, opt_in: str | None, v: Any) -> Any:
    """The value a reader should return for ClickHouse's (_source_expr) value v, normalized."""
    return _expected(_parse(type_), opt_in, v, True)


def _expected(t: Any, opt_in: str | None, v: Any, top: bool) -> Any:
    t = _strip(t)
    if v is None:
        return None
    if t.name in ("Int128", "UInt128", "Int256", "UInt256"):
        return v if opt_in == "string" or not top else Decimal(v)  # nested: exact text
    if t.name == "UUID":
        return uuid.UUID(v)
    if t.name == "DateTime":
        return ("time", v, True)
    if t.name == "DateTime64":
        if opt_in == "long":
            return v  # epoch nanoseconds
        if opt_in == "timestamp":
            return ("time", v // 1000, True)  # floored to µs (timestamptz)
        return ("time", v, True)
    if t.name == "Decimal" and int(t.args[0]) > 38:
        return norm(float(Decimal(v))) if opt_in == "double" else v
    if t.name == "UInt64" and opt_in and opt_in.startswith("decimal"):
        return Decimal(v)
    if opt_in == "binary":
        return bytes.fromhex(v)
    if t.name == "Array":
        return [_expected(t.children[0], None, e, False) for e in v]
    if t.name == "Map":
        k, vt = t.children
        return [(_expected(k, None, a, False), _expected(vt, None, b, False)) for a, b in v]
    if t.name == "Tuple":
        return tuple(_expected(c, None, e, False) for c, e in zip(t.children, v.values(), strict=True))
    return norm(v)


def as_expected(type_: str, opt_in: str | None, v: Any) -> Any:
    """A reader's value, normalized; UUIDs given as bytes or text become UUID (at any depth)."""
    return _as_expected(_parse(type_), norm(v))


def _as_expected(t: Any, v: Any) -> Any:
    t = _strip(t)
    if v is None:
        return None
    if t.name == "UUID" and not isinstance(v, uuid.UUID):
        return uuid.UUID(bytes=v) if isinstance(v, bytes) else uuid.UUID(str(v))
    if t.name == "Array" and isinstance(v, list):
        return [_as_expected(t.children[0], e) for e in v]
    if t.name == "Map" and isinstance(v, list):
        return [(_as_expected(t.children[0], a), _as_expected(t.children[1], b)) for a, b in v]
    if t.name == "Tuple" and isinstance(v, tuple):
        return tuple(_as_expected(c, e) for c, e in zip(t.children, v, strict=True))
    return v


# -- the readers ----------------------------------------------------------------------------------------------


def _duckdb() -> Any:
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    for module, name in ((duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")):
        path = Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        assert path.exists(), f"{path}: the {name} wheel does not match duckdb {duckdb.__version__}"
        con.execute(f"LOAD '{path}'")
    loaded = con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()
    assert {("avro",), ("iceberg",)} <= set(loaded), loaded
    con.execute("SET TimeZone = 'UTC'")
    return con


def read_duckdb(con: Any, metadata: str, columns: list[str]) -> pa.Table:
    cols = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    path = metadata.replace("'", "''")
    return con.execute(f"SELECT {cols} FROM iceberg_scan('{path}')").to_arrow_table()


def read_chdb(ch: Source, location: str, metadata: str, columns: list[str]) -> pa.Table:
    pin = metadata[len(location) + 1 :]
    cols = ", ".join(quote(c) for c in columns)
    return ch.arrow(
        f"SELECT {cols} FROM icebergLocal({literal(location)}, SETTINGS iceberg_metadata_file_path = {literal(pin)})"
    )


Reader = Callable[[list[str]], pa.Table]


def compare(reader: str, name: str, read: Reader, types: dict[str, str], src: dict[tuple, dict], keys, optins):
    """Every column of every row; returns {column: description of the difference} (empty: all equal)."""

    def rows_of(tbl: pa.Table) -> list[dict[str, Any]]:
        for i, field in enumerate(tbl.schema):
            binary = optins.get(field.name) == "binary" or _base(types[field.name]).name == "FixedString"
            if binary and pa.types.is_string(field.type):  # ClickHouse has no binary type: String is bytes
                tbl = tbl.set_column(i, field.name, tbl.column(i).cast(pa.binary()))
        return tbl.to_pylist()

    diffs: dict[str, str] = {}
    try:  # every column at once; when that fails, column by column to name the ones that cannot be read
        whole = rows_of(read(list(types)))
        by_column = dict.fromkeys(types, whole)
    except Exception:  # noqa: BLE001
        by_column = {}
        for col in types:
            try:
                by_column[col] = rows_of(read(list(dict.fromkeys([*keys, col]))))
            except Exception as exc:  # noqa: BLE001 - a column the reader cannot read is a difference
                diffs[col] = f"error: {str(exc).splitlines()[0][:200]}"
    keyed: dict[int, list[tuple]] = {}
    for col, rows in by_column.items():
        if (got_keys := keyed.get(id(rows))) is None:
            got_keys = keyed[id(rows)] = [
                tuple(as_expected(types[k], optins.get(k), row[k]) for k in keys) for row in rows
            ]
            missing, extra = set(src) - set(got_keys), set(got_keys) - set(src)
            assert len(got_keys) == len(src) and not missing and not extra, (reader, name, len(got_keys), len(src))
        for k, row in zip(got_keys, rows, strict=True):
            want = expected(types[col], optins.get(col), src[k][col])
            got = as_expected(types[col], optins.get(col), row[col])
            if not same(got, want):
                diffs[col] = f"row {k}: {got!r} != {want!r}"
                break
    return diffs


# Reader-side bugs and limitations: (reader, table, column) -> (reason, the difference exactly as found). None
# today: DuckDB 1.5.5 and chdb 4.4 read every value of these tables as ClickHouse holds it.
KNOWN: dict[tuple[str, str, str], tuple[str, str]] = {}


def _differences(offloaded: Offloaded, only: str | None = None, doctor: Callable | None = None) -> dict:
    s = offloaded.settings
    con = _duckdb()
    found: dict[tuple[str, str, str], str] = {}
    try:
        with pytest.MonkeyPatch.context() as mp, clickhouse(s) as ch:
            mp.chdir(offloaded.folder)
            for name in [only] if only else offloaded.tables:
                table = sink_for(s).load(s.table(name).target)
                assert table is not None
                meta = table.metadata_location.removeprefix("file://")
                location = table.location().removeprefix("file://").rstrip("/")
                types, src = source_rows(ch, s, name)
                keys = key_columns(s, name)
                optins = dict(s.table(name).column_types)
                readers: dict[str, Reader] = {
                    "duckdb": lambda cols, meta=meta: read_duckdb(con, meta, cols),
                    "clickhouse": lambda cols, loc=location, meta=meta: read_chdb(ch, loc, meta, cols),
                }
                for reader, read in readers.items():
                    chosen = (lambda cols, read=read: doctor(read(cols))) if doctor else read
                    for col, d in compare(reader, name, chosen, types, src, keys, optins).items():
                        found[(reader, name, col)] = d
    finally:
        con.close()
    return found


def test_duckdb_and_clickhouse_read_every_value(offloaded: Offloaded) -> None:
    found = _differences(offloaded)
    unexpected = {k: v for k, v in found.items() if k not in KNOWN}
    assert not unexpected, "\n".join(f"{k}: {v}" for k, v in unexpected.items())
    for key, (reason, difference) in KNOWN.items():
        assert found.get(key) == difference, f"{key} ({reason}): now {found.get(key)!r}, not {difference!r}"


def test_the_comparison_sees_a_changed_value(offloaded: Offloaded) -> None:
    """The comparison is not vacuous: one more unit in the last place of a decimal, 0.0 read as -0.0, a
    timestamptz read without its zone and a NULL read as a value are each reported."""

    def doctor(tbl: pa.Table) -> pa.Table:
        changes = {
            "d38": lambda v: v + Decimal("1e-10") if v is not None else v,
            "f64": lambda v: -v if v == 0 else v,  # 0.0 read as -0.0 (equal as floats, not as bits)
            "dtm": lambda v: v.replace(tzinfo=None) if v is not None else v,
            "n": lambda v: 0 if v is None else v,
        }
        for col, change in changes.items():
            i = tbl.schema.get_field_index(col)
            field = tbl.schema.field(i)
            kind = pa.timestamp("us") if col == "dtm" else field.type
            values = pa.array([change(v) for v in tbl.column(i).to_pylist()], kind)
            tbl = tbl.set_column(i, pa.field(col, kind), values)
        return tbl

    found = _differences(offloaded, "types", doctor)
    assert {(r, c) for r, _, c in found} == {
        (r, c) for r in ("duckdb", "clickhouse") for c in ("d38", "f64", "dtm", "n")
    }
