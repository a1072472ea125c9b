"""The short chaos run CI does: a few minutes of kills; nothing lost, nothing twice."""

from __future__ import annotations

import pytest

from .harness import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_chaos_loses_and_duplicates_nothing(tmp_path):
    report = run(tmp_path, cycles=5, seed=20261129)  # at least one kill a cycle
    assert report.total_kills >= 5, report.as_dict()
    assert report.rows_inserted > 0 and report.hot_rows == report.rows_inserted
    assert (report.rows_lost, report.rows_duplicated, report.rows_unexpected) == (0, 0, 0), report.as_dict()
    assert report.windows_written_twice == 0 and report.cold_rows == report.hot_rows
