"""control.py's REST calls against a server that answers 503 while busy (a Prefect server on SQLite does): an
operator's action is sent again and succeeds; a health read (ready) reports at once instead of waiting."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from iceberg_offload import config, names
from iceberg_offload.errors import PrefectUnavailable
from iceberg_offload.orchestration import control, prefect_api

DEPLOYMENT = {
    "id": "d1",
    "paused": False,
    "schedules": [{"id": "s1", "active": True, "schedule": {"cron": "*/15 * * * *", "timezone": "UTC"}}],
}


@pytest.fixture
def busy_server(tmp_path, monkeypatch):
    """Answers 503 to the first `busy` requests, then like Prefect would; records what it was asked."""
    seen: list[tuple[str, str, Any]] = []
    state: dict[str, Any] = {"busy": 2, "slow": [], "deployment": DEPLOYMENT}
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            seen.append((method, self.path, body))
            if state["slow"] and state["slow"].pop(0):  # this answer comes too late
                release.wait(10)
            if state["busy"] > 0:
                state["busy"] -= 1
                self.send_response(503)
                self.end_headers()
                return
            payload: Any = state["deployment"] if "/deployments/name/" in self.path else {"id": "r1", "name": "r"}
            raw = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_PATCH(self) -> None:
            self._answer("PATCH")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(prefect_api, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    (tmp_path / "offload.toml").write_text(f'[prefect]\napi_url = "http://127.0.0.1:{server.server_port}/api"\n')
    settings = config.load(tmp_path / "offload.toml", env={})
    try:
        yield settings, seen, state
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_action_is_sent_again_while_the_server_answers_503(busy_server):
    settings, seen, _ = busy_server
    shown = control.schedule_state(settings, [names.MAIN])
    assert shown == [
        {
            "deployment": names.MAIN,
            "exists": True,
            "paused": False,
            "active": True,
            "schedules": [{"id": "s1", "schedule": "cron */15 * * * * UTC", "active": True}],
        }
    ]
    assert [p for _, p, _ in seen] == [f"/api/deployments/name/{names.MAIN}"] * 3  # 503, 503, then the answer


def test_pause_after_503s_pauses_the_deployment_and_its_schedule(busy_server):
    settings, seen, _ = busy_server
    control.set_paused(settings, [names.MAIN], paused=True)
    writes = [(m, p, b) for m, p, b in seen if m == "PATCH"]
    assert writes == [
        ("PATCH", "/api/deployments/d1", {"paused": True}),
        ("PATCH", "/api/deployments/d1/schedules/s1", {"active": False}),
    ]


def test_a_server_busy_past_the_retries_is_prefect_unavailable_with_the_fix(busy_server):
    settings, seen, state = busy_server
    state["busy"] = 100
    with pytest.raises(PrefectUnavailable) as err:
        control.schedule_state(settings, [names.MAIN])
    assert "503" in err.value.message and "iceberg-offload up" in err.value.fix
    assert len(seen) == len(prefect_api.RETRY_DELAYS) + 1


def test_a_health_read_is_not_retried(busy_server):
    settings, seen, _ = busy_server
    assert prefect_api.ready(settings) is False  # /ready answers 503 while the database is down: say so at once
    assert len(seen) == 1


def test_an_interval_schedule_reads_as_deploy_writes_it(busy_server):
    settings, _, state = busy_server
    state["deployment"] = {**DEPLOYMENT, "schedules": [{"id": "s2", "active": True, "schedule": {"interval": 900.0}}]}
    assert control.schedule_state(settings, [names.MAIN])[0]["schedules"][0]["schedule"] == "interval 900s"


def test_a_read_that_times_out_is_read_again_but_a_write_is_not_sent_twice(busy_server, monkeypatch):
    settings, seen, state = busy_server
    monkeypatch.setattr(control, "TIMEOUT_SECONDS", 0.3)
    state["busy"], state["slow"] = 0, [True]
    assert control.schedule_state(settings, [names.MAIN])[0]["exists"]
    assert [m for m, _, _ in seen] == ["GET", "GET"]  # the first answer came too late: asked again
    seen.clear()
    state["slow"] = [True, False, True]  # the deployment read once, then the run's creation: too slow
    with pytest.raises(PrefectUnavailable):
        control.trigger(settings, names.MAIN)
    assert [m for m, _, _ in seen] == ["GET", "GET", "POST"]  # the create may have landed: not sent again


def _run(state: str, held_by: str | None = None, stuck: bool = False) -> dict[str, Any]:
    """A trigger(wait=True) outcome, as control.trigger returns it."""
    return {
        "ok": state == "COMPLETED",
        "flow_run_id": "r",
        "name": "n",
        "deployment": names.MAIN,
        "state": state,
        "seconds": 1.0,
        "held_by": held_by,
        "holder_stuck": stuck,
        "note": None,
    }


@pytest.mark.parametrize(
    ("outcomes", "triggers", "final"),
    [
        ([_run("CANCELLED"), _run("COMPLETED")], 2, "COMPLETED"),  # the holder ended before we looked
        ([_run("PENDING", "h", stuck=True), _run("COMPLETED")], 2, "COMPLETED"),  # the holder never starts
        ([_run("PENDING")], 1, "PENDING"),  # a plain timeout: the run may yet finish, never a second one
        ([_run("COMPLETED", "h")], 1, "COMPLETED"),  # we waited for the holder and it completed
        ([_run("CANCELLED"), _run("CANCELLED")], 2, "CANCELLED"),  # at most twice
    ],
)
def test_recover_runs_again_only_when_another_run_took_the_slot(monkeypatch, outcomes, triggers, final):
    from iceberg_offload.ops import recover

    calls: list[float] = []

    def fake_trigger(settings: Any, deployment: str, wait: bool, timeout: float) -> dict[str, Any]:
        calls.append(timeout)
        return outcomes[len(calls) - 1]

    monkeypatch.setattr(recover, "trigger", fake_trigger)
    monkeypatch.setattr(recover, "_crash_stuck", lambda settings: 0)
    said, state = recover._run_now(config.load(None, env={}), 300)
    assert (len(calls), state) == (triggers, final), said
    assert said.count("flow run ") == triggers
