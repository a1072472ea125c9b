"""Late rows the sweep could not add (issue 13, defect 2): counted per table, in the TTL headroom, named by
`doctor` and `run` — real chdb and a SQLite catalog."""

from __future__ import annotations

import time

from conftest import clickhouse, cold
from iceberg_offload.artifacts import LateRows, late_rows
from iceberg_offload.doctor import check_tables
from iceberg_offload.offload import run_cycle
from iceberg_offload.status import TableStatus, derive

NS = 1_000_000_000
H, DAY = 3600, 86400


def test_a_late_row_the_ttl_is_reaching_is_counted_shown_and_in_the_headroom(make_settings):
    s = make_settings([{"source": "near", "timestamp_column": "ts", "sequence_column": "seq"}],
                      late_lookback_seconds=2 * DAY)
    now = int(time.time())
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.near (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq) "
                   "TTL toDateTime(ts) + INTERVAL 1 DAY")
        ch.command(f"INSERT INTO k2.near SELECT fromUnixTimestamp64Milli(toInt64(({now - DAY + 1800} + number * 60)"
                   f" * 1000)), number FROM numbers(1400)")
    assert run_cycle(s).tables[0].rows == 1400
    late_s = now - DAY + 300  # arrives late, in an hour the TTL is already deleting from
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.near VALUES (fromUnixTimestamp64Milli({late_s * 1000}), 99999)")
    res = run_cycle(s).tables[0]
    assert res.late_checked and res.late_rows == 1 and res.late_rows_added == 0, res
    assert res.late_rows_left == 1 and res.late_oldest_ns == late_s // H * H * NS, res
    assert 99999 not in cold(s, "near").column("seq").to_pylist()  # never a bucket the TTL is deleting
    check = next(c for c in check_tables(s) if c.name == "table near")
    assert check.status == "fail" and check.scenario == "ttl risk", check
    assert "1 late rows behind the watermark" in check.saw and "maintain reconcile --table near" in check.fix, check


def test_a_late_row_with_a_far_ttl_is_a_warning_until_the_next_cycle_adds_it(make_settings):
    s = make_settings([{"source": "far", "timestamp_column": "ts", "sequence_column": "seq"}])
    start = (int(time.time()) // H - 2) * H
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.far (ts DateTime64(3), seq UInt64) ENGINE = MergeTree ORDER BY (ts, seq) "
                   "TTL toDateTime(ts) + INTERVAL 30 DAY")
        ch.command(f"INSERT INTO k2.far SELECT fromUnixTimestamp64Milli(toInt64(({start} + number * 30) * 1000)), "
                   f"number FROM numbers(200)")
    run_cycle(s)
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.far VALUES (fromUnixTimestamp64Milli({(start + 10) * 1000}), 99999)")
    check = next(c for c in check_tables(s) if c.name == "table far")
    assert check.status == "warn" and "1 late rows" in check.saw and check.scenario == "ttl risk", check
    res = run_cycle(s).tables[0]
    assert (res.late_rows, res.late_rows_added, res.late_rows_left) == (1, 1, 0), res
    check = next(c for c in check_tables(s) if c.name == "table far")
    assert check.status == "ok", check


def test_the_newer_of_sweep_and_reconcile_counts_and_its_oldest_row_bounds_the_headroom():
    hour = (int(time.time()) - 20 * H) // H * H
    cycle = (200.0, [{"table": "a", "late_checked": True, "late_rows_left": 4, "late_oldest_ns": hour * NS},
                     {"table": "b", "late_checked": False, "late_rows_left": 0, "late_oldest_ns": None}])
    reconcile = (100.0, [{"table": "a", "rows_left_missing": 0, "oldest_left_ns": None},
                         {"table": "b", "rows_left_missing": 2, "oldest_left_ns": hour * NS}])
    late = late_rows({}, cycle, reconcile)
    assert late == {"a": LateRows(4, hour * NS, 200.0), "b": LateRows(2, hour * NS, 100.0)}
    late = late_rows(late, (300.0, [{"table": "a", "late_checked": True, "late_rows_left": 0}]), reconcile)
    assert late["a"].rows == 0 and late["b"].rows == 2  # the reconcile (older) does not undo the sweep
    st = TableStatus("b", "bronze", "b", ttl_span_seconds=DAY, ttl_deadline=time.time() + 5 * DAY,
                     late_rows=2, late_oldest_ns=hour * NS)
    derive(st, time.time())
    assert 3 * H < st.ttl_headroom_seconds < 5 * H, st.ttl_headroom_seconds  # the late hour's, not pending's
