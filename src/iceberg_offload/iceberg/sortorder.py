"""The sort order a table declares and the one each data file claims. A file claims the table's order only
when it was written sorted by it: the order's columns (identity, ascending) are a prefix of the columns the
writer sorted by. Readers (Spark, Trino) then skip sorting and merge sorted files."""

from __future__ import annotations

from collections.abc import Sequence

from pyiceberg.schema import Schema
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import IdentityTransform


def sort_order(schema: Schema, columns: Sequence[str]) -> SortOrder:
    """Ascending by `columns` (none: unsorted). Nulls last, as ClickHouse sorts them."""
    if not columns:
        return UNSORTED_SORT_ORDER
    return SortOrder(
        *(
            SortField(schema.find_field(c).field_id, IdentityTransform(), SortDirection.ASC, NullOrder.NULLS_LAST)
            for c in columns
        )
    )


def declared(metadata: TableMetadata) -> list[str] | None:
    """The columns of the table's sort order when it is plain (identity, ascending); None otherwise."""
    order = metadata.sort_order_by_id(metadata.default_sort_order_id)
    if order is None or not order.fields:
        return []
    schema = metadata.schema()
    out = []
    for f in order.fields:
        if not isinstance(f.transform, IdentityTransform) or f.direction != SortDirection.ASC:
            return None
        name = schema.find_column_name(f.source_id)
        if name is None:
            return None
        out.append(name)
    return out


def claimed_order_id(metadata: TableMetadata, sorted_by: Sequence[str]) -> int | None:
    """The sort order id a file sorted by `sorted_by` may claim: the table's, when the file is sorted by it;
    else None (unknown order)."""
    cols = declared(metadata)
    if not cols or list(sorted_by[: len(cols)]) != cols:
        return None
    return metadata.default_sort_order_id
