"""Exactly once: racing offloads, commits whose answer is lost, and processes killed at every step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from conftest import TRADES_DDL, clickhouse, cold, insert_trades, keys_of, sink_for, trades_table, warehouse_files
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.engine.offload import offload_table, run_cycle
from iceberg_offload.errors import CommitConflict
from iceberg_offload.iceberg import cas

START_MS = (int(time.time()) - 4 * 3600) * 1000


def _assert_exactly_once(s, n: int, target: str = "trades") -> None:
    seqs = cold(s, target).column("seq")
    assert len(seqs) == n and pc.count_distinct(seqs).as_py() == n, f"{len(seqs)} rows, want {n} distinct"


def _race(s, threads: int, barrier: threading.Barrier | None = None):
    results = [None] * threads

    def one(i: int) -> None:
        with open_source(s.source) as src:
            results[i] = offload_table(s, s.tables[0], src, sink_for(s), f"racer-{i}")

    ts = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return results


def test_two_offloads_started_together_commit_each_window_once(make_settings, catalog_uri, monkeypatch):
    s = make_settings([trades_table()], catalog_uri=catalog_uri)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 5000)
    run_cycle(s)  # create the table, first window
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + 5000 * 1000, 3000, seq0=5000)
    barrier = threading.Barrier(2, timeout=60)
    original = cas.CasTransaction.commit_transaction
    entered: list[int] = []

    def commit_together(self):
        if threading.get_ident() not in entered:  # both racers reach the commit before either commits
            entered.append(threading.get_ident())
            barrier.wait()
        return original(self)

    monkeypatch.setattr(cas.CasTransaction, "commit_transaction", commit_together)
    a, b = _race(s, 2)
    assert a.status == b.status == "ok", (a.error, b.error)
    assert sorted([a.rows, b.rows]) == [0, 3000]  # one committed the window, the other found it done
    _assert_exactly_once(s, 8000)
    history = sink_for(s).history(sink_for(s).load("trades"))
    lowers = [c.props["offload.window.lower-ns"] for c in history]
    assert len(lowers) == len(set(lowers)) == 2


def test_many_racers_many_windows_no_duplicates(make_settings, sqlite_uri):
    s = make_settings([trades_table()], catalog_uri=sqlite_uri, max_rows_per_commit=500)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 6000)
    results = _race(s, 4)
    # a racer that keeps losing gives up with a transient conflict; nobody fails any other way
    assert all(r.status == "ok" or r.error["type"] == "commit_conflict" for r in results), [r.error for r in results]
    landed = sum(r.rows for r in results)
    assert run_cycle(s).tables[0].rows == 6000 - landed
    _assert_exactly_once(s, 6000)
    history = sink_for(s).history(sink_for(s).load("trades"))
    lowers = [c.props["offload.window.lower-ns"] for c in history]
    assert len(lowers) == len(set(lowers)) == 12


def test_conflicting_commit_is_refused_and_its_files_removed(make_settings, sqlite_uri, warehouse):
    s = make_settings([trades_table()], catalog_uri=sqlite_uri, **warehouse)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 10)
    run_cycle(s)
    assert_the_racing_loser_is_refused(s)


def assert_the_racing_loser_is_refused(s) -> None:
    """Two handles read the same snapshot of `trades` (10 rows); the second commit is refused by the catalog's
    compare-and-swap and its files (data, manifests, manifest list) are removed."""
    import pyarrow as pa

    sink = sink_for(s)
    first, second = sink.load("trades"), sink.load("trades")
    data = cold(s, "trades").slice(0, 2)
    sink.commit(first, iter([data]), {"offload.watermark.ts-ns": "1"}, time.monotonic())
    files_before = warehouse_files(first)
    with pytest.raises(CommitConflict, match="nothing appended"):
        sink.commit(second, iter([pa.concat_tables([data])]), {"offload.watermark.ts-ns": "2"}, time.monotonic())
    assert warehouse_files(first) == files_before
    assert cold(s, "trades").num_rows == 12


@pytest.mark.parametrize("lost", ["after_landing", "before_landing"])
def test_commit_with_lost_answer_is_settled_from_history(make_settings, catalog_uri, warehouse, monkeypatch, lost):
    s = make_settings([trades_table()], catalog_uri=catalog_uri, **warehouse)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", START_MS, 100)
    run_cycle(s)
    with clickhouse(s) as ch:
        insert_trades(ch, "trades", START_MS + 100_000, 50, seq0=100)
    original = SqlCatalog.commit_table
    calls = []

    def flaky(self, table, requirements, updates):
        calls.append(1)
        if lost == "after_landing":
            original(self, table, requirements, updates)
        raise ConnectionResetError("server closed the connection unexpectedly")

    monkeypatch.setattr(SqlCatalog, "commit_table", flaky)
    res = run_cycle(s).tables[0]
    monkeypatch.setattr(SqlCatalog, "commit_table", original)  # not undo(): that would unset an S3 warehouse's keys
    if lost == "after_landing":  # found its commit id in the history: a success, not a retry
        assert (res.status, res.rows, res.commits) == ("ok", 50, 1)
    else:
        assert res.status == "failed" and res.error["type"] == "commit_outcome_unknown" and res.error["transient"]
        assert run_cycle(s).tables[0].rows == 50
    assert len(calls) == 1
    _assert_exactly_once(s, 150)


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from iceberg_offload.cli import main as cli
    from iceberg_offload.iceberg import cas
    from iceberg_offload.clickhouse import client as source
    point, config = sys.argv[1], sys.argv[2]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "during_read":
        real = source.Source.arrow
        reads = []
        def arrow(self, sql, names=None):
            reads.append(sql)
            if len(reads) == 2:  # the first batch is in hand, the second being read
                die()
            return real(self, sql, names)
        source.Source.arrow = arrow
    elif point == "before_commit":
        def commit(self):
            die()
        cas.CasTransaction.commit_transaction = commit
    elif point == "after_commit":
        real_commit = cas.CasTransaction.commit_transaction
        def commit(self):
            real_commit(self)
            die()
        cas.CasTransaction.commit_transaction = commit
    sys.exit(cli.main(["run", "--config", config]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["during_read", "before_commit", "after_commit"])
def test_sigkill_at_each_step_then_rerun_lands_every_row_once(make_settings, catalog_uri, tmp_path, point):
    s = make_settings(
        [trades_table()], catalog_uri=catalog_uri, max_rows_per_commit=20_000, batch_rows=5_000, read_rows=5_000
    )
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades") + " SETTINGS index_granularity = 1024")
        insert_trades(ch, "trades", START_MS, 50_000, step_ms=100)
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    crashed = subprocess.run(
        [sys.executable, str(script), point, s.path], env=env, capture_output=True, text=True, timeout=300
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    before = sink_for(s).load("trades")
    landed = before.scan().to_arrow().num_rows if before is not None else 0
    assert landed == (20_000 if point == "after_commit" else 0)
    rerun = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "run", "--config", s.path, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    _assert_exactly_once(s, 50_000)
    verify = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", "verify", "--config", s.path, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0 and '"ok": true' in verify.stdout, verify.stdout
    assert sorted(keys_of(cold(s, "trades"), "seq"))[-1] == (49_999,)
