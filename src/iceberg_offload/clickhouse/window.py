"""The window: rows with (ts, seq) > watermark and ts <= now - settle (- closed_after), cut into chunks.

A watermark is the key of the last row a commit carried: epoch nanoseconds of the timestamp column,
exact for every ClickHouse precision, plus the sequence value when the table has one. Chunks are cut
at a key, never inside a run of equal keys, so a chunk boundary can never split rows that compare
equal. The SQL here keeps the timestamp column bare on the left of every comparison so ClickHouse
uses the sort key (checked with EXPLAIN indexes in the tests).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from iceberg_offload import names
from iceberg_offload.clickhouse.sql import quote
from iceberg_offload.clickhouse.types import CHType, parse
from iceberg_offload.errors import ConfigError
from iceberg_offload.times import utc

NS = 1_000_000_000
_INT_TYPES = {f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)}


@dataclass(frozen=True)
class Watermark:
    ts_ns: int
    seq: int | None = None

    def _order(self) -> tuple[int, int]:
        return (self.ts_ns, -(2**65) if self.seq is None else self.seq)

    def __lt__(self, other: Watermark) -> bool:
        return self._order() < other._order()

    def to_props(self) -> dict[str, str]:
        props = {names.WATERMARK_TS_NS: str(self.ts_ns), names.WATERMARK_TS: utc(self.ts_ns)}
        if self.seq is not None:
            props[names.WATERMARK_SEQ] = str(self.seq)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> Watermark | None:
        raw = props.get(names.WATERMARK_TS_NS)
        if raw is None:
            return None
        seq = props.get(names.WATERMARK_SEQ)
        return cls(int(raw), int(seq) if seq not in (None, "") else None)

    def describe(self) -> str:
        return utc(self.ts_ns) + (f" seq {self.seq}" if self.seq is not None else "")

    def as_dict(self) -> dict[str, object]:
        return {"ts": utc(self.ts_ns), "ts_ns": self.ts_ns, "seq": self.seq}


def _unwrap(t: CHType) -> CHType:
    while t.name in ("Nullable", "LowCardinality"):
        t = t.children[0]
    return t


@dataclass(frozen=True)
class Aliases:
    """Names for what our queries compute, chosen so that none is, or starts like, a column of the table:
    ClickHouse resolves a name inside select expressions and WHERE to a select alias before the column, so
    an alias `c1` over a column `c1` read another column's values."""

    prefix: str = "_o"

    @classmethod
    def avoiding(cls, columns: list[str]) -> Aliases:
        prefix = "_o"
        while any(c.startswith(prefix) for c in columns):
            prefix += "_"
        return cls(prefix)

    def name(self, tag: str) -> str:
        return self.prefix + tag

    def select(self, exprs: list[str]) -> tuple[str, list[str]]:
        """`expr AS alias, ...` and the aliases: fresh for every query (a nonce), so a result can be checked
        to be this query's (`Source.arrow(sql, names)`)."""
        nonce = secrets.token_hex(3)
        names = [f"{self.prefix}{i}_{nonce}" for i in range(len(exprs))]
        return ", ".join(f"{e} AS {n}" for e, n in zip(exprs, names, strict=True)), names


@dataclass(frozen=True)
class Key:
    """How one table's key (timestamp column, optional sequence column) is written in SQL."""

    ts: str
    ts_type: CHType
    seq: str | None
    aliases: Aliases = field(default_factory=Aliases)

    @classmethod
    def for_table(cls, table: str, columns: dict[str, str], ts: str, seq: str | None) -> Key:
        if ts not in columns:
            raise ConfigError(
                f"{table}: timestamp_column {ts!r} is not a column of the ClickHouse table",
                f"set timestamp_column to one of: {', '.join(columns)}",
            )
        ts_type = _unwrap(parse(columns[ts]))
        if ts_type.name not in ("DateTime", "DateTime64"):
            times = [c for c, t in columns.items() if _unwrap(parse(t)).name in ("DateTime", "DateTime64")]
            raise ConfigError(
                f"{table}: timestamp_column {ts!r} is {columns[ts]}, not a time type",
                "set timestamp_column to a DateTime or DateTime64 column"
                + (f": {', '.join(times)}" if times else " (the table has none)"),
            )
        if seq is not None:
            if seq not in columns:
                raise ConfigError(
                    f"{table}: sequence_column {seq!r} is not a column of the ClickHouse table",
                    f"set sequence_column to one of: {', '.join(columns)}, or remove it",
                )
            if _unwrap(parse(columns[seq])).name not in _INT_TYPES:
                raise ConfigError(
                    f"{table}: sequence_column {seq!r} is {columns[seq]}, not an integer",
                    "choose an integer column (UInt64, Int64, ...) or remove sequence_column",
                )
        return cls(ts, ts_type, seq, Aliases.avoiding(list(columns)))

    # -- SQL pieces --------------------------------------------------------------------------------
    def ts_literal(self, ns: int) -> str:
        if self.ts_type.name == "DateTime":
            return f"toDateTime({ns // NS}, 'UTC')"
        return self.ts_literal_of(str(ns))

    def ts_literal_of(self, ns_expr: str) -> str:
        """A value of the timestamp column's type from an SQL expression of epoch nanoseconds."""
        if self.ts_type.name == "DateTime":
            return f"toDateTime(intDiv({ns_expr}, {NS}), 'UTC')"
        return f"CAST(fromUnixTimestamp64Nano(toInt64({ns_expr}), 'UTC'), '{_sql_str(str(self.ts_type))}')"

    def ts_ns_expr(self) -> str:
        return self.ts_ns_of(quote(self.ts))

    def ts_ns_of(self, expr: str) -> str:
        """Epoch nanoseconds of an SQL expression of the timestamp column's type."""
        if self.ts_type.name == "DateTime":
            return f"toInt64(toUnixTimestamp({expr})) * {NS}"
        return f"toUnixTimestamp64Nano(CAST({expr}, 'DateTime64(9)'))"

    def ts_ms_of(self, expr: str) -> str:
        """Epoch milliseconds (Int64 for every DateTime64, unlike nanoseconds after 2262)."""
        if self.ts_type.name == "DateTime":
            return f"toInt64(toUnixTimestamp({expr})) * 1000"
        return f"toUnixTimestamp64Milli(CAST({expr}, 'DateTime64(3)'))"

    def select_key(self) -> str:
        return self.ts_ns_expr() + (f", {quote(self.seq)}" if self.seq else "")

    def order_by(self, desc: bool = False) -> str:
        d = " DESC" if desc else ""
        return f"{quote(self.ts)}{d}" + (f", {quote(self.seq)}{d}" if self.seq else "")

    def after(self, wm: Watermark | None) -> str:
        """key > wm (everything when there is no watermark yet)."""
        if wm is None:
            return "1"
        lit, ts = self.ts_literal(wm.ts_ns), quote(self.ts)
        if self.seq is None or wm.seq is None:
            return f"{ts} > {lit}"
        return f"{ts} >= {lit} AND ({ts} > {lit} OR {quote(self.seq)} > {wm.seq})"

    def at_most(self, wm: Watermark) -> str:
        """key <= wm."""
        lit, ts = self.ts_literal(wm.ts_ns), quote(self.ts)
        if self.seq is None or wm.seq is None:
            return f"{ts} <= {lit}"
        return f"{ts} <= {lit} AND ({ts} < {lit} OR {quote(self.seq)} <= {wm.seq})"

    def not_after(self, ns: int) -> str:
        return f"{quote(self.ts)} <= {self.ts_literal(ns)}"

    def watermark(self, row: tuple[object, ...]) -> Watermark:
        ts_ns = int(row[0])  # type: ignore[call-overload]
        return Watermark(ts_ns, int(row[1]) if self.seq is not None else None)  # type: ignore[call-overload]


def _sql_str(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


@dataclass(frozen=True)
class Window:
    """(lower, upper]: lower is the committed watermark, upper a timestamp in epoch nanoseconds."""

    lower: Watermark | None
    upper_ns: int

    def where(self, key: Key) -> str:
        return f"({key.after(self.lower)}) AND {key.not_after(self.upper_ns)}"


def upper_bound(now_ns: int, settle_seconds: int, closed_after_seconds: int) -> int:
    """Newest timestamp a cycle may offload: rows younger than settle (or in an open candle) wait."""
    return now_ns - (settle_seconds + closed_after_seconds) * NS


def plan_query(table_sql: str, final: bool, key: Key, window: Window, max_rows: int, batch_rows: int) -> str:
    """The next chunk in one query: the first max_rows keys of the window in key order, and from them
    `last` (the greatest: the chunk's cut, its new watermark), every batch_rows-th key (where the chunk
    is split into read queries) and `n`. Rows sharing the last key beyond max_rows go into the chunk too,
    since the chunk is read as a key range."""
    expr = f"({key.ts_ns_expr()}, {quote(key.seq) if key.seq else '0'})"
    k, rn = key.aliases.name("k"), key.aliases.name("rn")
    return (
        f"SELECT groupArrayIf({k}, ({rn} + 1) % {batch_rows} = 0), max({k}), count() FROM ("
        f"SELECT {k}, rowNumberInAllBlocks() AS {rn} FROM ("
        f"SELECT {expr} AS {k} FROM {table_sql}{' FINAL' if final else ''} WHERE {window.where(key)} "
        f"ORDER BY {key.order_by()} LIMIT {max_rows}))"
    )


def chunk_query(
    table_sql: str, final: bool, key: Key, select: list[str], window: Window, cut: Watermark, order: list[str]
) -> tuple[str, list[str]]:
    """Every row with lower < key <= cut, inside the window, and the result's column names, ordered by
    `order` (a prefix of the table's sorting key: ClickHouse reads it in order, no sort; empty: no ORDER BY)."""
    cols, names = key.aliases.select(select)
    by = f" ORDER BY {', '.join(quote(c) for c in order)}" if order else ""
    return (
        f"SELECT {cols} FROM {table_sql}{' FINAL' if final else ''} WHERE {window.where(key)} AND "
        f"{key.at_most(cut)}{by}"
    ), names


def count_query(table_sql: str, final: bool, key: Key, window: Window) -> str:
    return f"SELECT count() FROM {table_sql}{' FINAL' if final else ''} WHERE {window.where(key)}"
