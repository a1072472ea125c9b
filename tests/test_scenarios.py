"""Fault injection on the real native stack, one test per runbook scenario.

Each test starts from a healthy stack (a Prefect server on its own Postgres cluster, a supervised worker,
the metrics endpoint), injects one fault, and checks that `doctor` names the scenario, that
`recover --yes` restores the stack, that a run completes and that hot and cold verify clean.
With OFFLOAD_MTTR_OUT=<file>, each test appends `{scenario, seconds}` (recover --yes start to its end,
which includes the COMPLETED run and the doctor that follows): bench/mttr.py turns that into the table
in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import cold, insert_trades
from iceberg_offload.clickhouse.client import open_source
from iceberg_offload.orchestration.stack import read_state
from stackutil import PgCluster, cli, cli_json, client, seed, stop_flow_runs, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAIN = "iceberg-offload-main/iceberg-offload-15min"
TABLES = ["sc_a", "sc_b"]
HOURS = 8  # the stack's first rows are this old, so a backlog can span hours


@pytest.fixture(scope="module")
def pg_cluster():
    """A Postgres cluster of its own for the Prefect server, so stopping it hurts nothing else."""
    cluster = PgCluster("offload_scn")
    try:
        yield cluster
    finally:
        cluster.drop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_cluster):
    root = tmp_path_factory.mktemp("scenarios")
    settings = write_config(
        root,
        TABLES,
        prefect={"database_url": pg_cluster.url("asyncpg"), "retry_delays_seconds": []},
        source={"lock_timeout_seconds": 5},
        offload={"max_rows_per_commit": 3000},
    )
    seed(settings, TABLES, 1000, start_ms=(int(time.time()) - HOURS * 3600) * 1000)
    try:
        up = cli_json(settings, "up", timeout=240)
        assert up["api_ready"] and up["workers_online"] >= 1
        assert cli_json(settings, "trigger", "--wait", timeout=300)["state"] == "COMPLETED"
        yield settings
    finally:
        cli(settings, "down", check=False)
        stop_flow_runs(root)  # scenarios kill workers: their flow runs outlive them


@pytest.fixture
def healthy(stack):
    """Every scenario starts from a healthy stack, whatever the one before it left."""
    report = doctor(stack)
    if not report["ok"]:
        cli(stack, "recover", "--yes", "--resume-schedule", "--json", check=False, timeout=400)
        report = doctor(stack)
    assert report["ok"], report
    return stack


def doctor(settings) -> dict[str, Any]:
    proc = cli(settings, "doctor", "--json", check=False, timeout=120)
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["ok"] else 1)
    return report


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def recover_and_verify(settings, scenario: str, *flags: str) -> dict[str, Any]:
    done = cli_json(settings, "recover", "--yes", *flags, timeout=400)
    assert done["ok"], json.dumps(done, indent=1)[-4000:]
    ran = next(s for s in done["steps"] if s["name"] == "run now and wait")
    assert ran["run_state"] == "COMPLETED", ran
    with open_source(settings.source) as ch:
        hot = {t: int(ch.rows(f"SELECT count() FROM k2.{t}")[0][0]) for t in TABLES}
    assert {t: cold(settings, t).num_rows for t in TABLES} == hot
    verify = cli_json(settings, "verify")
    assert verify["ok"], verify
    if out := os.environ.get("OFFLOAD_MTTR_OUT"):
        with open(out, "a") as f:
            f.write(
                json.dumps(
                    {"scenario": scenario, "seconds": done["seconds"], "steps": [s["name"] for s in done["steps"]]}
                )
                + "\n"
            )
    return done


def add_rows(settings, count: int, step_ms: int = 100) -> float:
    """Append rows to every table right after its newest one (all in the past); return where they start."""
    with open_source(settings.source) as ch:
        for t in TABLES:
            top_ts, top_seq = ch.rows(f"SELECT max(ts), max(seq) FROM k2.{t}")[0]
            start = top_ts.timestamp() + step_ms / 1000
            if count:
                insert_trades(ch, t, int(start * 1000), count, seq0=int(top_seq) + 1, step_ms=step_ms)
    assert start + count * step_ms / 1000 < time.time()
    return start


def child_pid(settings, name: str) -> int:
    return int(read_state(settings)["children"][name]["pid"])


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def test_worker_killed(healthy):
    add_rows(healthy, 200)
    kill_group(child_pid(healthy, "worker"))
    report = doctor(healthy)
    assert report["scenario"] == "worker down", report
    assert "worker" in checks(report)["processes"]["saw"]
    done = recover_and_verify(healthy, "worker killed")
    # a stack check still failing when recover looked (the supervisor may have healed it since doctor ran,
    # on a busy machine): the stack step waited for it
    from iceberg_offload.ops.recover import STACK_CHECKS

    if any(c["status"] == "fail" and c["name"] in STACK_CHECKS for c in done["before"]["checks"]):
        assert done["steps"][0]["name"] == "restart the stack", done["steps"]


def test_server_killed(healthy):
    add_rows(healthy, 200)
    kill_group(child_pid(healthy, "server"))
    report = doctor(healthy)
    assert report["scenario"] == "server down", report
    assert report["runbook"] == "docs/runbooks/scheduler-down.md (scenario 2)"
    recover_and_verify(healthy, "server killed")


def test_server_database_stopped(healthy, pg_cluster):
    add_rows(healthy, 200)
    pg_cluster.ctl("stop")
    try:
        report = doctor(healthy)
        assert report["scenario"] == "server down", report
        server = checks(report)["prefect server"]
        assert server["status"] == "fail" and "database" in server["fix"], server
        done = recover_and_verify(healthy, "server database stopped")
        assert [s["name"] for s in done["steps"]][:2] == ["start the database", "restart the stack"]
    finally:
        pg_cluster.ctl("start")


def test_schedule_paused(healthy):
    add_rows(healthy, 200)
    cli(healthy, "schedule", "pause", "--deployment", MAIN)
    report = doctor(healthy)
    assert report["scenario"] == "no runs" and "paused" in checks(report)["deployment"]["saw"], report
    preview = json.loads(cli(healthy, "recover", "--json", check=False).stdout)
    assert "leave the schedule paused" in [s["name"] for s in preview["steps"]]  # a pause may be deliberate
    done = recover_and_verify(healthy, "schedule paused", "--resume-schedule")
    assert "resume the schedule" in [s["name"] for s in done["steps"]]
    shown = {d["deployment"]: d for d in cli_json(healthy, "schedule", "show")["deployments"]}
    assert shown[MAIN]["active"] is True


def test_metrics_port_unreachable(healthy):
    """Another program takes port 8000 while the worker restarts: offloads go on, doctor names the holder."""
    add_rows(healthy, 200)
    port = healthy.metrics.port
    old = child_pid(healthy, "worker")
    kill_group(old)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    wait_for(lambda: _bind(holder, port), 10, f"port {port} free")
    try:
        holder.listen(1)  # accepts connections, never answers
        log = Path(read_state(healthy)["children"]["worker"]["log"])
        wait_for(
            lambda: child_pid(healthy, "worker") != old and "already in use" in log.read_text(),
            60,
            "the restarted worker to find its port taken",
        )
        report = doctor(healthy)
        assert report["scenario"] == "metrics unreachable", checks(report)["metrics endpoint"]
        metrics = checks(report)["metrics endpoint"]
        assert "held by" in metrics["saw"] and f"pid {os.getpid()}" in metrics["saw"], metrics
        assert metrics["fix"].startswith(f"stop pid {os.getpid()}")
        assert checks(report)["workers"]["status"] == "ok"  # the worker runs on without its endpoint
        held = json.loads(cli(healthy, "recover", "--yes", "--json", check=False, timeout=400).stdout)
        assert not held["ok"] and "would not help" in held["steps"][0]["result"]
    finally:
        holder.close()  # the operator stops the other program
    recover_and_verify(healthy, "metrics port unreachable")


def _bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def test_clickhouse_unreachable_for_a_cycle(healthy):
    """The embedded engine held by another process for a whole cycle (a server DSN would refuse the connection):
    the cycle fails with a transient error, nothing is written, and the next run lands everything."""
    add_rows(healthy, 200)
    before = {t: cold(healthy, t).num_rows for t in TABLES}
    lock = open(healthy.source.dsn.removeprefix("chdb://") + ".lock", "a+")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = json.loads(cli(healthy, "trigger", "--wait", "--json", check=False, timeout=300).stdout)
        assert run["state"] == "FAILED", run
        report = doctor(healthy)
        assert checks(report)["clickhouse"]["status"] == "warn"  # busy, not broken
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    assert {t: cold(healthy, t).num_rows for t in TABLES} == before
    report = doctor(healthy)
    assert report["scenario"] == "offload failing", report
    assert f"is held by pid {os.getpid()}" in checks(report)["recent runs"]["saw"]  # who held it
    recover_and_verify(healthy, "clickhouse unreachable")


def test_run_stuck_in_running(healthy):
    """The worker and its flow-run process die mid-run: the run stays Running and holds the deployment's slot."""
    add_rows(healthy, 30000)
    run_id = cli_json(healthy, "trigger")["flow_run_id"]

    def running() -> Any:
        with client(healthy) as c:
            run = c.read_flow_run(uuid.UUID(run_id))
        return run if run.state and run.state.type.value == "RUNNING" and run.infrastructure_pid else None

    run = wait_for(running, 120, "the run to be RUNNING", every=0.1)
    kill_group(child_pid(healthy, "worker"))
    kill_group(int(str(run.infrastructure_pid).rsplit(":", 1)[-1]))  # "host:pid" or "pid"
    time.sleep(1)
    with client(healthy) as c:
        assert c.read_flow_run(run.id).state.type.value == "RUNNING"
    report = doctor(healthy)
    assert report["scenario"] == "no runs", report
    stuck = checks(report)["stuck runs"]
    assert stuck["status"] == "fail" and run.name in stuck["saw"]
    recover_and_verify(healthy, "run stuck in Running")
    with client(healthy) as c:
        assert c.read_flow_run(run.id).state.type.value == "CRASHED"


def test_run_left_pending_by_a_dead_worker(healthy, pg_cluster):
    """A worker submits a run (PENDING, the deployment's slot taken) and dies before the run's process starts.
    The run is not stuck yet when recover starts and turns stuck while recover waits for it: recover marks it
    Crashed and runs once more instead of giving up."""
    import psycopg2

    from iceberg_offload import names
    from iceberg_offload.orchestration import prefect_api

    add_rows(healthy, 200)
    dep = prefect_api.deployment(healthy, names.MAIN_FLOW, names.MAIN_DEPLOYMENT)
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))  # no worker takes it
    run = prefect_api.request(
        healthy,
        "POST",
        f"/deployments/{dep['id']}/create_flow_run",
        {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}}},
    )
    answer = prefect_api.request(healthy, "POST", f"/flow_runs/{run['id']}/set_state", {"state": {"type": "PENDING"}})
    assert answer["status"] == "ACCEPT", answer  # orchestrated, as a worker's: it holds the slot
    age = prefect_api.PENDING_STUCK_SECONDS - 30  # submitted this long ago by the worker that died
    db = psycopg2.connect(host="127.0.0.1", port=pg_cluster.port, user="postgres", dbname="postgres")
    with contextlib.closing(db), db, db.cursor() as cur:
        for sql in (
            "UPDATE flow_run_state SET timestamp = timestamp - %s * interval '1 second' WHERE flow_run_id = %s",
            "UPDATE flow_run SET state_timestamp = state_timestamp - %s * interval '1 second' WHERE id = %s",
        ):
            cur.execute(sql, (age, run["id"]))
    assert "stuck runs" not in checks(doctor(healthy))  # not stuck yet: recover's first look leaves it
    recover_and_verify(healthy, "run left pending")
    assert prefect_api.request(healthy, "GET", f"/flow_runs/{run['id']}")["state"]["type"] == "CRASHED"


def test_full_restart(healthy):
    """The whole stack is down (a host reboot) while rows arrive: recover previews, then brings it all back."""
    cli(healthy, "down")
    add_rows(healthy, 200)
    preview = json.loads(cli(healthy, "recover", "--json", check=False).stdout)
    assert preview["after"] is None and not any(s["done"] for s in preview["steps"])
    assert [s["name"] for s in preview["steps"]][0] == "start the stack"
    assert preview["before"]["scenario"] == "full restart"
    assert json.loads(cli(healthy, "ps", "--json", check=False).stdout)["running"] is False  # preview did nothing
    recover_and_verify(healthy, "full restart")


def test_backlog_of_several_hours(healthy):
    """Hours of rows wait behind the watermark (a long outage): doctor says lag, one run catches up in chunks."""
    first = add_rows(healthy, 0)
    assert time.time() - first > 5 * 3600  # the backlog spans hours
    add_rows(healthy, int(time.time() - 120 - first) // 2, step_ms=2000)
    report = doctor(healthy)
    assert report["scenario"] == "lag", report
    table = checks(report)[f"table {TABLES[0]}"]
    assert table["status"] == "warn" and "rows waiting" in table["saw"]
    commits_before = len(cli_json(healthy, "watermark", "show", "--table", TABLES[0])["tables"][0]["commits"])
    recover_and_verify(healthy, "backlog of several hours")
    history = cli_json(healthy, "watermark", "show", "--table", TABLES[0])["tables"][0]["commits"]
    assert len(history) - commits_before >= 3  # cut into several commits of max_rows_per_commit
    lag = cli_json(healthy, "status")["tables"][0]["lag_seconds"]
    assert lag is not None and lag < 15 * 60


def test_runbook_commands_run_on_the_native_stack(healthy):
    """Every command of every runbook, in document order, on this stack: the ```sh blocks, the ```sql ones,
    and what the compose blocks run inside the worker container. Each must exit 0. A command that ran
    already runs once (on a healthy stack a second run proves nothing more)."""
    import re
    import sys
    from urllib.parse import urlparse

    from iceberg_offload.config import prefect_env
    from test_runbooks import native_commands

    add_rows(healthy, 200)
    table = TABLES[0]
    stack_dir = Path(healthy.prefect.home).parent / "stack"
    api_port = urlparse(healthy.prefect.api_url).port
    wm_s = add_rows(healthy, 0) - 3600  # an hour back: the preview shows rows that would be offloaded again
    env = {
        **os.environ,
        **prefect_env(healthy),
        "OFFLOAD_CONFIG": healthy.path,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env = {k: v for k, v in env.items() if not k.startswith("OFFLOAD__")}
    ran = []
    for runbook, kind, cmd in native_commands():
        cmd = (
            cmd.replace(":8000", f":{healthy.metrics.port}")
            .replace(":4200", f":{api_port}")
            .replace(".offload/stack/", f"{stack_dir}/")
            .replace("TIME", str(int(wm_s)))
        )
        cmd = re.sub(r"(?<=k2\.)TABLE|(?<=--table )TABLE", table, cmd)
        if cmd in ran:
            continue
        if kind == "sql":
            with open_source(healthy.source) as ch:
                ch.command(cmd)
        else:
            proc = subprocess.run(
                ["bash", "-o", "pipefail", "-c", cmd],
                cwd=Path(healthy.path).parent,
                env=env,
                capture_output=True,
                text=True,
                timeout=400,
            )
            assert proc.returncode == 0, (
                f"{runbook}: `{cmd}` exited {proc.returncode}:\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\nruns: {_runs(healthy)}"
            )
        ran.append(cmd)
        print(time.strftime("%H:%M:%S"), cmd, flush=True)
    assert len(ran) >= 25 and any("recover --yes" in c for c in ran) and any("prefect flow-run ls" in c for c in ran)
    report = doctor(healthy)
    assert report["ok"], report
    assert {t: cold(healthy, t).num_rows for t in TABLES} == _hot_counts(healthy)


def _hot_counts(settings) -> dict[str, int]:
    with open_source(settings.source) as ch:
        return {t: int(ch.rows(f"SELECT count() FROM k2.{t}")[0][0]) for t in TABLES}


def _runs(settings) -> list[tuple[str, str, str]]:
    from stackutil import flow_runs

    return [
        (
            r.name,
            r.state.type.value,
            (r.state.message or "")[:80],
            str(r.created),
            str(r.state.timestamp),
            str(r.created_by),
        )
        for r in flow_runs(settings, MAIN)
        if r.state and r.state.type.value != "SCHEDULED"
    ]
