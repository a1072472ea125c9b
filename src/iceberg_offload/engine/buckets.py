"""One page of both tiers compared per hour bucket: per key, how many rows each tier holds, exactly as
multisets (sorted sequences compared first; where they differ, one Arrow group-by and one join; no checksum
that equal-looking buckets could fool); with values, every column of every row."""

from __future__ import annotations

import contextlib
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iceberg_offload.clickhouse.window import NS
from iceberg_offload.times import utc

HOUR = 3600


@dataclass
class Bucket:
    """One hour of one table in both tiers, compared as multisets: per key, how many rows each tier holds
    (keys need not be unique: a late row at a timestamp cold already holds is a missing row)."""

    start: int  # epoch seconds of the hour
    hot: int = 0
    cold: int = 0
    missing: int = 0  # rows hot has (up to the watermark) beyond cold's copies of their key
    duplicates: int = 0  # rows cold has beyond hot's copies of a key hot has
    extra: int = 0  # rows of keys cold has and hot lacks (expired, deleted from hot, or not this table's)
    changed: int = 0  # rows whose key both tiers hold as often but whose values differ (values mode)
    aging: bool = False  # the hot tier's oldest hour on a table with a TTL: it may have begun deleting it

    @property
    def bad(self) -> bool:
        return self.missing > 0 or self.duplicates > 0 or self.changed > 0 or (self.extra > 0 and not self.aging)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": utc(self.start * NS),
            "bucket_ns": self.start * NS,
            "hot": self.hot,
            "cold": self.cold,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "changed": self.changed,
            "extra": self.extra,
        }


def _hour_of(col: pa.ChunkedArray) -> pa.Array:
    """Epoch seconds of the hour each timestamp falls in (timestamps, or epoch-ns longs), floored."""
    if pa.types.is_timestamp(col.type):
        micros = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        return pc.divide(pc.subtract(micros, pc.modulo(micros, 1_000_000 * HOUR)), 1_000_000).combine_chunks()
    return pc.divide(pc.subtract(col, pc.modulo(col, NS * HOUR)), NS).combine_chunks()


def compare_page(hot: pa.Table, cold: pa.Table, keys: list[str], ts: str) -> Iterator[Bucket]:
    """The page's buckets: per hour and key, the rows each tier holds, joined; oldest hour first. When both
    tiers' keys, sorted, are the same sequence (the usual case), their multisets are equal: no join."""
    if _same_rows(hot.select(dict.fromkeys([ts, *keys])), cold.select(dict.fromkeys([ts, *keys]))):
        counts = pc.value_counts(_hour_of(hot.column(ts)))
        pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
        for start, n in sorted(pairs):
            yield Bucket(int(start), int(n), int(n))
        return
    tiers = [
        pa.table([_hour_of(t.column(ts)), *(t.column(k) for k in keys)], names=["__h", *keys]) for t in (hot, cold)
    ]
    try:
        # a join never matches NULL with NULL: group and join on the value with NULLs filled, and a flag
        by = ["__h", *keys, *(f"__null_{k}" for k in keys)]
        counts = [
            pa.table(
                [t.column("__h"), *(c for k in keys for c in _null_free(t.column(k)))],
                names=["__h", *(n for k in keys for n in (k, f"__null_{k}"))],
            )
            .group_by(by)
            .aggregate([([], "count_all")])
            for t in tiers
        ]
        joined = counts[0].join(counts[1], keys=by, join_type="full outer", right_suffix="_cold")
        h = pc.fill_null(joined.column("count_all"), 0)
        c = pc.fill_null(joined.column("count_all_cold"), 0)
        hours = joined.column("__h")
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):  # key types Arrow cannot group
        hours, h, c = _counted_in_python(tiers, keys)
    zero = pa.scalar(0, pa.int64())
    per_key = pa.table(
        {
            "__h": hours,
            "h": h,
            "c": c,
            "missing": pc.max_element_wise(pc.subtract(h, c), zero),
            "dups": pc.if_else(pc.greater(h, 0), pc.max_element_wise(pc.subtract(c, h), zero), zero),
            "extra": pc.if_else(pc.equal(h, 0), c, zero),
        }
    )
    per_hour = per_key.group_by("__h").aggregate([(n, "sum") for n in ("h", "c", "missing", "dups", "extra")])
    cols = [per_hour.column(n).to_pylist() for n in ("__h", "h_sum", "c_sum", "missing_sum", "dups_sum", "extra_sum")]
    for start, nh, nc, miss, dups, extra in sorted(zip(*cols, strict=True)):
        yield Bucket(int(start), int(nh), int(nc), int(miss), int(dups), int(extra))


def by_hour(tbl: pa.Table, ts: str) -> dict[int, pa.Table]:
    """The table split by hour of `ts` (one sort, then slices), for per-bucket work without a filter each."""
    if tbl.num_rows == 0:
        return {}
    hours = _hour_of(tbl.column(ts))
    order = pc.sort_indices(hours)
    tbl, hours = tbl.take(order), hours.take(order)
    values = np.asarray(hours)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    return {int(values[a]): tbl.slice(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)}


def _null_free(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """(the column with NULLs filled by a fixed value of its type, whether each was NULL), extension types
    (uuid) by their storage: what Arrow's group-by and join can match exactly."""
    if isinstance(col.type, pa.ExtensionType):
        col = pa.chunked_array([c.storage for c in col.chunks], type=col.type.storage_type)
    flag = pc.is_null(col)
    if col.null_count == 0:
        return col, flag
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        fill = pa.scalar("", t)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        fill = pa.scalar(b"", t)
    elif pa.types.is_fixed_size_binary(t):
        fill = pa.scalar(b"\0" * t.byte_width, t)
    elif pa.types.is_boolean(t):
        fill = pa.scalar(False)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_temporal(t):
        fill = pa.scalar(0, pa.int64()).cast(t) if not pa.types.is_floating(t) else pa.scalar(0.0, t)
    else:
        raise pa.ArrowNotImplementedError(f"no fill value for {t}")
    return pc.fill_null(col, fill), flag


def _counted_in_python(tiers: list[pa.Table], keys: list[str]) -> tuple[pa.Array, pa.Array, pa.Array]:
    hot, cold = (Counter(_tuples(t, ["__h", *keys])) for t in tiers)
    every = list(hot.keys() | cold.keys())
    return (
        pa.array([k[0] for k in every], pa.int64()),
        pa.array([hot[k] for k in every], pa.int64()),
        pa.array([cold[k] for k in every], pa.int64()),
    )


def diff_values(b: Bucket, hot: pa.Table, cold: pa.Table) -> None:
    """b.changed: rows whose key both tiers hold equally often, but not with the same values."""
    if _same_rows(hot, cold):
        return
    hot_r, cold_r = Counter(_tuples(hot, hot.column_names)), Counter(_tuples(cold, cold.column_names))
    b.changed = max(0, sum((hot_r - cold_r).values()) - b.missing)


def _same_rows(hot: pa.Table, cold: pa.Table) -> bool:
    """Quick check: equal after sorting by every sortable column (a False is confirmed row by row)."""
    if hot.num_rows != cold.num_rows:
        return False
    order = [
        (f.name, "ascending")
        for f in hot.schema
        if not (pa.types.is_nested(f.type) or pa.types.is_dictionary(f.type) or isinstance(f.type, pa.ExtensionType))
    ]
    with contextlib.suppress(pa.ArrowNotImplementedError, pa.ArrowTypeError):  # unsortable: row by row
        return bool(hot.sort_by(order).equals(cold.sort_by(order)))
    return False


def _tuples(tbl: pa.Table, names: list[str]) -> Iterator[tuple[Any, ...]]:
    cols = [[_hashable(v) for v in tbl.column(n).to_pylist()] for n in names]
    return zip(*cols, strict=True)


def _hashable(v: Any) -> Any:
    """A value as an exact, hashable key: floats by their bits (NaN equals NaN), lists and structs as tuples."""
    if isinstance(v, float):
        return ("f", struct.pack("<d", v))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _hashable(x)) for k, x in v.items())
    if isinstance(v, tuple):
        return tuple(_hashable(x) for x in v)
    return v
