"""ClickHouse type -> (ClickHouse cast) -> Arrow -> Iceberg. Every type is decided; unknown ones are refused.

ClickHouse does the casts Arrow cannot (DateTime to microsecond UTC timestamps, Enum/IP/JSON to text,
big integers to decimal); Arrow does the rest with a checked cast, so an unsigned value that does not
fit Iceberg's signed `long` stops the table instead of wrapping. Lossy mappings (Decimal with P > 38,
sub-microsecond timestamps) are refused unless the operator opts in per column (`column_types`).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
    UUIDType,
)

from .chtype import CHType, parse
from .errors import ConfigError, TypeRefused, ValueOutOfRange
from .source import quote

INT64_MAX = 2**63 - 1
OVERRIDES = ("decimal(20,0)", "decimal(38,S)", "string", "double", "timestamp", "long")


IceFactory = Callable[[Callable[[], int]], IcebergType]


@dataclass(frozen=True)
class Mapped:
    target: CHType  # the type ClickHouse casts to before Arrow (== source when no cast)
    iceberg: IceFactory
    nullable: bool
    changed: bool
    expr: str | None = None  # a whole-column expression replacing CAST (top level only)


@dataclass(frozen=True)
class Wire:
    """A cheaper shape on the wire than the Arrow type ClickHouse would build: a Decimal's unscaled integer
    (ClickHouse's Decimal -> Arrow decimal128 conversion cost more than the rest of the row), an Enum's
    number (turned into its name by a dictionary lookup in Arrow), a LowCardinality column's dictionary."""

    decimal: tuple[int, int, int] | None = None  # (precision, scale, bits of the unscaled integer)
    enum: tuple[tuple[int, str], ...] = ()
    dictionary: bool = False  # LowCardinality(String): a dictionary array in process, plain text over HTTP

    def decode(self, column: pa.ChunkedArray) -> pa.ChunkedArray:
        if self.dictionary:
            return column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column
        return pa.chunked_array([self._decode(c) for c in column.chunks], type=self._type())

    def _type(self) -> pa.DataType:
        return pa.decimal128(*self.decimal[:2]) if self.decimal else pa.string()

    def _decode(self, chunk: pa.Array) -> pa.Array:
        if self.decimal:
            # decimal128 is the 128-bit two's complement of the unscaled value: the integer, then its sign
            # (a checked cast would re-verify precision the column type already guarantees)
            if chunk.offset:
                chunk = pa.concat_arrays([chunk])  # own buffers, offset 0
            width = np.int32 if self.decimal[2] == 32 else np.int64  # the raw data buffer: nulls hold junk
            values = np.frombuffer(chunk.buffers()[1], dtype=width, count=len(chunk)).astype(np.int64, copy=False)
            wide = np.empty((len(values), 2), dtype=np.int64)
            wide[:, 0] = values
            wide[:, 1] = values >> 63
            return pa.Array.from_buffers(self._type(), len(chunk), [chunk.buffers()[0], pa.py_buffer(wide)],
                                         chunk.null_count)
        low, names = self._enum_names
        indices = pc.subtract(chunk.cast(pa.int32()), pa.scalar(low, pa.int32()))
        return pa.DictionaryArray.from_arrays(indices, names).cast(pa.string())

    @functools.cached_property
    def _enum_names(self) -> tuple[int, pa.Array]:
        """(lowest value, names indexed by value - lowest): built once, not per chunk."""
        low = min(v for v, _ in self.enum)
        names: list[str | None] = [None] * (max(v for v, _ in self.enum) - low + 1)
        for value, name in self.enum:
            names[value - low] = name
        return low, pa.array(names, pa.string())


@dataclass(frozen=True)
class ColumnMap:
    name: str
    source_type: str
    select: str  # SQL select expression (without alias)
    iceberg: IceFactory
    required: bool
    wire: Wire | None = None  # decoded by conform() before the checked cast


def _const(t: IcebergType) -> IceFactory:
    return lambda _next_id: t


_INTS = {"Int8", "Int16", "Int32", "UInt8", "UInt16"}
_BIG = {"Int128", "UInt128", "Int256", "UInt256"}
_SIMPLE: dict[str, IcebergType] = {
    "Int64": LongType(), "UInt32": LongType(), "UInt64": LongType(), "Float32": FloatType(),
    "Float64": DoubleType(), "Bool": BooleanType(), "String": StringType(), "UUID": UUIDType(),
    "Date": DateType(), "Date32": DateType(),
}
_TEXT = {"IPv4", "IPv6", "JSON", "Object", "Enum8", "Enum16"}
_TS6 = CHType("DateTime64", ("6", "'UTC'"))


def _override_decimal(value: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", value.replace(" ", ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def map_type(t: CHType, where: str, override: str | None = None, top: bool = True) -> Mapped:
    """Decide one (possibly nested) type. `where` names table.column for errors."""
    name = t.name
    if name == "Nullable":
        inner = map_type(t.children[0], where, override, top)
        return Mapped(CHType("Nullable", children=(inner.target,), names=(None,)), inner.iceberg, True,
                      inner.changed, inner.expr)
    if name == "LowCardinality":
        inner = map_type(t.children[0], where, override, top)
        return Mapped(inner.target, inner.iceberg, inner.nullable, True, inner.expr)
    if name == "SimpleAggregateFunction":
        inner = map_type(t.children[0], where, override, top)
        return Mapped(inner.target, inner.iceberg, inner.nullable, True, inner.expr)
    if override is not None and top:
        return _apply_override(t, where, override)
    if name in _INTS:
        return Mapped(t, _const(IntegerType()), False, False)
    if name in _SIMPLE:
        if name == "UInt32":
            return Mapped(CHType("Int64"), _const(LongType()), False, True)
        return Mapped(t, _const(_SIMPLE[name]), False, False)
    if name in _BIG:
        if not top:
            return Mapped(CHType("String"), _const(StringType()), False, True)
        return Mapped(CHType("Decimal", ("38", "0")), _const(DecimalType(38, 0)), False, True,
                      expr="CAST(toString({col}) AS {target})")
    if name in ("Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256"):
        p, s = _decimal_ps(t)
        if p > 38:
            raise TypeRefused(
                f"{where}: Decimal({p}, {s}) does not fit Iceberg (at most 38 digits)",
                f'opt in with column_types = {{ {_col(where)} = "string" }} (exact text) or '
                f'"decimal(38,{s})" (fails on wider values) or "double" (approximate)')
        return Mapped(CHType("Decimal", (str(p), str(s))), _const(DecimalType(p, s)), False,
                      t.name != "Decimal")
    if name == "FixedString":
        return Mapped(t, _const(FixedType(int(t.args[0]))), False, False)
    if name == "DateTime":
        return Mapped(_TS6, _const(TimestamptzType()), False, True)
    if name == "DateTime64":
        if int(t.args[0]) > 6:
            raise TypeRefused(
                f"{where}: {t} has sub-microsecond precision; Iceberg timestamps hold microseconds",
                f'opt in with column_types = {{ {_col(where)} = "timestamp" }} (truncate to µs) or '
                f'"long" (epoch nanoseconds, exact)')
        return Mapped(_TS6, _const(TimestamptzType()), False, True)
    if name in _TEXT or name.startswith("Enum"):
        return Mapped(CHType("String"), _const(StringType()), False, True)
    if name == "Array":
        el = map_type(t.children[0], where, None, False)
        return Mapped(CHType("Array", children=(el.target,), names=(None,)),
                      lambda nid: ListType(nid(), el.iceberg(nid), element_required=not el.nullable),
                      False, el.changed)
    if name == "Map":
        k = map_type(t.children[0], where, None, False)
        v = map_type(t.children[1], where, None, False)
        return Mapped(CHType("Map", children=(k.target, v.target), names=(None, None)),
                      lambda nid: MapType(nid(), k.iceberg(nid), nid(), v.iceberg(nid), value_required=not v.nullable),
                      False, k.changed or v.changed)
    if name == "Tuple":
        kids = [map_type(c, where, None, False) for c in t.children]
        names = tuple(n or f"f{i + 1}" for i, n in enumerate(t.names))

        def struct(nid: Callable[[], int]) -> IcebergType:
            return StructType(*[NestedField(nid(), n, k.iceberg(nid), required=not k.nullable)
                                for n, k in zip(names, kids, strict=True)])

        renamed = any(n is None for n in t.names)
        return Mapped(CHType("Tuple", children=tuple(k.target for k in kids), names=names), struct, False,
                      renamed or any(k.changed for k in kids))
    raise TypeRefused(f"{where}: ClickHouse type {t} has no Iceberg mapping",
                      "leave the column out with an explicit columns = [...] list, or cast it in a view")


def _col(where: str) -> str:
    col = where.rsplit(".", 1)[-1]
    return col if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", col) else json.dumps(col, ensure_ascii=False)


def _decimal_ps(t: CHType) -> tuple[int, int]:
    if t.name == "Decimal":
        return int(t.args[0]), int(t.args[1]) if len(t.args) > 1 else 0
    width = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}[t.name]
    return width, int(t.args[0])


def _apply_override(t: CHType, where: str, override: str) -> Mapped:
    o = override.strip().lower().replace(" ", "")
    if o == "string":
        return Mapped(CHType("String"), _const(StringType()), False, True, expr="toString({col})")
    if o == "double":
        return Mapped(CHType("Float64"), _const(DoubleType()), False, True)
    if o == "long" and t.name == "DateTime64":
        return Mapped(CHType("Int64"), _const(LongType()), False, True,
                      expr="toUnixTimestamp64Nano(CAST({col} AS DateTime64(9)))")
    if o == "long" and t.name in ("Int64", "UInt32", "UInt64", "Int32", "Int16", "Int8", "UInt8", "UInt16"):
        return map_type(t, where, None, True)
    if o == "timestamp" and t.name in ("DateTime64", "DateTime"):
        return Mapped(_TS6, _const(TimestamptzType()), False, True)
    dec = _override_decimal(o)
    if dec is not None and dec[0] <= 38:
        target = CHType("Decimal", (str(dec[0]), str(dec[1])))
        return Mapped(target, _const(DecimalType(*dec)), False, True, expr="CAST(toString({col}) AS {target})")
    raise ConfigError(f"column_types for {where} = {override!r} is not a mapping for {t}",
                      f"use one of: {', '.join(OVERRIDES)} (decimal precision at most 38)")


def plan_columns(table: str, columns: list[tuple[str, str]], overrides: dict[str, str]) -> list[ColumnMap]:
    unknown = sorted(set(overrides) - {c for c, _ in columns})
    if unknown:
        raise ConfigError(f"column_types for {table} names columns that do not exist: {', '.join(unknown)}",
                          "fix the column names in column_types")
    plans = []
    for col, typ in columns:
        parsed = parse(typ)
        m = map_type(parsed, f"{table}.{col}", overrides.get(col))
        wire = None if col in overrides else _wire(parsed, typ)
        if wire is not None and wire.decimal:
            select = f"reinterpret({quote(col)}, 'Int{wire.decimal[2]}')"
        elif wire is not None:  # the column as it is stored
            select = quote(col)
        elif m.expr:
            target = str(m.target)
            select = m.expr.format(col=quote(col), target=target)
        elif m.changed:
            select = f"CAST({quote(col)}, {_sql_type(m.target)})"
        else:
            select = quote(col)
        plans.append(ColumnMap(col, typ, select, m.iceberg, required=not m.nullable, wire=wire))
    return plans


_ENUM_ITEM = re.compile(r"'((?:[^'\\]|\\['\\])*)'\s*=\s*(-?\d+)")


def _wire(t: CHType, text: str) -> Wire | None:
    """The cheaper wire shape of a top-level column of ClickHouse type `t` (written `text`), if any (see Wire)."""
    if t.name == "LowCardinality" and str(t.children[0]) in ("String", "Nullable(String)"):
        return Wire(dictionary=True)
    if t.name == "Nullable":
        t = t.children[0]
    if t.name in ("Decimal", "Decimal32", "Decimal64"):
        p, s = _decimal_ps(t)
        return Wire(decimal=(p, s, 32 if p <= 9 else 64)) if p <= 18 else None
    if t.name in ("Enum8", "Enum16"):
        inner = text[text.index(t.name + "(") + len(t.name) + 1:]
        wire = Wire(enum=tuple((int(m.group(2)), re.sub(r"\\(['\\])", r"\1", m.group(1)))
                               for m in _ENUM_ITEM.finditer(inner)))
        if not wire.enum:
            return None
        # only when the names print back to the very type text (no quote split inside a name)
        back = ", ".join("'" + n.replace("\\", "\\\\").replace("'", "\\'") + f"' = {v}" for v, n in wire.enum)
        return wire if f"{t.name}({back})" in text else None
    return None


def _sql_type(t: CHType) -> str:
    text = str(t)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def iceberg_fields(plans: list[ColumnMap]) -> list[NestedField]:
    """Top-level fields with ids 1..n, nested ids after them (pyiceberg re-assigns on create)."""
    counter = itertools.count(len(plans) + 1)
    return [NestedField(i + 1, p.name, p.iceberg(lambda: next(counter)), required=p.required)
            for i, p in enumerate(plans)]


def conform(batch: pa.RecordBatch | pa.Table, plans: list[ColumnMap], target: pa.Schema, table: str) -> pa.Table:
    """Rename positional columns to their names and cast to the Iceberg table's Arrow schema (checked)."""
    tbl = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    tbl = tbl.rename_columns([p.name for p in plans])
    fields = {f.name: f.with_type(_small(f.type)) for f in target}
    arrays = []
    for p, column in zip(plans, tbl.columns, strict=True):
        field = fields[p.name]
        if p.wire is not None:
            column = p.wire.decode(column)
        if column.type.equals(field.type):
            arrays.append(column)
            continue
        try:
            arrays.append(column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise _cast_error(table, p, column, field, exc) from None
    return pa.Table.from_arrays(arrays, schema=pa.schema([fields[p.name] for p in plans]))


def _small(t: pa.DataType) -> pa.DataType:
    """pyiceberg's schema asks for large_string/large_binary/large_list; the plain ones write the same
    Parquet and Iceberg types, and ClickHouse sends plain ones, so casting them would only copy."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_small(t.value_type)))
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_small(t.key_type)), t.item_field.with_type(_small(t.item_type)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_small(t.field(i).type)) for i in range(t.num_fields)])
    return t


def _cast_error(table: str, p: ColumnMap, column: pa.ChunkedArray, field: pa.Field, exc: Exception) -> Exception:
    flat = column
    while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type):
        flat = pc.list_flatten(flat)
    if pa.types.is_unsigned_integer(flat.type):
        biggest = pc.max(flat).as_py()
        if biggest is not None and biggest > INT64_MAX:
            return ValueOutOfRange(
                f"{table}.{p.name} ({p.source_type}) holds {biggest}, above Iceberg long's maximum {INT64_MAX}; "
                f"nothing was written",
                f'map it to a decimal in the [[tables]] entry: column_types = {{ {_col(p.name)} = '
                f'"decimal(20,0)" }} (needs a new target table if one exists)')
    return ValueOutOfRange(f"{table}.{p.name} ({p.source_type}) cannot be written as {field.type}: {exc}",
                           "map the column with column_types, or leave it out with columns = [...]")
