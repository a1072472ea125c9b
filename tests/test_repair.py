"""Reconcile and repair: late rows and duplicates replaced from the hot tier in one commit that keeps the
watermark; buckets the hot tier no longer holds completely are never touched; a racing offload wins."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import TRADES_DDL, clickhouse, cold, insert_trades, keys_of, sink_for, trades_table
from iceberg_offload.engine import repair
from iceberg_offload.engine.compare import verify
from iceberg_offload.engine.offload import offload_table, run_cycle
from iceberg_offload.engine.repair import reconcile

H = 3600 * 1000
HOUR0_MS = (int(time.time()) // 3600 - 6) * H  # five full hours of data, h0 .. h4, the newest ending an hour ago
TTL = " TTL toDateTime(ts) + INTERVAL 7 DAY"


def _setup(make_settings, rows: int = 5000, step_ms: int = 3600, partition_by: str = "day"):
    s = make_settings([trades_table(partition_by=partition_by)], max_rows_per_commit=2000)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades") + TTL)
        insert_trades(ch, "trades", HOUR0_MS, rows, step_ms=step_ms)
    assert run_cycle(s).tables[0].rows == rows
    return s


def _reconcile(s, apply: bool, **kw):
    with clickhouse(s) as ch:
        return reconcile(s, s.tables[0], ch, sink_for(s), apply, **kw)


def _state(s):
    sink = sink_for(s)
    table = sink.load("trades")
    return table.current_snapshot().snapshot_id, sink.watermark(table)[0]


def _per_hour(s) -> dict[int, int]:
    ts = pc.cast(pc.cast(cold(s, "trades").column("ts"), pa.timestamp("ms", tz="UTC")), pa.int64())
    vc = pc.value_counts(pc.divide(pc.subtract(ts, HOUR0_MS), H))
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))


def _late(ch, hour: int, n: int, seq0: int) -> None:
    insert_trades(ch, "trades", HOUR0_MS + hour * H + 1700, n, seq0=seq0, step_ms=1000)


@pytest.mark.parametrize("partition_by", ["day", "hour", "none"])
def test_late_rows_are_found_previewed_and_repaired_keeping_the_watermark(make_settings, partition_by):
    s = _setup(make_settings, partition_by=partition_by)
    with clickhouse(s) as ch:
        _late(ch, 2, 5, 100_000)
        _late(ch, 3, 2, 200_000)
    before = _state(s)
    v = verify(s)[0]
    assert (v.missing, v.duplicates, len(v.buckets_bad)) == (7, 0, 2)

    preview = _reconcile(s, apply=False)
    assert preview.ok and not preview.applied, preview.error
    assert (preview.buckets_compared, preview.buckets_missing, preview.buckets_repaired) == (5, 2, 2)
    assert (preview.rows_missing, preview.rows_added, preview.duplicate_rows_removed) == (7, 7, 0)
    assert [b["action"] for b in preview.buckets] == ["repair", "repair"]
    assert _state(s) == before and cold(s, "trades").num_rows == 5000  # preview changed nothing

    done = _reconcile(s, apply=True)
    assert done.ok and done.applied, done.error
    assert (done.buckets_repaired, done.rows_added, done.rows_written) == (2, 7, 2000 + 7)
    snap, wm = _state(s)
    assert wm == before[1] and snap == done.snapshot_id != before[0]
    v = verify(s)[0]
    assert v.ok and (v.missing, v.duplicates, v.buckets_bad) == (0, 0, [])
    seqs = cold(s, "trades").column("seq")
    assert len(seqs) == pc.count_distinct(seqs).as_py() == 5007

    history = sink_for(s).history(sink_for(s).load("trades"))
    head = history[0].props
    assert head["offload.operation"] == "repair" and head["offload.repair.rows-added"] == "7"
    assert head["offload.watermark.ts-ns"] == str(before[1].ts_ns) and head["offload.watermark.seq"] == "4999"
    assert history[0].totals == (5007, 3)  # rows now in cold; commits count offloads only
    assert _reconcile(s, apply=True).buckets_repaired == 0  # nothing left to do

    with clickhouse(s) as ch:  # offloads continue from the unchanged watermark
        insert_trades(ch, "trades", HOUR0_MS + 5 * H, 10, seq0=5000, step_ms=1000)
    assert run_cycle(s).tables[0].rows == 10
    assert cold(s, "trades").num_rows == 5017 and verify(s)[0].ok


def test_duplicates_in_cold_are_replaced_by_one_copy(make_settings):
    s = _setup(make_settings)
    table = sink_for(s).load("trades")
    rows = cold(s, "trades").sort_by("seq")
    table.append(pa.concat_tables([rows.slice(1500, 3), rows.slice(3500, 4)]))  # hours 1 and 3, written twice
    v = verify(s)[0]
    assert (v.missing, v.duplicates, len(v.buckets_bad)) == (0, 7, 2)
    wm = _state(s)[1]
    done = _reconcile(s, apply=True)
    assert done.ok and done.applied, done.error
    assert (done.buckets_duplicates, done.buckets_repaired, done.duplicate_rows_removed, done.rows_added) == (
        2,
        2,
        7,
        0,
    )
    assert _state(s)[1] == wm and verify(s)[0].ok
    assert sorted(keys_of(cold(s, "trades"), "seq")) == [(i,) for i in range(5000)]


def test_buckets_the_hot_tier_no_longer_holds_completely_are_never_replaced(make_settings):
    s = _setup(make_settings)
    table = sink_for(s).load("trades")
    rows = cold(s, "trades").sort_by("seq")
    table.append(rows.slice(1600, 2))  # duplicates in h1, of keys hot still holds
    with clickhouse(s) as ch:
        # the hot tier lost h0 and half of h1: h1 is its oldest, partly expired hour
        ch.command(
            f"ALTER TABLE k2.trades DELETE WHERE ts < fromUnixTimestamp64Milli({HOUR0_MS + H + H // 2}) "
            f"SETTINGS mutations_sync = 2"
        )
        ch.command("ALTER TABLE k2.trades DELETE WHERE seq IN (3100, 3101, 3102) SETTINGS mutations_sync = 2")
        _late(ch, 2, 4, 100_000)  # h2: late rows, but its TTL runs out within the margin below
        _late(ch, 3, 3, 200_000)  # h3: late rows, but hot lost three keys cold holds
        _late(ch, 4, 2, 300_000)  # h4: late rows, safe to repair
    hours_before = _per_hour(s)
    h2_start_s = (HOUR0_MS + 2 * H) // 1000
    margin = 7 * 86400 - (int(time.time()) - h2_start_s) + 60  # h2's first instant expires within the margin
    done = _reconcile(s, apply=True, ttl_margin_seconds=margin)
    assert done.ok, done.error
    actions = {b["bucket"][11:13]: b["action"] for b in done.buckets}
    hour = [time.strftime("%H", time.gmtime((HOUR0_MS + i * H) / 1000)) for i in range(5)]
    assert actions == {hour[1]: "skipped_ttl", hour[2]: "skipped_ttl", hour[3]: "skipped_cold_ahead", hour[4]: "repair"}
    assert (done.buckets_skipped_ttl, done.buckets_skipped_cold_ahead, done.buckets_repaired) == (2, 1, 1)
    after = _per_hour(s)
    assert after == {**hours_before, 4: hours_before[4] + 2}  # only h4 changed: cold never shrank
    assert after[0] == 1000 and after[1] == 1002


def _referenced(table) -> set[str]:
    out = set()
    for snap in table.metadata.snapshots:
        for manifest in snap.manifests(table.io):
            out |= {e.data_file.file_path.removeprefix("file://") for e in manifest.fetch_manifest_entry(table.io)}
    return out


def test_an_offload_racing_the_repair_commit_wins_and_the_repair_writes_nothing(make_settings, monkeypatch):
    s = make_settings([trades_table()])
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", HOUR0_MS, 3000, step_ms=3600)  # h0 .. h2
    run_cycle(s)
    with clickhouse(s) as ch:
        _late(ch, 1, 5, 100_000)  # late rows behind the watermark
        insert_trades(ch, "trades", HOUR0_MS + 3 * H, 500, seq0=3000, step_ms=3600)  # new rows, not offloaded yet
    original = repair._replace
    raced = []

    no_sweep = s.model_copy(update={"offload": s.offload.model_copy(update={"late_lookback_seconds": 0})})

    def offload_first(sink, source, *args):  # between the plan and the commit, an offload lands
        raced.append(offload_table(no_sweep, s.tables[0], source, sink, "racer"))
        return original(sink, source, *args)

    monkeypatch.setattr(repair, "_replace", offload_first)
    lost = _reconcile(s, apply=True)
    monkeypatch.undo()
    assert raced[0].rows == 500
    assert not lost.applied and lost.error["type"] == "commit_conflict" and lost.error["transient"]
    wm = _state(s)[1]
    assert wm.seq == 3499  # the offload's watermark stands
    table = sink_for(s).load("trades")
    on_disk = {str(p) for p in Path(table.location().removeprefix("file://")).rglob("*.parquet")}
    assert on_disk == _referenced(table)  # the refused repair left no files behind
    v = verify(s)[0]
    assert (v.missing, v.duplicates) == (5, 0) and cold(s, "trades").num_rows == 3500

    again = _reconcile(s, apply=True)
    assert again.applied and again.rows_added == 5, again.error
    assert _state(s)[1] == wm and verify(s)[0].ok
    assert sorted(keys_of(cold(s, "trades"), "seq")) == sorted(
        [(i,) for i in range(3500)] + [(100_000 + i,) for i in range(5)]
    )


def test_a_bucket_shrinking_in_hot_while_repairing_stops_the_repair_and_leaves_no_files(make_settings, monkeypatch):
    s = _setup(make_settings)
    with clickhouse(s) as ch:
        _late(ch, 2, 5, 100_000)
    before = _state(s)
    original = repair._replace

    def ttl_strikes(sink, source, *args):  # between the plan and the read, hot loses rows of the bucket
        source.command("ALTER TABLE k2.trades DELETE WHERE seq IN (2500, 2501) SETTINGS mutations_sync = 2")
        return original(sink, source, *args)

    monkeypatch.setattr(repair, "_replace", ttl_strikes)
    stopped = _reconcile(s, apply=True)
    assert not stopped.applied and stopped.error["type"] == "hot_tier_changed" and stopped.error["transient"]
    assert _state(s) == before
    table = sink_for(s).load("trades")
    assert {str(p) for p in Path(table.location().removeprefix("file://")).rglob("*.parquet")} == _referenced(table)
