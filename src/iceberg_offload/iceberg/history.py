"""One snapshot of the main branch as our history reads it. The watermark lives only in snapshot
summaries (`offload.watermark.*`), and so do the running totals, counted forward in every summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iceberg_offload import names
from iceberg_offload.clickhouse.window import Watermark


@dataclass(frozen=True)
class Commit:
    snapshot_id: int
    timestamp_ms: int
    operation: str
    props: dict[str, str]

    @property
    def watermark(self) -> Watermark | None:
        return Watermark.from_props(self.props)

    @property
    def totals(self) -> tuple[int, int]:
        """(rows, commits) offloaded into the table up to and including this commit. Counted forward in
        every summary, so they survive snapshot expiry (maintenance carries the newest summary forward)."""
        return int(self.props.get(names.ROWS_TOTAL, 0)), int(self.props.get(names.COMMITS_TOTAL, 0))

    def as_dict(self) -> dict[str, Any]:
        wm = self.watermark
        return {
            "snapshot_id": self.snapshot_id,
            "committed_at_ms": self.timestamp_ms,
            "operation": self.operation,
            "watermark": wm.as_dict() if wm else None,
            "run_id": self.props.get(names.RUN_ID),
            "rows": int(self.props.get(names.ROWS, 0)),
            "window_lower_ns": self.props.get(names.WINDOW_LOWER_NS) or None,
            "window_upper_ns": self.props.get(names.WINDOW_UPPER_NS) or None,
        }
