"""One snapshot of the main branch as our history reads it. The watermark lives only in snapshot
summaries (`offload.watermark.*`), and so do the running totals, counted forward in every summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iceberg_offload import names
from iceberg_offload.clickhouse.window import Watermark
from iceberg_offload.times import utc_ms, utc_or_none


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
        """payloads.Commit."""
        wm = self.watermark
        lower, upper = (_int(self.props.get(k)) for k in (names.WINDOW_LOWER_NS, names.WINDOW_UPPER_NS))
        return {
            "snapshot_id": self.snapshot_id,
            "committed_at": utc_ms(self.timestamp_ms),
            "operation": self.operation,
            "watermark": wm.as_dict() if wm else None,
            "run_id": self.props.get(names.RUN_ID),
            "rows": int(self.props.get(names.ROWS, 0)),
            "window_lower": utc_or_none(lower),
            "window_lower_ns": lower,
            "window_upper": utc_or_none(upper),
            "window_upper_ns": upper,
        }


def _int(text: str | None) -> int | None:
    return int(text) if text else None
