"""Scale in tables: what one idle table costs a cycle (queries counted by the ClickHouse server), and the
table tasks of a cycle sharing one catalog and a few sources (issue 16, item 4; the timings are in
bench/tables.py and docs/benchmarks.md)."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import HttpClickHouse, clickhouse, trades_table
from iceberg_offload.clickhouse.embedded import chdb_path, engine_lock
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.errors import CatalogUnavailable
from iceberg_offload.ops.status import status
from iceberg_offload.orchestration import share as share_mod
from iceberg_offload.orchestration import tasks
from stackutil import wait_for

START_MS = (int(time.time()) - 3 * 3600) * 1000
TABLES = ["scale_a", "scale_b", "scale_c"]
DDL = """CREATE TABLE k2.{name} (ts DateTime64(3), seq UInt64, price Decimal(18, 8))
    ENGINE = MergeTree ORDER BY (ts, seq) TTL toDateTime(ts) + INTERVAL 7 DAY"""


def _tables(make_settings, dsn: str | None = None):
    s = make_settings([trades_table(n) for n in TABLES], dsn=dsn)
    with clickhouse(s) as ch:
        for n in TABLES:
            ch.command(DDL.format(name=n))
            ch.command(
                f"INSERT INTO k2.{n} SELECT fromUnixTimestamp64Milli(toInt64({START_MS} + number * 1000)), number, "
                f"toDecimal64(number / 100, 8) FROM numbers(2000)"
            )
    return s


def test_an_idle_table_costs_five_queries_a_cycle_and_one_ttl_check_for_all(make_settings, ch_http: HttpClickHouse):
    """Counted by the server: per idle table its description (one query, the columns in a subquery), the
    plan of its next commit (it finds the window empty; no count is sent without a progress bar), the sweep's
    definition check and hour counts, and the sweep's key read; the TTL check's constant query once for tables
    with the same TTL. Each query costs ~4 ms embedded and a round trip over HTTP, whatever it reads: 200
    tables made an idle cycle of 1,853."""
    s = _tables(make_settings, ch_http.dsn())
    assert run_cycle(s).status == "success"
    before = len(ch_http.queries())
    idle = run_cycle(s)
    assert idle.status == "success" and idle.as_dict()["rows"] == 0
    assert all(t.late_checked and t.late_error is None for t in idle.tables), [t.as_dict() for t in idle.tables]
    sent = [q["sql"] for q in ch_http.queries()[before:]]
    for name in TABLES:
        mine = [q for q in sent if name in q]
        assert len(mine) <= 5, "\n".join(mine)
    assert sum("numbers(1440)" in q for q in sent) == 1, [q for q in sent if "numbers(1440)" in q]

    before = len(ch_http.queries())
    shown = status(s)  # `status` and the exporter's hot refresh: four per table
    assert [(t.hot_rows, t.pending_rows, t.error) for t in shown] == [(2000, 0, None)] * 3
    assert all(t.ttl_deadline is None and t.ttl_span_seconds and t.ttl_span_seconds > 6 * 86400 for t in shown)
    sent = [q["sql"] for q in ch_http.queries()[before:]]
    for name in TABLES:
        mine = [q for q in sent if name in q]
        assert len(mine) <= 4, "\n".join(mine)


def test_a_late_row_is_still_found_by_the_idle_sweep_with_fewer_queries(make_settings):
    s = _tables(make_settings)
    run_cycle(s)
    with clickhouse(s) as ch:
        ch.command(f"INSERT INTO k2.scale_b VALUES (fromUnixTimestamp64Milli(toInt64({START_MS} + 500)), 99999, 1)")
    res = {t.table: t for t in run_cycle(s).tables}
    assert res["scale_b"].late_rows == 1 and res["scale_b"].late_rows_added == 1, res["scale_b"].as_dict()
    assert res["scale_a"].late_rows == 0 and res["scale_c"].late_rows == 0


def test_the_table_tasks_of_a_cycle_share_one_catalog_and_reuse_sources(make_settings, monkeypatch):
    s = _tables(make_settings)
    opened = {"catalog": 0, "source": 0}
    real_catalog, real_source = share_mod.open_catalog, share_mod.open_source

    def catalog(*a, **k):
        opened["catalog"] += 1
        return real_catalog(*a, **k)

    def source(*a, **k):
        opened["source"] += 1
        return real_source(*a, **k)

    monkeypatch.setattr(share_mod, "open_catalog", catalog)
    monkeypatch.setattr(share_mod, "open_source", source)
    with share_mod.shared_cycle(s, "run-1") as share:
        results = [tasks.run_table(str(s.path), n, "run-1") for n in TABLES]
        assert [r["rows"] for r in results] == [2000, 2000, 2000]
        assert opened == {"catalog": 1, "source": 1}  # one after another: one source
        barrier, held = threading.Barrier(2), []

        def hold() -> None:
            with share.source() as src:
                held.append(src)
                barrier.wait(timeout=60)  # both inside at once: never the same source

        threads = [threading.Thread(target=hold) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(held) == 2 and held[0] is not held[1]
    lock = engine_lock(chdb_path(s.source.dsn) or "")
    assert lock.users == 0 and lock.fd is None  # every source closed: the engine is free for other processes
    assert [tasks.run_table(str(s.path), n, "run-2")["rows"] for n in TABLES] == [0, 0, 0]  # no share: its own


def test_the_maintenance_look_of_many_tasks_is_few_reads_each_started_after_its_task_asked():
    """I11 needs each offload task's look to be a read that started after the task asked (its Running state is
    set by then). 10 tasks asking at once are answered by 2 reads: the first task's, and one for the 9 that
    asked while it was in flight. The read is Prefect's API in a flow run; here a function that records."""
    first_read_may_end = threading.Event()
    reads: list[tuple[float, set[str]]] = []

    def maintained(tables: set[str]) -> set[str]:
        reads.append((time.monotonic(), set(tables)))
        if len(reads) == 1:
            assert first_read_may_end.wait(60)
        return {"t3"} & tables

    looks = share_mod.Looks(maintained)
    asked: dict[str, float] = {}
    answers: dict[str, bool] = {}

    def ask(table: str) -> None:
        asked[table] = time.monotonic()
        answers[table] = looks.asks(table)

    first = threading.Thread(target=ask, args=("t0",))
    first.start()
    wait_for(lambda: len(reads) == 1, 60, "the first read")
    others = [threading.Thread(target=ask, args=(f"t{i}",)) for i in range(1, 10)]
    for t in others:
        t.start()
    wait_for(lambda: len(asked) == 10 and len(looks._asking) == 9, 60, "nine tasks waiting for the next read")
    first_read_may_end.set()
    for t in [first, *others]:
        t.join(timeout=60)
    assert answers == {f"t{i}": i == 3 for i in range(10)}
    assert looks.reads == 2 and [r[1] for r in reads] == [{"t0"}, {f"t{i}" for i in range(1, 10)}]
    assert all(reads[0 if t == "t0" else 1][0] >= at for t, at in asked.items())


def test_a_failed_look_fails_every_task_it_answers():
    def maintained(tables: set[str]) -> set[str]:
        raise OSError("the Prefect API is down")

    looks = share_mod.Looks(maintained)
    with pytest.raises(OSError, match="API is down"):
        looks.asks("t0")


def test_a_catalog_that_does_not_answer_fails_each_table_task_transiently_not_the_cycle(make_settings):
    """The share opens the catalog in the first task that needs it: the error is that task's, retried as any
    transient one, and the cycle still records every table's outcome."""
    s = make_settings([trades_table("t")], catalog_type="rest", catalog_uri="http://127.0.0.1:9")
    with share_mod.shared_cycle(s, "run-1"):  # entering opens nothing
        for _ in range(2):  # each attempt tries again
            with pytest.raises(CatalogUnavailable) as failed:
                tasks.run_table(str(s.path), "t", "run-1")
            assert failed.value.transient


def test_a_source_a_task_holds_when_the_share_closes_stays_locked_until_given_back(make_settings):
    s = make_settings([trades_table("t")])
    lock = engine_lock(chdb_path(s.source.dsn) or "")
    with share_mod.shared_cycle(s, "run-1") as share:
        held = share.source()
        source = held.__enter__()
    assert lock.users == 1 and source.rows("SELECT 1") == [(1,)]  # the task reads on, under the engine lock
    held.__exit__(None, None, None)
    assert lock.users == 0 and lock.fd is None
    with pytest.raises(RuntimeError, match="closed"), share.source():
        pass


def test_an_interrupted_look_leaves_no_task_waiting_forever():
    release = threading.Event()
    calls: list[set[str]] = []

    def maintained(tables: set[str]) -> set[str]:
        calls.append(set(tables))
        if len(calls) == 1:
            assert release.wait(60)
            raise KeyboardInterrupt  # a cancelled flow run, a signal
        return set()

    looks = share_mod.Looks(maintained)
    seen: dict[str, object] = {}

    def ask(table: str) -> None:
        try:
            seen[table] = looks.asks(table)
        except BaseException as exc:  # noqa: BLE001 - what the task would see
            seen[table] = type(exc).__name__

    first = threading.Thread(target=ask, args=("t0",))
    first.start()
    wait_for(lambda: len(calls) == 1, 60, "the first read")
    second = threading.Thread(target=ask, args=("t1",))
    second.start()
    wait_for(lambda: "t1" in looks._asking, 60, "the second task waiting")
    release.set()
    for t in (first, second):
        t.join(timeout=60)
    assert seen == {"t0": "KeyboardInterrupt", "t1": False} and calls == [{"t0"}, {"t1"}]


def test_a_scrape_rendering_an_older_snapshot_never_replaces_a_newer_answer():
    """A counter served must never step back (Prometheus takes that for a reset)."""
    from prometheus_client.core import CounterMetricFamily

    from iceberg_offload.ops.endpoint import Answers

    rows, gate, reading = [100], threading.Event(), threading.Event()

    class Collector:
        def collect(self):
            value = rows[0]
            if threading.current_thread().name == "slow-scrape":
                reading.set()
                assert gate.wait(60)
            yield CounterMetricFamily("offload_rows", "rows", value=value)

    answers = Answers(Collector(), max_age_seconds=0.0)  # every scrape renders its own (a stalled refresh)
    slow = threading.Thread(target=answers.answer, args=("text/plain",), name="slow-scrape")
    slow.start()
    assert reading.wait(60)
    rows[0] = 110
    answers.render("text/plain")  # the refresh lands meanwhile
    gate.set()
    slow.join(timeout=60)
    answers.max_age_seconds = 3600
    assert "offload_rows_total 110.0" in answers.answer("text/plain")[1].decode()
