"""Late rows the sweep could not add (issue 13, defect 2): counted per table, in the TTL headroom, named by
`doctor` and `run` — real chdb and a SQLite catalog."""

from __future__ import annotations

import time

from conftest import clickhouse, cold
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.ops.doctor import check_tables
from iceberg_offload.ops.status import TableStatus, derive
from iceberg_offload.orchestration.artifacts import late_rows

NS = 1_000_000_000
H, DAY = 3600, 86400


def test_a_late_row_the_ttl_is_reaching_is_counted_shown_and_in_the_headroom(make_settings):
    s = make_settings(
        [{"source": "near", "timestamp_column": "ts", "sequence_column": "seq"}], late_lookback_seconds=2 * DAY
    )
    now = int(time.time())
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.near (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq) "
            "TTL toDateTime(ts) + INTERVAL 1 DAY"
        )
        ch.command(
            f"INSERT INTO k2.near SELECT fromUnixTimestamp64Milli(toInt64(({now - DAY + 1800} + number * 60)"
            f" * 1000)), number FROM numbers(1400)"
        )
    assert run_cycle(s).tables[0].rows == 1400
    late_s = now - DAY + 300  # arrives late, in an hour the TTL is already deleting from
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.near VALUES (fromUnixTimestamp64Milli({late_s * 1000}), 99999)")
    res = run_cycle(s).tables[0]
    assert res.late_checked and res.late_rows == 1 and res.late_rows_added == 0 and res.late_since_ns, res
    assert res.late_rows_left == 1 and res.late_oldest_ns == late_s // H * H * NS, res
    assert 99999 not in cold(s, "near").column("seq").to_pylist()  # never a bucket the TTL is deleting
    check = next(c for c in check_tables(s) if c.name == "table near")
    assert check.status == "fail" and check.scenario == "ttl risk", check
    assert "1 late rows behind the watermark" in check.saw and "maintain reconcile --table near" in check.fix, check


def test_a_late_row_with_a_far_ttl_is_a_warning_until_the_next_cycle_adds_it(make_settings):
    s = make_settings([{"source": "far", "timestamp_column": "ts", "sequence_column": "seq"}])
    start = (int(time.time()) // H - 2) * H
    with clickhouse(s) as ch:
        ch.command(
            "CREATE TABLE k2.far (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq) "
            "TTL toDateTime(ts) + INTERVAL 30 DAY"
        )
        ch.command(
            f"INSERT INTO k2.far SELECT fromUnixTimestamp64Milli(toInt64(({start} + number * 30) * 1000)), "
            f"number FROM numbers(200)"
        )
    run_cycle(s)
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.far VALUES (fromUnixTimestamp64Milli({(start + 10) * 1000}), 99999)")
    check = next(c for c in check_tables(s) if c.name == "table far")
    assert check.status == "warn" and "1 late rows" in check.saw and check.scenario == "ttl risk", check
    res = run_cycle(s).tables[0]
    assert (res.late_rows, res.late_rows_added, res.late_rows_left) == (1, 1, 0), res
    check = next(c for c in check_tables(s) if c.name == "table far")
    assert check.status == "ok", check


def test_the_sweep_speaks_for_its_hours_and_the_reconcile_for_the_others():
    now = int(time.time())
    old_hour, recent = (now - 2 * DAY) // H * H * NS, (now - 2 * H) // H * H * NS
    since = (now - 3 * H) * NS
    reconcile = (100.0, [{"table": "a", "left_buckets": [[old_hour, 1], [recent, 2]]}])
    late = late_rows({}, (None, []), reconcile)
    assert (late["a"].rows, late["a"].oldest_ns) == (3, old_hour)
    # a newer cycle swept the last 3 h and added the recent ones: the two-day-old row is still missing
    cycle = (200.0, [{"table": "a", "late_checked": True, "late_rows_left": 0, "late_since_ns": since}])
    late = late_rows(late, cycle, reconcile)
    assert (late["a"].rows, late["a"].oldest_ns) == (1, old_hour), late
    # a sweep that left one of its own; then one whose offload failed (not checked) changes nothing
    cycle = (
        300.0,
        [{"table": "a", "late_checked": True, "late_rows_left": 4, "late_oldest_ns": recent, "late_since_ns": since}],
    )
    late = late_rows(late, cycle, reconcile)
    assert late["a"].rows == 5
    assert late_rows(late, (400.0, [{"table": "a", "late_checked": False}]), reconcile)["a"].rows == 5
    # a newer reconcile speaks for every hour
    late = late_rows(late, cycle, (500.0, [{"table": "a", "left_buckets": []}]))
    assert (late["a"].rows, late["a"].oldest_ns) == (0, None)
    st = TableStatus(
        "b",
        "bronze",
        "b",
        ttl_span_seconds=DAY,
        ttl_deadline=time.time() + 5 * DAY,
        late_rows=2,
        late_oldest_ns=(now - 20 * H) // H * H * NS,
    )
    derive(st, time.time())
    assert 3 * H < st.ttl_headroom_seconds < 5 * H, st.ttl_headroom_seconds  # the late hour's, not pending's
