"""The short chaos run CI does: a few minutes of kills; nothing lost, nothing twice."""

from __future__ import annotations

import pytest

from .harness import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_chaos_loses_and_duplicates_nothing(tmp_path):
    report = run(tmp_path, cycles=5, seed=20261129)  # at least one kill a cycle
    said = {k: v for k, v in report.as_dict().items() if k in ("kills", "finish_exit_codes", "per_table")}
    assert report.total_kills >= 5, said
    assert report.rows_inserted > 0 and report.hot_rows == report.rows_inserted
    # the closing commands succeed: recover (or, when it could not, one plain run) and then reconcile
    codes = report.finish_exit_codes
    assert (report.final_recover_ok or codes.get("run") == 0) and codes.get("reconcile") == 0, said
    assert (report.rows_lost, report.rows_duplicated, report.rows_unexpected) == (0, 0, 0), said
    assert report.rows_not_offloaded == 0, said
    assert report.windows_written_twice == 0 and report.cold_rows == report.hot_rows
