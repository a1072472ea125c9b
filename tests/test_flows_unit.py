"""The retry rule of the table task, on real Prefect state objects: only transient errors are retried."""

from __future__ import annotations

from prefect.states import Completed, Failed

from iceberg_offload.errors import SourceUnavailable, TableFailed, TypeRefused
from iceberg_offload.orchestration.tasks import _transient_only


def _failed_with(exc: Exception):
    return Failed(data=exc, message=str(exc))


def test_transient_table_failures_are_retried_terminal_ones_are_not():
    transient = TableFailed(
        {
            "table": "t",
            "error": {
                "type": "source_unavailable",
                "transient": True,
                "message": "ClickHouse unreachable",
                "fix": "start it",
            },
        }
    )
    terminal = TableFailed(
        {
            "table": "t",
            "error": {"type": "type_refused", "transient": False, "message": "t.x: Decimal(76, 10)", "fix": "opt in"},
        }
    )
    assert _transient_only(None, None, _failed_with(transient)) is True
    assert _transient_only(None, None, _failed_with(terminal)) is False
    assert _transient_only(None, None, _failed_with(SourceUnavailable("down", "start it"))) is True
    assert _transient_only(None, None, _failed_with(TypeRefused("refused", "opt in"))) is False
    assert _transient_only(None, None, _failed_with(RuntimeError("bug"))) is False
    assert _transient_only(None, None, Completed(data={"ok": True})) is False


def test_a_view_left_behind_is_recorded_on_its_table_and_fails_the_cycle(monkeypatch):
    from iceberg_offload.engine.offload import cycle_status
    from iceberg_offload.maintenance import view
    from iceberg_offload.orchestration.flows import _refresh_views, _stale_text

    error = {"type": "source_error", "transient": False, "message": "NOT_ENOUGH_SPACE", "fix": "free space"}
    monkeypatch.setattr(
        view, "refresh_views", lambda settings, tables: [{"table": "a", "view": "k2.a_all", "error": error}]
    )
    outcomes = [{"table": "a", "status": "ok", "rows": 5}, {"table": "b", "status": "ok", "rows": 0}]
    stale = _refresh_views(None, ["a"], outcomes)  # type: ignore[arg-type]
    assert outcomes[0]["view"] == "k2.a_all" and outcomes[0]["view_error"] == error and "view" not in outcomes[1]
    assert cycle_status(outcomes) == "partial" and cycle_status(outcomes[1:]) == "success"
    assert _stale_text(stale) == "; view k2.a_all not re-pointed: NOT_ENOUGH_SPACE"
