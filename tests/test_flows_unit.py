"""The retry rule of the table task, on real Prefect state objects: only transient errors are retried."""

from __future__ import annotations

from prefect.states import Completed, Failed

from iceberg_offload.errors import SourceUnavailable, TypeRefused
from iceberg_offload.flows import TableFailed, _transient_only


def _failed_with(exc: Exception):
    return Failed(data=exc, message=str(exc))


def test_transient_table_failures_are_retried_terminal_ones_are_not():
    transient = TableFailed({"table": "t", "error": {"type": "source_unavailable", "transient": True,
                                                     "message": "ClickHouse unreachable", "fix": "start it"}})
    terminal = TableFailed({"table": "t", "error": {"type": "type_refused", "transient": False,
                                                    "message": "t.x: Decimal(76, 10)", "fix": "opt in"}})
    assert _transient_only(None, None, _failed_with(transient)) is True
    assert _transient_only(None, None, _failed_with(terminal)) is False
    assert _transient_only(None, None, _failed_with(SourceUnavailable("down", "start it"))) is True
    assert _transient_only(None, None, _failed_with(TypeRefused("refused", "opt in"))) is False
    assert _transient_only(None, None, _failed_with(RuntimeError("bug"))) is False
    assert _transient_only(None, None, Completed(data={"ok": True})) is False
