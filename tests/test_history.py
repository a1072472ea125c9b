"""Scale in history: what a commit and a watermark read cost must not grow with every snapshot kept, and
`doctor` warns when a table keeps too many (expiry not running). A real SQLite catalog and local warehouse,
commits through `Sink.commit`; no ClickHouse."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.table.metadata import TableMetadataV2
from pyiceberg.types import LongType, NestedField, TimestampType

from conftest import sink_for, trades_table
from iceberg_offload import names
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.ops.doctor_engine import check_history

FIELDS = [NestedField(1, "ts", TimestampType(), required=True), NestedField(2, "seq", LongType(), required=True)]
DAY_US = 86400 * 10**6


def _history(sink: Sink, commits: int, target: str = "trades") -> None:
    """`commits` offload-shaped commits of one row each, a day apart."""
    table = sink.ensure_table(target, FIELDS, "day", "ts", True)
    schema = table.schema().as_arrow()
    for i in range(commits):
        chunk = pa.Table.from_arrays(
            [pa.array([i * DAY_US], pa.timestamp("us")), pa.array([i], pa.int64())], schema=schema
        )
        props = {names.WATERMARK_TS_NS: str(i * DAY_US * 1000), names.WATERMARK_SEQ: str(i), names.COMMIT_ID: f"r/{i}"}
        table, _ = sink.commit(table, [chunk], props, 0.0)


@pytest.fixture
def history(make_settings):
    settings = make_settings([trades_table()])
    sink = sink_for(settings)
    _history(sink, 12)
    return settings, sink


def test_the_watermark_read_and_the_history_walk_scan_the_snapshots_once(history, monkeypatch):
    settings, sink = history
    table = sink.load("trades")
    assert table is not None and len(table.metadata.snapshots) == 12
    lookups = []
    by_id = TableMetadataV2.snapshot_by_id
    monkeypatch.setattr(TableMetadataV2, "snapshot_by_id", lambda self, sid: lookups.append(sid) or by_id(self, sid))

    wm, commit = sink.watermark(table)
    assert wm is not None and wm.seq == 11 and commit is not None and commit.props[names.COMMIT_ID] == "r/11"
    assert len(lookups) <= 1, lookups  # the current snapshot: the head carries the watermark

    lookups.clear()
    chain = sink.history(table)
    assert [c.props[names.COMMIT_ID] for c in chain] == [f"r/{i}" for i in range(11, -1, -1)]
    assert len(lookups) <= 1, lookups  # was one full scan of the snapshot list per snapshot: O(snapshots²)
    found = sink.find_commit("trades", "r/0")  # the oldest: the whole chain, once
    assert found is not None and found.parent_snapshot_id is None


def test_a_commit_copies_the_table_metadata_at_most_twice(history, monkeypatch):
    """pyiceberg's transaction rebuilt (deep-copied) the whole metadata, O(snapshots), ~17 times an append."""
    settings, sink = history
    copies = []
    deep = TableMetadataV2.__deepcopy__
    monkeypatch.setattr(TableMetadataV2, "__deepcopy__", lambda self, memo=None: copies.append(1) or deep(self, memo))
    _history(sink, 1)
    assert 1 <= len(copies) <= 2, len(copies)  # ours once the snapshot is staged, the catalog's once


def test_doctor_warns_beyond_warn_snapshots_naming_the_table_and_the_fix(history):
    settings, sink = history
    (check,) = check_history(settings)
    assert check.status == "ok" and "at most 12 snapshots in a table (trades" in check.saw, check

    low = settings.model_copy(update={"maintenance": settings.maintenance.model_copy(update={"warn_snapshots": 10})})
    (check,) = check_history(low)
    assert check.status == "warn" and "trades: 12 snapshots, metadata file" in check.saw, check
    assert "warn_snapshots = 10" in check.saw
    assert check.fix.startswith("iceberg-offload maintain expire --table trades --yes"), check.fix
    assert names.MAINT in check.fix
