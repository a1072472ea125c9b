"""What crosses from ClickHouse, and how it becomes the Iceberg table's Arrow schema exactly — or stops.

Some columns cross in a cheaper or more exact shape than the Arrow type ClickHouse would build (`Wire`);
`conform` decodes them, casts the rest with Arrow's checked cast, and checks that text is UTF-8. Every value
that does not fit raises `ValueOutOfRange` naming table, column, the value and the opt-in: nothing is
truncated, wrapped or rounded on the way (docs/types.md).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from iceberg_offload.errors import OutOfRange, ValueOutOfRange

if TYPE_CHECKING:
    from iceberg_offload.engine.typemap import ColumnMap

INT64_MAX = 2**63 - 1
_DEC38 = 10**38


@dataclass(frozen=True)
class Wire:
    """A shape on the wire other than the Arrow type ClickHouse would build:
    - `decimal`: a Decimal(P <= 18)'s unscaled integer (ClickHouse's decimal128 conversion costs more than
      the rest of the row);
    - `enum`: an Enum's number, named by a dictionary lookup in Arrow;
    - `dictionary`: LowCardinality(String) as a dictionary (plain text over HTTP);
    - `bigint`: (bits, signed) of an Int128/UInt128/Int256/UInt256 as its little-endian bytes, checked to fit
      decimal(38,0) (ClickHouse's own conversions wrap or fail without naming the value);
    - `ticks`: (precision, unit) of a DateTime64 as its raw ticks, made microseconds by flooring (`us`, the
      "timestamp" opt-in: ClickHouse truncates toward zero, moving pre-1970 values forward) or nanoseconds
      with an overflow check (`ns`, the "long" opt-in)."""

    decimal: tuple[int, int, int] | None = None  # (precision, scale, bits of the unscaled integer)
    enum: tuple[tuple[int, str], ...] = ()
    dictionary: bool = False
    bigint: tuple[int, bool] | None = None
    ticks: tuple[int, str] | None = None

    def select(self, col: str) -> str:
        """The select expression for a column (quoted name) crossing in this shape."""
        if self.decimal:
            return f"reinterpret({col}, 'Int{self.decimal[2]}')"
        if self.ticks:
            return f"reinterpret({col}, 'Int64')"
        return col

    def decode(self, column: pa.ChunkedArray, to: pa.DataType | None = None) -> pa.ChunkedArray:
        """The column in its Iceberg type's Arrow shape; a Decimal(P <= 18) as decimal64 when `to` is (its
        unscaled integers as they crossed, no copy: see `file_schema`), else as decimal128."""
        if self.dictionary:
            return column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column
        if pa.types.is_dictionary(column.type):  # LowCardinality(...) of a type crossing as raw values
            column = column.cast(column.type.value_type)
        narrow = self.decimal is not None and to is not None and pa.types.is_decimal64(to)
        out = pa.decimal64(*self.decimal[:2]) if narrow and self.decimal else self._type()
        return pa.chunked_array([self._decode(_whole(c), narrow) for c in column.chunks], type=out)

    def _type(self) -> pa.DataType:
        if self.decimal:
            return pa.decimal128(*self.decimal[:2])
        if self.bigint:
            return pa.decimal128(38, 0)
        if self.ticks:
            return pa.timestamp("us", tz="UTC") if self.ticks[1] == "us" else pa.int64()
        return pa.string()

    def _decode(self, chunk: pa.Array, narrow: bool = False) -> pa.Array:
        if self.decimal:
            # decimal64 is the unscaled integer itself; decimal128 its 128-bit two's complement: the integer,
            # then its sign (a checked cast would re-verify precision the column type already guarantees)
            width = np.int32 if self.decimal[2] == 32 else np.int64  # the raw data buffer: nulls hold junk
            if narrow and width is np.int64:
                return pa.Array.from_buffers(pa.decimal64(*self.decimal[:2]), len(chunk), chunk.buffers()[:2])
            values = np.frombuffer(chunk.buffers()[1], dtype=width, count=len(chunk)).astype(np.int64, copy=False)
            if narrow:
                data = [chunk.buffers()[0], pa.py_buffer(values)]
                return pa.Array.from_buffers(pa.decimal64(*self.decimal[:2]), len(chunk), data, chunk.null_count)
            return _decimal128(values, values >> 63, chunk, self._type())
        if self.bigint:
            return self._bigint(chunk)
        if self.ticks:
            return self._ticks(chunk)
        import pyarrow.compute as pc  # noqa: PLC0415 - ~30 ms: not for a plan (typemap imports this module)

        low, names = self._enum_names
        indices = pc.subtract(chunk.cast(pa.int32()), pa.scalar(low, pa.int32()))
        return pa.DictionaryArray.from_arrays(indices, names).cast(pa.string())

    def _bigint(self, chunk: pa.Array) -> pa.Array:
        assert self.bigint is not None
        bits, signed = self.bigint
        words = np.frombuffer(chunk.buffers()[1], dtype=np.uint64, count=len(chunk) * (bits // 64))
        words = words.reshape(len(chunk), bits // 64)
        lo, hi = words[:, 0], words[:, 1].view(np.int64)
        if signed:
            sign = hi >> 63  # 0 or -1: what every higher word must be for the value to fit 128 bits
            fits = np.all(words[:, 2:].view(np.int64) == sign[:, None], axis=1)  # all True for 128 bits
            neg = -_DEC38
            too_big = (hi > _DEC38 >> 64) | ((hi == _DEC38 >> 64) & (lo >= np.uint64(_DEC38 & (2**64 - 1))))
            too_small = (hi < neg >> 64) | ((hi == neg >> 64) & (lo <= np.uint64(neg & (2**64 - 1))))
            bad = ~fits | too_big | too_small
        else:
            fits = np.all(words[:, 2:] == 0, axis=1)
            uhi = words[:, 1]
            bad = (
                ~fits
                | (uhi > np.uint64(_DEC38 >> 64))
                | ((uhi == np.uint64(_DEC38 >> 64)) & (lo >= np.uint64(_DEC38 & (2**64 - 1))))
            )
        if chunk.null_count:
            bad &= np.asarray(chunk.is_valid())
        if bad.any():
            i = int(np.argmax(bad))
            raw = np.ascontiguousarray(words[i]).tobytes()
            raise OutOfRange(str(int.from_bytes(raw, "little", signed=signed)), "string")
        return _decimal128(lo.view(np.int64), hi, chunk, self._type())

    def _ticks(self, chunk: pa.Array) -> pa.Array:
        assert self.ticks is not None
        precision, unit = self.ticks
        ticks = np.frombuffer(chunk.buffers()[1], dtype=np.int64, count=len(chunk))
        valid = np.asarray(chunk.is_valid()) if chunk.null_count else None
        if unit == "us":
            out = ticks // 10 ** (precision - 6) if precision > 6 else ticks * 10 ** (6 - precision)
            return pa.Array.from_buffers(
                self._type(), len(chunk), [chunk.buffers()[0], pa.py_buffer(out)], chunk.null_count
            )
        factor = 10 ** (9 - precision)
        bad = np.abs(ticks) > INT64_MAX // factor
        if valid is not None:
            bad &= valid
        if bad.any():
            i = int(np.argmax(bad))
            when = dt.datetime.fromtimestamp(int(ticks[i]) // 10**precision, tz=dt.UTC).replace(tzinfo=None)
            raise OutOfRange(f"{when.isoformat()} (beyond epoch nanoseconds, 1677-09-21 .. 2262-04-11)", "timestamp")
        return pa.Array.from_buffers(
            pa.int64(), len(chunk), [chunk.buffers()[0], pa.py_buffer(ticks * factor)], chunk.null_count
        )

    @functools.cached_property
    def _enum_names(self) -> tuple[int, pa.Array]:
        """(lowest value, names indexed by value - lowest): built once, not per chunk."""
        low = min(v for v, _ in self.enum)
        names: list[str | None] = [None] * (max(v for v, _ in self.enum) - low + 1)
        for value, name in self.enum:
            names[value - low] = name
        return low, pa.array(names, pa.string())


def _whole(chunk: pa.Array) -> pa.Array:
    """The chunk with buffers of its own at offset 0 (a slice's raw buffers start before its first value)."""
    return pa.concat_arrays([chunk]) if chunk.offset else chunk


def _decimal128(lo: np.ndarray, hi: np.ndarray, chunk: pa.Array, to: pa.DataType) -> pa.Array:
    """A decimal128 array from the low and high 64 bits of each unscaled value, with the chunk's nulls."""
    wide = np.empty((len(lo), 2), dtype=np.int64)
    wide[:, 0] = lo
    wide[:, 1] = hi
    return pa.Array.from_buffers(to, len(chunk), [chunk.buffers()[0], pa.py_buffer(wide)], chunk.null_count)


def conform(batch: pa.RecordBatch | pa.Table, plans: list[ColumnMap], target: pa.Schema, table: str) -> pa.Table:
    """Name positional columns and bring them to the Iceberg table's Arrow schema: wire shapes decoded,
    the rest through Arrow's checked cast, text checked to be UTF-8. Raises ValueOutOfRange."""
    tbl = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    tbl = tbl.rename_columns([p.name for p in plans])
    fields = {f.name: f.with_type(small_type(f.type)) for f in target}
    arrays = []
    for p, column in zip(plans, tbl.columns, strict=True):
        field = fields[p.name]
        if p.wire is not None:
            try:
                column = p.wire.decode(column, field.type)
            except OutOfRange as exc:
                raise _out_of_range(table, p, exc.value, f"does not fit {field.type}", exc.fix) from None
        if pa.types.is_uint64(column.type) and pa.types.is_int64(field.type):
            column = _uint64_as_long(column)
        if not column.type.equals(field.type):
            try:
                column = checked_cast(column, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise _cast_error(table, p, column, field, exc) from None
        if _has_string(field.type) and not (p.wire is not None and p.wire.enum):  # Enum labels are ours
            _check_utf8(table, p, column)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=pa.schema([fields[p.name] for p in plans]))


def _uint64_as_long(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A UInt64 column as long without a copy when every value is below 2^63 (the same bits); a chunk with
    nulls (their slots hold anything) or a value above long stays as it is, for the checked cast and its error
    naming the value."""
    out = []
    for c in column.chunks:
        if c.null_count:
            return column
        bits = np.frombuffer(c.buffers()[1], dtype=np.int64, count=c.offset + len(c))[c.offset :]
        if len(bits) and bits.min() < 0:
            return column
        out.append(pa.Array.from_buffers(pa.int64(), len(c), [None, c.buffers()[1]], 0, c.offset))
    return pa.chunked_array(out, type=pa.int64())


def checked_cast(column: pa.ChunkedArray | pa.Array, to: pa.DataType) -> pa.ChunkedArray | pa.Array:
    """Arrow's checked cast; an integer to a decimal goes through decimal(38,0) first (Arrow refuses a
    decimal narrower than the whole integer type, whatever the values)."""
    if pa.types.is_integer(column.type) and pa.types.is_decimal(to):
        column = column.cast(pa.decimal128(38, 0), safe=True)
    return column.cast(to, safe=True)


def _has_string(t: pa.DataType) -> bool:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_string(t.value_type)
    if pa.types.is_map(t):
        return _has_string(t.key_type) or _has_string(t.item_type)
    if pa.types.is_struct(t):
        return any(_has_string(t.field(i).type) for i in range(t.num_fields))
    return False


def _check_utf8(table: str, p: ColumnMap, column: pa.ChunkedArray) -> None:
    """ClickHouse Strings are bytes; Iceberg strings are UTF-8, and bytes that are not land in a file no
    reader can read back (or stop the statistics step). Refuse them, naming the first such value."""
    try:
        column.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    top = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    sample = ""
    if top:
        for i, v in enumerate(column.cast(pa.binary()).to_pylist()):
            if v is not None and not _is_utf8(v):
                sample = f" (row {i} of this read: {v[:40]!r})"
                break
    fix = (
        f'map it to bytes: column_types = {{ {_col(p.name)} = "binary" }} (needs a new target table if one '
        f"exists), or convert it in ClickHouse and offload a view"
        if top
        else "leave it out with columns = [...], or convert its strings in ClickHouse (e.g. base64Encode) and "
        "offload a view"
    )
    raise ValueOutOfRange(
        f"{table}.{p.name} ({p.source_type}) holds bytes that are not UTF-8{sample}; Iceberg "
        f"strings are UTF-8; nothing was written",
        fix,
    )


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def small_type(t: pa.DataType) -> pa.DataType:
    """pyiceberg's schema asks for large_string/large_binary/large_list; the plain ones write the same
    Parquet and Iceberg types, and ClickHouse sends plain ones, so casting them would only copy."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(small_type(t.value_type)))
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(small_type(t.key_type)), t.item_field.with_type(small_type(t.item_type)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(small_type(t.field(i).type)) for i in range(t.num_fields)])
    return t


def file_schema(target: pa.Schema) -> pa.Schema:
    """The Arrow schema data files are written from: `target` with every top-level decimal of precision <= 18
    as decimal64. Parquet stores those as INT64 either way (datafiles writes decimals as integers); decimal64
    is that integer in Arrow, so a Decimal(P <= 18) goes from ClickHouse's buffer to the file without
    widening to 128 bits and narrowing back."""
    return pa.schema(
        [
            f.with_type(pa.decimal64(f.type.precision, f.type.scale))
            if pa.types.is_decimal128(f.type) and f.type.precision <= 18
            else f
            for f in target
        ],
        metadata=target.metadata,
    )


def _col(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else json.dumps(name, ensure_ascii=False)


def _out_of_range(table: str, p: ColumnMap, value: str, why: str, opt_in: str) -> ValueOutOfRange:
    opt = f'column_types = {{ {_col(p.name)} = "{opt_in}" }}'
    return ValueOutOfRange(
        f"{table}.{p.name} ({p.source_type}{', opt-in ' + repr(p.override) if p.override else ''})"
        f" holds {value}, which {why}; nothing was written",
        f"map it exactly with {opt} in the [[tables]] entry (needs a new target table if one "
        f"exists), or leave it out with columns = [...]",
    )


def _first_bad(column: pa.ChunkedArray, to: pa.DataType) -> object:
    """The first value of `column` the checked cast to `to` refuses (bisecting: a cast per halving)."""
    arr = column.combine_chunks()
    while len(arr) > 1:
        half = arr.slice(0, len(arr) // 2)
        try:
            checked_cast(half, to)
            arr = arr.slice(len(arr) // 2)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            arr = half
    return arr[0].as_py() if len(arr) else None


def _cast_error(table: str, p: ColumnMap, column: pa.ChunkedArray, field: pa.Field, exc: Exception) -> Exception:
    import pyarrow.compute as pc  # noqa: PLC0415 - see Wire._decode

    flat = column
    while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type):
        flat = pc.list_flatten(flat)
    if pa.types.is_unsigned_integer(flat.type) and not p.override:
        biggest = pc.max(flat).as_py()
        if biggest is not None and biggest > INT64_MAX:
            return ValueOutOfRange(
                f"{table}.{p.name} ({p.source_type}) holds {biggest}, above Iceberg long's maximum {INT64_MAX}; "
                f"nothing was written",
                f"map it to a decimal in the [[tables]] entry: column_types = {{ {_col(p.name)} = "
                f'"decimal(20,0)" }} (needs a new target table if one exists)',
            )
    if pa.types.is_list(column.type) or pa.types.is_map(column.type) or pa.types.is_struct(column.type):
        return ValueOutOfRange(
            f"{table}.{p.name} ({p.source_type}) cannot be written as {field.type}: {exc}",
            "leave it out with columns = [...], or convert it in ClickHouse and offload a view",
        )
    bad = _first_bad(column, field.type)
    return _out_of_range(table, p, str(bad), f"does not fit {field.type} exactly ({exc})", "string")
