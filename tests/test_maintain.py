"""Maintenance on real tables: compaction, snapshot expiry and orphan-file removal keep every row and the
watermark, lose no race against an offload, and delete only what nothing references."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.table.update import RemoveSnapshotsUpdate

from conftest import TRADES_DDL, clickhouse, cold, insert_trades, keys_of, sink_for, trades_table
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.errors import CommitConflict
from iceberg_offload.maintenance import compact as compact_mod
from iceberg_offload.maintenance.compact import compact
from iceberg_offload.maintenance.expire import expire
from iceberg_offload.maintenance.orphans import orphans, referenced_files

START_MS = (int(time.time()) - 6 * 3600) // 3600 * 3600 * 1000  # on the hour: partitions are predictable
DAY = 86400


def _offloaded(make_settings, rows: int, per_commit: int, partition_by: str = "day", step_ms: int = 1000):
    """A table filled by rows // per_commit offload commits (one or more small files each)."""
    s = make_settings([trades_table(partition_by=partition_by)], max_rows_per_commit=per_commit)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, rows, step_ms=step_ms)
    res = run_cycle(s).tables[0]
    assert (res.status, res.rows, res.commits) == ("ok", rows, rows // per_commit), res.error
    return s, s.tables[0], sink_for(s)


def _more(s, start_row: int, count: int, step_ms: int = 1000) -> None:
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + start_row * step_ms, count, seq0=start_row, step_ms=step_ms)


def _exactly_once(s, n: int) -> None:
    seqs = cold(s, "trades").column("seq")
    assert len(seqs) == n and pc.count_distinct(seqs).as_py() == n, f"{len(seqs)} rows, want {n} distinct"


def _files_on_disk(sink, suffix: str = "") -> set[str]:
    loc = sink.load("trades").location().removeprefix("file://")
    return {str(p) for p in Path(loc).rglob(f"*{suffix}") if p.is_file()}


def _data_files(sink) -> list:
    return [t.file for t in sink.load("trades").scan().plan_files()]


def test_compaction_rewrites_40_small_files_into_one_per_partition(make_settings):
    s, cfg, sink = _offloaded(make_settings, 400, 10, partition_by="hour", step_ms=27_000)  # 3 hours of rows
    table = sink.load("trades")
    keys_before = sorted(keys_of(table.scan().to_arrow(), "ts", "seq"))
    wm_before, last_before = sink.watermark(table)
    files_before = _data_files(sink)
    partitions = {str(f.partition) for f in files_before}
    assert len(files_before) >= 40 and len(partitions) == 3

    preview = compact(s, cfg, sink, apply=False, min_files=5)
    assert not preview.applied and preview.files_rewritten == len(files_before) and preview.rows_rewritten == 400
    assert sink.load("trades").current_snapshot().snapshot_id == table.current_snapshot().snapshot_id
    assert len(_data_files(sink)) == len(files_before)

    done = compact(s, cfg, sink, apply=True, min_files=5)
    assert done.applied and done.status == "ok" and done.files_written == len(partitions)
    after = sink.load("trades")
    files_after = _data_files(sink)
    assert len(files_after) == done.data_files_after == len(partitions)  # one file per partition
    assert {str(f.partition) for f in files_after} == partitions
    assert sorted(keys_of(after.scan().to_arrow(), "ts", "seq")) == keys_before
    head = sink.history(after)[0]
    assert head.operation == "replace" and head.props["offload.operation"] == "compact"
    assert head.props["offload.compact.files-removed"] == str(len(files_before))
    wm_after, last_after = sink.watermark(after)
    assert wm_after == wm_before and last_after.snapshot_id == head.snapshot_id  # carried by the compaction
    assert last_after.totals == last_before.totals == (400, 40)
    assert after.current_snapshot().summary["total-records"] == "400"
    # nothing small is left in quantity: a second run has nothing to do
    assert compact(s, cfg, sink, apply=True, min_files=5).status == "nothing_to_do"
    # the next offload continues after the carried watermark, with the totals counted on
    _more(s, 400, 50, step_ms=27_000)
    res = run_cycle(s).tables[0]
    assert (res.status, res.rows, res.commits) == ("ok", 50, 5)
    _exactly_once(s, 450)
    assert sink.watermark(sink.load("trades"))[1].totals == (450, 45)


def test_compaction_leaves_partitions_with_few_small_files_alone(make_settings):
    s, cfg, sink = _offloaded(make_settings, 40, 10)
    assert compact(s, cfg, sink, apply=True, min_files=5).status == "nothing_to_do"
    assert len(_data_files(sink)) == 4
    # files at or above 3/4 of the target are not small
    assert compact(s, cfg, sink, apply=True, min_files=2, target_file_bytes=1000).status == "nothing_to_do"
    assert compact(s, cfg, sink, apply=True, min_files=2).files_written == 1
    _exactly_once(s, 40)


def test_offload_committing_during_compaction_wins_and_nothing_is_lost(make_settings, monkeypatch):
    s, cfg, sink = _offloaded(make_settings, 300, 10)
    _more(s, 300, 200)
    original = compact_mod.CasTransaction.commit_transaction
    raced: list[object] = []

    def offload_first(txn):
        # compaction has read the table and written its files; a real offload commits before it does
        if any(isinstance(p, compact_mod._Replace) for p in txn._snapshot_producers) and not raced:
            raced.append(run_cycle(s).tables[0])
        return original(txn)

    monkeypatch.setattr(compact_mod.CasTransaction, "commit_transaction", offload_first)
    parquet_before = _files_on_disk(sink, ".parquet")
    with pytest.raises(CommitConflict, match="nothing changed") as err:
        compact(s, cfg, sink, apply=True)
    assert err.value.transient and "again" in err.value.fix
    monkeypatch.undo()
    (res,) = raced
    assert (res.status, res.rows) == ("ok", 200), res.error
    table = sink.load("trades")
    assert sink.history(table)[0].operation == "append"  # the offload's commit is the head
    _exactly_once(s, 500)
    # the compacted file was deleted: what is on disk is the old files plus the offload's, all referenced
    assert _files_on_disk(sink, ".parquet") == parquet_before | {
        f.file_path.removeprefix("file://") for f in _data_files(sink)
    }
    leftovers = orphans(s, cfg, sink, apply=False, older_than_seconds=0)
    assert leftovers.orphans == [], leftovers.orphans
    wm = sink.watermark(table)[0]
    # retried, it compacts the 50 files including the offload's, and the watermark stays the offload's
    again = compact(s, cfg, sink, apply=True)
    assert again.applied and again.files_rewritten == 50 and len(_data_files(sink)) == 1
    assert sink.watermark(sink.load("trades"))[0] == wm
    _exactly_once(s, 500)


def test_expiry_keeps_the_last_n_and_works_after_a_compaction(make_settings):
    s, cfg, sink = _offloaded(make_settings, 200, 10)
    table = sink.load("trades")
    newest = [c.snapshot_id for c in sink.history(table)]
    assert len(newest) == 20
    assert expire(s, cfg, sink, apply=True, older_than_seconds=3600).status == "nothing_to_do"  # all too young
    preview = expire(s, cfg, sink, apply=False, older_than_seconds=0, keep_last=5)
    assert not preview.applied and preview.expired == newest[5:]
    assert len(sink.load("trades").metadata.snapshots) == 20
    done = expire(s, cfg, sink, apply=True, older_than_seconds=0, keep_last=5)
    assert done.applied and done.snapshots_after == 5
    assert [c.snapshot_id for c in sink.history(sink.load("trades"))] == newest[:5]
    wm = sink.watermark(table)[0]

    compact(s, cfg, sink, apply=True)
    done = expire(s, cfg, sink, apply=True, older_than_seconds=0, keep_last=1)
    assert done.snapshots_after == 1 and done.kept_for_watermark == 0
    table = sink.load("trades")
    (only,) = sink.history(table)
    assert only.operation == "replace" and sink.watermark(table) == (wm, only) and only.totals == (200, 20)
    _exactly_once(s, 200)
    _more(s, 200, 30)
    res = run_cycle(s).tables[0]
    assert (res.status, res.rows, res.watermark_before) == ("ok", 30, wm.as_dict())
    _exactly_once(s, 230)


def test_expiry_never_drops_the_snapshot_holding_the_watermark(make_settings):
    s, cfg, sink = _offloaded(make_settings, 50, 10)
    table = sink.load("trades")
    wm, wm_commit = sink.watermark(table)
    for _ in range(3):  # commits that carry no watermark
        table, _rows = sink.commit(table, iter(()), {}, time.monotonic())
    history = [c.snapshot_id for c in sink.history(table)]
    assert history[3] == wm_commit.snapshot_id
    done = expire(s, cfg, sink, apply=True, older_than_seconds=0, keep_last=1)
    assert done.watermark_snapshot_id == wm_commit.snapshot_id and done.kept_for_watermark == 3
    assert done.expired == history[4:] and done.snapshots_after == 4
    table = sink.load("trades")
    assert sink.watermark(table) == (wm, wm_commit)
    _exactly_once(s, 50)
    _more(s, 50, 20)
    res = run_cycle(s).tables[0]
    assert (res.status, res.rows, res.watermark_before) == ("ok", 20, wm.as_dict())
    _exactly_once(s, 70)


def test_expiry_racing_an_offload_is_refused_and_expires_nothing(make_settings, monkeypatch):
    s, cfg, sink = _offloaded(make_settings, 100, 10)
    _more(s, 100, 20)
    original = compact_mod.CasTransaction.commit_transaction
    raced: list[object] = []

    def offload_first(txn):
        if any(isinstance(u, RemoveSnapshotsUpdate) for u in txn._updates) and not raced:
            raced.append(run_cycle(s).tables[0])
        return original(txn)

    monkeypatch.setattr(compact_mod.CasTransaction, "commit_transaction", offload_first)
    with pytest.raises(CommitConflict, match="nothing was expired"):
        expire(s, cfg, sink, apply=True, older_than_seconds=0, keep_last=1)
    monkeypatch.undo()
    assert raced[0].rows == 20 and len(sink.load("trades").metadata.snapshots) == 12
    done = expire(s, cfg, sink, apply=True, older_than_seconds=0, keep_last=1)
    assert done.snapshots_after == 1
    table = sink.load("trades")
    assert sink.watermark(table)[0].seq == 119 and sink.watermark(table)[1].totals == (120, 12)
    _exactly_once(s, 120)


def _age(paths, seconds: float) -> None:
    stamp = time.time() - seconds
    for p in paths:
        os.utime(p, (stamp, stamp))


def test_orphan_removal_deletes_only_old_unreferenced_files(make_settings):
    s, cfg, sink = _offloaded(make_settings, 200, 10)
    compact(s, cfg, sink, apply=True)
    expire(s, cfg, sink, apply=True, older_than_seconds=0, keep_last=1)
    table = sink.load("trades")
    rows = sorted(keys_of(table.scan().to_arrow(), "ts", "seq"))
    # a killed offload: Parquet written into the data folder like the sink does, never committed
    sample = table.scan().to_arrow().slice(0, 5).cast(table.schema().as_arrow())
    uncommitted = [
        f.file_path.removeprefix("file://")
        for _ in range(2)
        for f in _dataframe_to_data_files(table.metadata, sample, table.io)
    ]
    old_orphan, young_orphan = uncommitted
    _age(_files_on_disk(sink) - {young_orphan}, 10 * DAY)  # everything old but the young orphan
    on_disk = _files_on_disk(sink)
    referenced = {p for p in on_disk if p in referenced_files(table)}
    replaced = {p for p in on_disk if p.endswith(".parquet")} - referenced - set(uncommitted)
    assert len(replaced) == 20 and len(referenced & {p for p in on_disk if p.endswith(".parquet")}) == 1

    preview = orphans(s, cfg, sink, apply=False)
    found = {o["path"] for o in preview.orphans}
    assert old_orphan in found and young_orphan not in found and replaced <= found and not found & referenced
    assert preview.too_young == 1 and preview.deleted == 0 and _files_on_disk(sink) == on_disk

    done = orphans(s, cfg, sink, apply=True)
    assert done.applied and done.deleted == len(found)
    left = _files_on_disk(sink)
    assert left == on_disk - found and referenced <= left and young_orphan in left and old_orphan not in left
    assert sorted(keys_of(cold(s, "trades"), "ts", "seq")) == rows
    assert orphans(s, cfg, sink, apply=True).status == "nothing_to_do"  # the young one is still too young
    _age([young_orphan], 4 * DAY)
    assert [o["path"] for o in orphans(s, cfg, sink, apply=True).orphans] == [young_orphan]
    _more(s, 200, 10)
    assert run_cycle(s).tables[0].rows == 10
    _exactly_once(s, 210)
