"""ClickHouse type -> (ClickHouse cast) -> Arrow -> Iceberg. Every type is decided; unknown ones are refused.

ClickHouse does only the casts that are exact (DateTime to microsecond UTC timestamps, Enum/IP/JSON to
text, UInt32 to Int64); everything that could lose or wrap crosses as stored and is converted in Arrow
(`wire`), checked, so a value that does not fit stops the table instead of changing. Lossy mappings
(Decimal with P > 38, sub-microsecond timestamps) are refused unless the operator opts in per column
(`column_types`), and the opt-ins are exact too, but for `"double"`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from pyiceberg.types import (
    BinaryType,
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

from iceberg_offload.clickhouse.sql import quote
from iceberg_offload.clickhouse.types import CHType, parse
from iceberg_offload.engine.wire import Wire
from iceberg_offload.errors import ConfigError, TypeRefused

OVERRIDES = ("decimal(20,0)", "decimal(38,S)", "string", "binary", "double", "timestamp", "long")


IceFactory = Callable[[Callable[[], int]], IcebergType]


@dataclass(frozen=True)
class Mapped:
    target: CHType  # the type ClickHouse casts to before Arrow (== source when no cast)
    iceberg: IceFactory
    nullable: bool
    changed: bool
    expr: str | None = None  # a whole-column expression replacing CAST (top level only)
    wire: Wire | None = None  # crosses in this shape (top level only); Arrow makes it exact or refuses
    native: bool = False  # an opt-in that reads the column as stored and lets Arrow's checked cast convert


@dataclass(frozen=True)
class ColumnMap:
    name: str
    source_type: str
    select: str  # SQL select expression (without alias)
    iceberg: IceFactory
    required: bool
    wire: Wire | None = None  # decoded by conform() before the checked cast
    override: str | None = None  # the column_types opt-in, if any


def _const(t: IcebergType) -> IceFactory:
    return lambda _next_id: t


_INTS = {"Int8", "Int16", "Int32", "UInt8", "UInt16"}
_BIG = {"Int128", "UInt128", "Int256", "UInt256"}
_SIMPLE: dict[str, IcebergType] = {
    "Int64": LongType(),
    "UInt32": LongType(),
    "UInt64": LongType(),
    "Float32": FloatType(),
    "Float64": DoubleType(),
    "Bool": BooleanType(),
    "String": StringType(),
    "UUID": UUIDType(),
    "Date": DateType(),
    "Date32": DateType(),
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
        return replace(inner, target=CHType("Nullable", children=(inner.target,), names=(None,)), nullable=True)
    if name in ("LowCardinality", "SimpleAggregateFunction"):
        return replace(map_type(t.children[0], where, override, top), changed=True)
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
        return Mapped(t, _const(DecimalType(38, 0)), False, False, wire=_bigint_wire(t))
    if name in ("Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256"):
        p, s = _decimal_ps(t)
        if p > 38:
            raise TypeRefused(
                f"{where}: Decimal({p}, {s}) does not fit Iceberg (at most 38 digits)",
                f'opt in with column_types = {{ {_col(where)} = "string" }} (exact text) or '
                f'"decimal(38,{s})" (refuses values that need more digits) or "double" (approximate)',
            )
        return Mapped(CHType("Decimal", (str(p), str(s))), _const(DecimalType(p, s)), False, t.name != "Decimal")
    if name == "FixedString":
        return Mapped(t, _const(FixedType(int(t.args[0]))), False, False)
    if name == "DateTime":
        return Mapped(_TS6, _const(TimestamptzType()), False, True)
    if name == "DateTime64":
        if int(t.args[0]) > 6:
            raise TypeRefused(
                f"{where}: {t} has sub-microsecond precision; Iceberg timestamps hold microseconds",
                f'opt in with column_types = {{ {_col(where)} = "timestamp" }} (floor to µs) or '
                f'"long" (epoch nanoseconds, exact)',
            )
        return Mapped(_TS6, _const(TimestamptzType()), False, True)
    if name in _TEXT or name.startswith("Enum"):
        return Mapped(CHType("String"), _const(StringType()), False, True)
    if name == "Array":
        el = map_type(t.children[0], where, None, False)
        return Mapped(
            CHType("Array", children=(el.target,), names=(None,)),
            lambda nid: ListType(nid(), el.iceberg(nid), element_required=not el.nullable),
            False,
            el.changed,
        )
    if name == "Map":
        k = map_type(t.children[0], where, None, False)
        v = map_type(t.children[1], where, None, False)
        return Mapped(
            CHType("Map", children=(k.target, v.target), names=(None, None)),
            lambda nid: MapType(nid(), k.iceberg(nid), nid(), v.iceberg(nid), value_required=not v.nullable),
            False,
            k.changed or v.changed,
        )
    if name == "Tuple":
        kids = [map_type(c, where, None, False) for c in t.children]
        names = tuple(n or f"f{i + 1}" for i, n in enumerate(t.names))

        def struct(nid: Callable[[], int]) -> IcebergType:
            return StructType(
                *[
                    NestedField(nid(), n, k.iceberg(nid), required=not k.nullable)
                    for n, k in zip(names, kids, strict=True)
                ]
            )

        renamed = any(n is None for n in t.names)
        return Mapped(
            CHType("Tuple", children=tuple(k.target for k in kids), names=names),
            struct,
            False,
            renamed or any(k.changed for k in kids),
        )
    raise TypeRefused(
        f"{where}: ClickHouse type {t} has no Iceberg mapping",
        "leave the column out with an explicit columns = [...] list, or cast it in a view",
    )


def _col(where: str) -> str:
    col = where.rsplit(".", 1)[-1]
    return col if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", col) else json.dumps(col, ensure_ascii=False)


def _decimal_ps(t: CHType) -> tuple[int, int]:
    if t.name == "Decimal":
        return int(t.args[0]), int(t.args[1]) if len(t.args) > 1 else 0
    width = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}[t.name]
    return width, int(t.args[0])


def _bigint_wire(t: CHType) -> Wire:
    return Wire(bigint=(int(t.name.removeprefix("U").removeprefix("Int")), not t.name.startswith("U")))


_NUMERIC = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", *_BIG}


def _apply_override(t: CHType, where: str, override: str) -> Mapped:
    o = override.strip().lower().replace(" ", "")
    if o == "string":
        return Mapped(CHType("String"), _const(StringType()), False, True, expr="toString({col})")
    if o == "binary" and t.name in ("String", "FixedString"):
        return Mapped(t, _const(BinaryType()), False, False, native=True)
    if o == "double":
        return Mapped(CHType("Float64"), _const(DoubleType()), False, True)
    if o in ("long", "timestamp") and t.name == "DateTime64":
        unit, ice = ("ns", LongType()) if o == "long" else ("us", TimestamptzType())
        return Mapped(t, _const(ice), False, False, wire=Wire(ticks=(int(t.args[0]), unit)))
    if o == "long" and t.name in _NUMERIC - _BIG:
        return Mapped(t, _const(LongType()), False, False, native=True)
    if o == "timestamp" and t.name == "DateTime":
        return Mapped(_TS6, _const(TimestamptzType()), False, True)
    dec = _override_decimal(o)
    if dec is not None and dec[0] <= 38 and (t.name in _NUMERIC or t.name.startswith("Decimal")):
        # read as stored (big ints as their bytes): Arrow's checked cast refuses lost digits and scale
        return Mapped(
            t, _const(DecimalType(*dec)), False, False, wire=_bigint_wire(t) if t.name in _BIG else None, native=True
        )
    raise ConfigError(
        f"column_types for {where} = {override!r} is not a mapping for {t}",
        f"use one of: {', '.join(OVERRIDES)} (decimal(P,S) for integers and decimals, precision at "
        f"most 38; binary for String and FixedString; long and timestamp for DateTime64)",
    )


def plan_columns(table: str, columns: list[tuple[str, str]], overrides: dict[str, str]) -> list[ColumnMap]:
    unknown = sorted(set(overrides) - {c for c, _ in columns})
    if unknown:
        raise ConfigError(
            f"column_types for {table} names columns that do not exist: {', '.join(unknown)}",
            "fix the column names in column_types",
        )
    plans = []
    for col, typ in columns:
        parsed = parse(typ)
        override = overrides.get(col)
        m = map_type(parsed, f"{table}.{col}", override)
        wire = m.wire or (_wire(parsed, typ) if override is None or m.native else None)
        if wire is not None:
            select = wire.select(quote(col))
        elif m.expr:
            select = m.expr.format(col=quote(col), target=str(m.target))
        elif m.changed:
            select = f"CAST({quote(col)}, {_sql_type(m.target)})"
        else:
            select = quote(col)
        plans.append(ColumnMap(col, typ, select, m.iceberg, required=not m.nullable, wire=wire, override=override))
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
        inner = text[text.index(t.name + "(") + len(t.name) + 1 :]
        wire = Wire(
            enum=tuple((int(m.group(2)), re.sub(r"\\(['\\])", r"\1", m.group(1))) for m in _ENUM_ITEM.finditer(inner))
        )
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
    return [
        NestedField(i + 1, p.name, p.iceberg(lambda: next(counter)), required=p.required) for i, p in enumerate(plans)
    ]
