"""Prefect 3 for real: server (SQLite; the Postgres-backed one is test_scenarios.py's stack), process workers,
the deployments, the supervisor."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from conftest import cold, sink_for
from iceberg_offload.errors import OffloadInFlight, TableBusy
from iceberg_offload.orchestration.prefect_api import online_workers, workers
from iceberg_offload.orchestration.stack import read_state
from stackutil import (
    cli,
    cli_json,
    client,
    flow_runs,
    prefect_cli,
    prefect_settings,
    seed,
    start_process,
    start_server,
    stop,
    stop_flow_runs,
    wait_for,
    wait_run_final,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAIN = "iceberg-offload-main/iceberg-offload-15min"
MAINT = "iceberg-maintenance/iceberg-maintenance-daily"
TABLES = ["t_a", "t_b", "t_c", "t_d", "t_e", "t_f"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One native stack (`up`) on SQLite for the tests that share it; `down` at the end."""
    root = tmp_path_factory.mktemp("stack")
    bronze = [
        {"source": f"b{i}", "layer": "bronze", "timestamp_column": "ts", "sequence_column": "seq"} for i in range(3)
    ]
    broken = {"source": "missing_table", "layer": "silver", "timestamp_column": "ts"}
    settings = write_config(
        root,
        [],
        extra_tables=[*bronze, broken],
        schedule={"offload_cron": "*/15 * * * *", "maintenance_cron": "0 2 * * *"},
        fresh_prefect=True,  # the first start of a server on a new SQLite database, as a new user's
    )
    seed(settings, ["b0", "b1", "b2"], 3000)
    up = cli_json(settings, "up", timeout=240)
    assert up["api_ready"] and up["workers_online"] >= 1
    yield settings
    cli(settings, "down", check=False)
    stop_flow_runs(root)  # a killed worker's flow runs outlive it


@pytest.fixture
def prefect_here(stack):
    """Prefect calls made in this process go to the stack's server."""
    with prefect_settings(stack):
        yield stack


def _run_main(settings, via_prefect_cli: bool = True):
    if via_prefect_cli:
        out = prefect_cli(settings, "deployment", "run", MAIN)
        assert out.returncode == 0, out.stdout + out.stderr
        run_id = next(line.split("flow-run/")[-1].strip() for line in out.stdout.splitlines() if "flow-run/" in line)
    else:
        run_id = cli_json(settings, "trigger")["flow_run_id"]
    run = wait_run_final(settings, uuid.UUID(run_id))
    if run.state.type.value == "CANCELLED":  # a scheduled run (*/15) held the deployment's slot: wait for it
        holders = [
            r
            for r in flow_runs(settings, MAIN)
            if r.state and r.state.type.value in ("RUNNING", "PENDING", "COMPLETED", "FAILED") and r.id != run.id
        ]
        holders.sort(key=lambda r: r.expected_start_time, reverse=True)
        assert holders, "our run was cancelled and no other run held the slot"
        run = wait_run_final(settings, holders[0].id)
    return run


def test_deploy_creates_exactly_the_runbook_names_and_is_idempotent(stack):
    with client(stack) as c:
        pool = c.read_work_pool("iceberg-offload")
        assert pool.type == "process"
        main = c.read_deployment_by_name(MAIN)
        maint = c.read_deployment_by_name(MAINT)
        assert [s.schedule.cron for s in main.schedules] == ["*/15 * * * *"]
        assert [s.schedule.cron for s in maint.schedules] == ["0 2 * * *"]
        assert main.schedules[0].schedule.timezone == "UTC"
        assert main.work_pool_name == maint.work_pool_name == "iceberg-offload"
        assert main.global_concurrency_limit.limit == 1
        assert main.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        before = {"ids": (main.id, maint.id), "schedules": [s.id for s in main.schedules + maint.schedules]}
    runs_before = {r.id: r.expected_start_time for r in flow_runs(stack, MAIN)}
    again = cli_json(stack, "deploy")
    assert {d["status"] for d in again["deployments"]} == {"unchanged"}, again
    assert again["work_pool"] == {"name": "iceberg-offload", "status": "unchanged"}
    assert {x["table"]: x["status"] for x in again["limits"]} == {t.target: "unchanged" for t in stack.tables}
    with client(stack) as c:
        main, maint = c.read_deployment_by_name(MAIN), c.read_deployment_by_name(MAINT)
        assert (main.id, maint.id) == before["ids"]
        assert [s.id for s in main.schedules + maint.schedules] == before["schedules"]
    after = flow_runs(stack, MAIN)
    assert set(runs_before) <= {r.id for r in after}  # nothing deleted (the scheduler may add future runs)
    starts = [r.expected_start_time for r in after if r.state and r.state.type.value == "SCHEDULED"]
    assert len(starts) == len(set(starts))  # and no scheduled time twice


def test_deploy_never_resumes_a_paused_schedule(stack):
    cli(stack, "schedule", "pause", "--deployment", MAIN)
    try:
        out = cli_json(stack, "deploy")
        assert any("left paused" in n and MAIN in n for n in out["notes"])
        state = {d["deployment"]: d for d in cli_json(stack, "schedule", "show")["deployments"]}
        assert state[MAIN]["active"] is False and state[MAINT]["active"] is True
    finally:
        cli(stack, "schedule", "resume", "--deployment", MAIN)
    assert {d["deployment"]: d for d in cli_json(stack, "schedule", "show")["deployments"]}[MAIN]["active"]


def test_prefect_deployment_run_lands_the_data_with_concurrent_bronze_tasks(stack):
    """Also: a deployment made before the flows moved (entrypoint `iceberg_offload.flows.offload_main`) still
    runs, and the next `deploy` points it at orchestration.flows."""
    from prefect.client.schemas.actions import DeploymentUpdate

    with client(stack) as c:
        main = c.read_deployment_by_name(MAIN)
        new_entrypoint = main.entrypoint
        c.update_deployment(main.id, DeploymentUpdate(entrypoint="iceberg_offload.flows.offload_main"))
    run = _run_main(stack)
    redeployed = {d["deployment"]: d["status"] for d in cli_json(stack, "deploy")["deployments"]}
    assert redeployed[MAIN].startswith("updated"), "deploy left the old entrypoint"
    with client(stack) as c:
        assert (
            c.read_deployment_by_name(MAIN).entrypoint
            == new_entrypoint
            == ("iceberg_offload.orchestration.flows.offload_main")
        )
    # the broken table fails the run; the others completed
    assert run.state.type.value == "FAILED", run.state
    assert "missing_table" in run.state.message
    for t in ("b0", "b1", "b2"):
        assert cold(stack, t).num_rows == 3000
    with client(stack) as c:
        tasks = c.read_task_runs(flow_run_filter=_by_id(run.id))
    by_name = {t.name: t for t in tasks}
    bronze = [by_name[f"offload b{i}"] for i in range(3)]
    assert max(t.start_time for t in bronze) < min(t.end_time for t in bronze), "bronze tasks did not overlap"
    broken = by_name["offload missing_table"]
    assert broken.state.type.value == "FAILED" and broken.run_count == 1  # terminal: never retried
    result = run.state.result(raise_on_failure=False) if hasattr(run.state, "result") else None
    assert result is None or isinstance(result, (dict, Exception))
    with client(stack) as c:
        arts = c.read_artifacts(limit=10)
    cycle = [a for a in arts if a.key == "offload-cycle" and str(a.flow_run_id) == str(run.id)]
    assert cycle and "missing_table" in str(cycle[0].data) and "b0" in str(cycle[0].data)
    # flow -> metrics: the exporter counts the cycle (partial) and its broken table's error from that artifact
    from iceberg_offload.ops.metrics import Exporter

    exporter = Exporter(stack)
    exporter.refresh(hot=False)
    assert exporter.snap.prefect_up == 1
    served = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value for m in exporter.collect() for smp in m.samples}
    assert served[("offload_cycles_total", (("status", "partial"),))] >= 1, served
    assert served[("offload_errors_total", (("error_type", "source_error"), ("table", "missing_table")))] >= 1, served


def _by_id(run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))


def test_supervisor_restarts_a_killed_worker(stack):
    state = read_state(stack)
    old_pid = state["children"]["worker"]["pid"]
    old_names = {w["name"] for w in workers(stack)}
    os.kill(old_pid, signal.SIGKILL)
    new_pid = wait_for(
        lambda: (
            (s := read_state(stack)) and s["children"]["worker"]["pid"] != old_pid and s["children"]["worker"]["pid"]
        ),
        60,
        "the supervisor to restart the worker",
    )
    assert read_state(stack)["children"]["worker"]["restarts"] >= 1
    wait_for(
        lambda: any(w["status"] == "ONLINE" and w["name"] not in old_names for w in workers(stack)),
        60,
        "the new worker ONLINE",
    )
    seed(stack, ["b0"], 10)
    run = _run_main(stack, via_prefect_cli=False)
    assert cold(stack, "b0").num_rows == 3010
    assert run.state.type.value in ("COMPLETED", "FAILED")  # FAILED only from the broken table
    ps = cli_json(stack, "ps")
    assert ps["running"] and {p["name"] for p in ps["processes"]} == {"supervisor", "server", "worker"}
    assert new_pid in {p["pid"] for p in ps["processes"]}


def test_missed_schedule_becomes_one_catch_up_run(tmp_path):
    settings = write_config(tmp_path, ["m1"], schedule={"offload_interval_seconds": 6})
    seed(settings, ["m1"], 500)
    server = start_server(settings, tmp_path / "server.log")
    worker = None
    try:
        cli(settings, "deploy")
        seed(settings, ["m1"], 500)
        # the worker is down across at least two scheduled times
        time.sleep(15)
        due = [r for r in flow_runs(settings, MAIN) if r.expected_start_time.timestamp() < time.time()]
        assert len(due) >= 2, [r.state.type for r in due]
        worker = start_process(settings, ["worker"], tmp_path / "worker.log")
        sink = sink_for(settings)
        wait_for(
            lambda: (t := sink.load("m1")) is not None and t.scan().to_arrow().num_rows >= 1000,
            120,
            "the backlog to land",
        )
        writers = {c.props["offload.run-id"] for c in sink.history(sink.load("m1"))}
        assert len(writers) == 1, writers  # one catch-up run wrote the whole backlog
        winner = uuid.UUID(writers.pop())

        def settled():
            runs = flow_runs(settings, MAIN)
            first = next(r for r in runs if r.id == winner)
            late = [r for r in runs if r.id != winner and r.expected_start_time <= first.start_time]
            return (first, late) if first.state.is_final() and all(r.state.is_final() for r in late) else None

        first, late = wait_for(settled, 120, "the late runs to be settled")
        assert first.state.type.value == "COMPLETED"
        assert len(late) >= 1 and {r.state.type.value for r in late} == {"CANCELLED"}, [
            (r.name, r.state.type.value) for r in late
        ]
        assert cold(settings, "m1").num_rows == 1000
        verify = cli_json(settings, "verify")
        assert verify["ok"] and verify["tables"][0]["duplicates"] == 0
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def test_two_workers_share_table_runs_and_no_table_runs_twice_at_once(tmp_path):
    tables = [{"source": t, "layer": "bronze", "timestamp_column": "ts", "sequence_column": "seq"} for t in TABLES]
    settings = write_config(tmp_path, [], prefect={"fan_out": "deployments", "worker_limit": 3}, extra_tables=tables)
    seed(settings, TABLES, 200)
    server = start_server(settings, tmp_path / "server.log")
    procs = []
    try:
        cli(settings, "deploy")
        for name in ("w1", "w2"):
            procs.append(
                start_process(
                    settings,
                    ["worker", "--name", name],
                    tmp_path / f"{name}.log",
                    env={"OFFLOAD__METRICS__PORT": str(_free())},
                )
            )
        wait_for(lambda: online_workers(settings) == 2, 60, "two workers ONLINE")
        main = cli_json(settings, "trigger")["flow_run_id"]
        # a manual run of one table's deployment races the cycle's run of the same table
        with client(settings) as c:
            dep = c.read_deployment_by_name("iceberg-offload-table/iceberg-offload-table")
            manual = c.create_flow_run_from_deployment(dep.id, parameters={"config": settings.path, "table": "t_a"})
        assert wait_run_final(settings, uuid.UUID(main), 240).state.type.value == "COMPLETED"
        wait_run_final(settings, manual.id, 240)
        for t in TABLES:
            assert cold(settings, t).num_rows == 200
        logs = {n: (tmp_path / f"{n}.log").read_text() for n in ("w1", "w2")}
        table_runs = [
            r
            for r in flow_runs(settings, "iceberg-offload-table/iceberg-offload-table")
            if r.state and r.state.type.value == "COMPLETED"
        ]
        assert len(table_runs) == len(TABLES) + 1
        took = {n: sum(str(r.id) in log for r in table_runs) for n, log in logs.items()}
        assert took["w1"] > 0 and took["w2"] > 0, took
        with client(settings) as c:
            tasks = c.read_task_runs(limit=200)
        for t in TABLES:
            spans = sorted(
                (x.start_time, x.end_time)
                for x in tasks
                if f"offload-table:{t}" in x.tags and x.start_time and x.end_time
            )
            assert spans and all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), (
                f"{t} ran twice at once: {spans}"
            )
    finally:
        for p in procs:
            stop(p)
        stop(server)


def _free() -> int:
    from stackutil import free_port

    return free_port()


def test_worker_stops_on_sigterm_when_started_in_the_background(tmp_path):
    """A non-interactive shell's background job inherits SIGINT ignored; the worker must still stop."""
    import subprocess

    from stackutil import ENV_BASE

    settings = write_config(tmp_path, ["s1"])
    server = start_server(settings, tmp_path / "server.log")
    shell = None
    try:
        script = (
            f"{os.sys.executable} -m iceberg_offload.cli worker --config {settings.path} "
            f"> {tmp_path}/w.log 2>&1 & echo $!; wait"
        )
        shell = subprocess.Popen(
            ["bash", "-c", script], stdout=subprocess.PIPE, text=True, env=ENV_BASE, start_new_session=True
        )
        pid = int(shell.stdout.readline())
        wait_for(lambda: online_workers(settings) == 1, 60, "the background worker ONLINE")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        shell.wait(30)
        assert time.monotonic() - t0 < 15
        assert "stopped" in Path(tmp_path / "w.log").read_text()
    finally:
        if shell is not None:
            stop(shell)  # the whole session: the shell and a worker that did not stop
        stop(server)


def test_doctor_on_the_running_stack_names_the_failing_table(stack):
    if not flow_runs(stack, MAIN):
        _run_main(stack, via_prefect_cli=False)
    proc = cli(stack, "doctor", "--json", check=False)
    assert proc.returncode == 1  # the broken table fails
    import json

    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("prefect server", "workers", "deployment", "metrics endpoint", "clickhouse", "catalog", "table b0"):
        assert checks[name]["status"] == "ok", checks[name]
    processes = checks["processes"]  # a warning for two minutes after the supervisor restarted something
    assert processes["status"] == "ok" or (processes["status"] == "warn" and "restarted" in processes["saw"])
    broken = checks["table missing_table"]
    assert broken["status"] == "fail" and "does not exist" in broken["saw"] and "[[tables]] source" in broken["fix"]
    assert report["scenario"] == "offload failing" and report["runbook"] == "docs/runbooks/offload-failure.md"


def test_doctor_names_no_runs_when_the_schedule_is_paused(stack):
    cli(stack, "schedule", "pause", "--deployment", MAIN)
    try:
        import json

        report = json.loads(cli(stack, "doctor", "--json", check=False).stdout)
        dep = next(c for c in report["checks"] if c["name"] == "deployment")
        assert dep["status"] == "fail" and "paused" in dep["saw"] and "schedule resume" in dep["fix"]
        assert report["scenario"] == "no runs"
    finally:
        cli(stack, "schedule", "resume", "--deployment", MAIN)


def test_doctor_names_full_restart_when_the_supervisor_is_gone(tmp_path):
    import json

    settings = write_config(tmp_path, ["d1"])
    state_dir = Path(settings.prefect.home).parent / "stack"
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_text(json.dumps({"supervisor_pid": 999999, "stopped": False, "children": {}}))
    proc = cli(settings, "doctor", "--json", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["scenario"] == "full restart"
    assert report["runbook"] == "docs/runbooks/scheduler-down.md (scenario 5)"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["processes"]["fix"] == "iceberg-offload up"
    assert checks["prefect server"]["status"] == "fail" and checks["metrics endpoint"]["status"] == "fail"


def test_maintenance_deployment_repairs_late_rows_table_by_table(stack):
    if not any(r.state and r.state.type.value in ("COMPLETED", "FAILED") for r in flow_runs(stack, MAIN)):
        _run_main(stack, via_prefect_cli=False)
    # the scheduled cycle's late-row sweep would repair the late rows first (then reconcile finds none):
    # no cycle runs meanwhile
    cli(stack, "schedule", "pause", "--deployment", MAIN)
    try:
        wait_for(
            lambda: not [r for r in flow_runs(stack, MAIN) if r.state and r.state.type.value in ("RUNNING", "PENDING")],
            300,
            "no offload cycle running",
        )
        _maintenance_repairs_late_rows(stack)
    finally:
        cli(stack, "schedule", "resume", "--deployment", MAIN)


def _maintenance_repairs_late_rows(stack) -> None:
    from conftest import insert_trades
    from iceberg_offload.clickhouse.client import open_source

    with open_source(stack.source) as ch:  # late rows far behind b1's watermark
        seq = int(ch.rows("SELECT max(seq) FROM k2.b1")[0][0]) + 1000
        first = ch.rows("SELECT min(ts) FROM k2.b1")[0][0]
        insert_trades(ch, "b1", int(first.timestamp() * 1000) + 500, 5, seq0=seq)
    import json

    before = json.loads(cli(stack, "verify", "--table", "b1", "--json", check=False).stdout)
    assert not before["ok"] and before["tables"][0]["missing"] == 5
    out = cli(stack, "trigger", "--deployment", MAINT, "--wait", "--json", check=False, timeout=400)
    run = json.loads(out.stdout)
    with client(stack) as c:
        tasks = {t.name: t for t in c.read_task_runs(flow_run_filter=_by_id(uuid.UUID(run["flow_run_id"])))}
        message = c.read_flow_run(uuid.UUID(run["flow_run_id"])).state.message
    assert {f"maintain {t}" for t in ("b0", "b1", "b2", "missing_table")} <= set(tasks)
    for t in ("b0", "b1", "b2", "missing_table"):
        assert tasks[f"maintain {t}"].state.type.value == "COMPLETED", t
    assert run["state"] == "COMPLETED", message  # a table with no Iceberg table yet has nothing to maintain
    assert {"offload-table:b0"} <= set(tasks["maintain b0"].tags)  # holds the table's slot
    verify = cli_json(stack, "verify", "--table", "b1")
    assert verify["ok"] and verify["tables"][0]["missing"] == 0, verify
    from iceberg_offload.ops.metrics import Exporter

    exporter = Exporter(stack)  # what the worker's endpoint serves after its next refresh
    exporter.refresh(hot=False)
    served = {(m.name, tuple(smp.labels.values())): smp.value for m in exporter.collect() for smp in m.samples}
    assert served[("offload_last_reconcile_missing_rows", ("b1",))] == 5
    assert served[("offload_last_reconcile_added_rows", ("b1",))] == 5
    assert served[("offload_last_reconcile_repaired_buckets", ("b1",))] >= 1
    assert served[("offload_last_reconcile_missing_rows", ("b0",))] == 0


def test_maintenance_yields_to_a_running_offload_cycle(stack, prefect_here):
    """A cycle in tasks fan-out takes no slot: the maintenance task sees it Running and gives way."""
    from prefect.states import Running

    from iceberg_offload.orchestration import tasks

    with client(stack) as c:  # created Running: the worker never sees it Scheduled and never runs it
        dep = c.read_deployment_by_name(MAIN)
        fake = c.create_flow_run_from_deployment(dep.id, state=Running())
        assert c.read_flow_run(fake.id).state.type.value == "RUNNING"
    try:
        with pytest.raises(OffloadInFlight):
            tasks.maintain_table_task.fn(stack.path, "b0")
    finally:
        from prefect.states import Cancelled

        with client(stack) as c:
            c.set_flow_run_state(fake.id, Cancelled(message="test"), force=True)


def test_a_cycle_waits_while_maintenance_holds_the_table(stack, prefect_here, monkeypatch):
    """The other half of the exclusion: a tasks fan-out cycle waits while the table's maintenance runs."""
    from prefect.states import Completed, Running

    from iceberg_offload.orchestration import tasks
    from iceberg_offload.orchestration.share import Looks

    monkeypatch.setattr(tasks, "MAINTENANCE_WAIT_SECONDS", 1)
    with client(stack) as c:  # a maintenance task of b0, Running
        run = c.create_task_run(
            tasks.maintain_table_task,
            flow_run_id=None,
            dynamic_key=uuid.uuid4().hex,
            name="maintain b0",
            state=Running(),
        )
    looks = Looks(tasks.maintained_tables)  # a cycle's tasks: their looks batched into few reads
    try:  # a read for a 250-table layer: the API answers at most 200 runs a read (it refused a limit above)
        assert tasks.maintained_tables({f"t{i:03d}" for i in range(250)} | {"b0", "b1"}) == {"b0"}
        for look in (tasks._maintaining, looks.asks):
            with pytest.raises(TableBusy, match="maintenance of b0"):
                tasks._wait_while_maintained("b0", look)
            tasks._wait_while_maintained("b1", look)  # another table: no wait
    finally:
        with client(stack) as c:
            c.set_task_run_state(run.id, Completed(), force=True)
    tasks._wait_while_maintained("b0")  # done: returns at once
    tasks._wait_while_maintained("b0", looks.asks)


def test_the_exporter_serves_late_rows_from_the_newest_cycle_artifact(stack):
    """Each cycle's artifact carries its late-row sweep; the exporter serves what the newest left missing."""
    import json

    from iceberg_offload import names
    from iceberg_offload.ops.metrics import Exporter
    from iceberg_offload.orchestration import prefect_api

    at, rows = prefect_api.latest_artifact(stack, names.CYCLE_ARTIFACT)
    if at is None:
        _run_main(stack, via_prefect_cli=False)
        at, rows = prefect_api.latest_artifact(stack, names.CYCLE_ARTIFACT)
    assert at is not None and {r["table"] for r in rows if r.get("late_checked")} >= {"b0", "b1", "b2"}, rows
    # a cycle whose sweep left 3 rows of b1 (in an hour the TTL is deleting), posted as the flow posts it
    hour_ns = (int(time.time()) - 3600) // 3600 * 3600 * 1_000_000_000
    left = [
        {
            "table": "b1",
            "late_checked": True,
            "late_rows": 3,
            "late_rows_added": 0,
            "late_rows_left": 3,
            "late_oldest_ns": hour_ns,
        }
    ]
    prefect_api.request(
        stack, "POST", "/artifacts/", {"key": names.CYCLE_ARTIFACT, "type": "table", "data": json.dumps(left)}
    )
    exporter = Exporter(stack)
    exporter.refresh(hot=False)
    served = {(m.name, tuple(smp.labels.values())): smp.value for m in exporter.collect() for smp in m.samples}
    assert served[("offload_late_rows", ("b1",))] == 3
    assert served[("offload_late_rows", ("b0",))] == 0
