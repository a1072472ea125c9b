"""What each command prints under `--json`, as typed models: the one definition of every payload. The
commands build these dicts, docs/json.md is generated from these classes (`payload_docs.markdown`), and the
test suite checks every payload a command prints against its model (`payload_docs.check`, switched on by
OFFLOAD_CHECK_PAYLOADS=1).

The rules every payload keeps:
- `ok` at the top: the command did what it was asked (its exit code is 0);
- every key always present, `null` when it does not apply (no key appears only sometimes);
- times are RFC 3339 UTC strings ending in `Z` (times.utc); where exactness matters (a watermark, a row's
  timestamp) the integer nanoseconds sit beside them as `<name>_ns`;
- several tables are a list of objects with a `table` key, never an object keyed by table name;
- durations are `*_seconds` (or `seconds`) in seconds, counts are integers;
- integers are exact (snapshot ids, `_ns`): jq before 1.7 reads those above 2^53 as doubles, so in jq use
  the strings (`.watermark.ts`), and the integers in a language with exact integers (Python).
A failed command prints `ErrorPayload` instead (exit 1 or 2; the error's `type` is in docs/cli.md).

The models of the operations commands (doctor, recover, deploy, the stack, schedules) are in
payloads_ops.py."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict


class Error(TypedDict):
    """An error as data: its `type` (docs/cli.md lists them), whether retrying as is may help, the message
    and the next thing to do."""

    type: str
    transient: bool
    message: str
    fix: str


class ErrorPayload(TypedDict):
    """What any command prints instead of its payload when it stops on an error (`type` usage: a bad
    command line, exit 2)."""

    ok: Literal[False]
    error: Error


class Watermark(TypedDict):
    """The newest row in Iceberg: its timestamp and, for a table with a sequence column, its sequence value."""

    ts: str
    ts_ns: int
    seq: int | None


# -- run, demo ---------------------------------------------------------------------------------------------------
class TableRun(TypedDict):
    """One table's part of a cycle."""

    table: str
    layer: str
    status: Literal["ok", "failed"]
    rows: Annotated[int, "rows committed to Iceberg by this cycle"]
    commits: int
    watermark_before: Watermark | None
    watermark_after: Watermark | None
    pending_rows: Annotated[int, "rows behind the window's upper bound not yet offloaded after the cycle"]
    late_rows: Annotated[int, "rows found missing behind the watermark by the late-row sweep"]
    late_rows_added: int
    late_rows_left: int
    late_oldest: Annotated[str | None, "start of the oldest hour still missing rows"]
    late_oldest_ns: int | None
    late_checked: Annotated[bool, "the sweep ran: the late_* figures are this cycle's"]
    late_since: Annotated[str | None, "the first timestamp the sweep compared"]
    late_since_ns: int | None
    late_error: Error | None
    view: Annotated[str | None, "the hot + cold view re-pointed after this cycle"]
    view_error: Error | None
    duration_seconds: float
    error: Error | None


class Run(TypedDict):
    """`run`: one offload cycle. `ok`: status success (partial and failed exit 1)."""

    ok: bool
    run_id: str
    status: Literal["success", "partial", "failed"]
    duration_seconds: float
    rows: int
    tables: list[TableRun]


class DemoInserted(TypedDict):
    table: Annotated[str, "a ClickHouse table of the demo"]
    rows: int


class DemoTable(TypedDict):
    table: str
    status: Literal["ok", "failed"]
    rows_this_run: int
    cold_rows: int
    watermark: Watermark | None
    pending_rows: int | None


class Demo(TypedDict):
    """`demo`: the hot rows it inserted, the cycle that offloaded them, each table after it."""

    ok: bool
    config_written: bool
    config: str
    inserted: list[DemoInserted]
    cycle: Run
    tables: list[DemoTable]


# -- status, watermark, adopt, verify --------------------------------------------------------------------------
class TableState(TypedDict):
    """One table in both tiers."""

    table: str
    layer: str
    source: str
    watermark: Watermark | None
    lag_seconds: Annotated[float | None, "now minus the watermark"]
    cold_rows: int
    commits: int
    rows_total: int
    commits_total: int
    last_commit_at: str | None
    last_commit_seconds: float | None
    hot_rows: int | None
    oldest_hot: str | None
    oldest_hot_ns: int | None
    newest_hot: str | None
    newest_hot_ns: int | None
    pending_rows: int | None
    ttl: str | None
    column_ttl: dict[str, str] | None
    ttl_headroom_seconds: Annotated[float | None, "until the TTL deletes the first row not yet in Iceberg"]
    ttl_deadline: Annotated[str | None, "when it does"]
    ttl_span_seconds: Annotated[float | None, "how long the TTL keeps a row"]
    data_files: int
    repairs: int
    repaired_rows: int
    compactions: int
    late_rows: Annotated[int | None, "rows behind the watermark missing from Iceberg (null: not known here)"]
    late_oldest: str | None
    late_oldest_ns: int | None
    error: Error | None


class Status(TypedDict):
    """`status`. `ok`: no table has an error."""

    ok: bool
    tables: list[TableState]


class Commit(TypedDict):
    """An offload commit (or a `watermark set`): the snapshot and the watermark it carries."""

    snapshot_id: int
    committed_at: str
    operation: str
    watermark: Watermark
    run_id: str | None
    rows: int
    window_lower: str | None
    window_lower_ns: Annotated[int | None, "the window's lower bound (exclusive; null: from the start)"]
    window_upper: str | None
    window_upper_ns: int | None


class WatermarkHistory(TypedDict):
    table: str
    commits: Annotated[list[Commit], "newest first; empty: nothing offloaded"]


class WatermarkShow(TypedDict):
    """`watermark show`."""

    ok: bool
    tables: list[WatermarkHistory]


class WatermarkSet(TypedDict):
    """`watermark set`: the move, what it does to rows, and whether it was committed."""

    ok: bool
    table: str
    current: Watermark | None
    new: Watermark
    direction: Literal["back", "forward"]
    rows_affected: int
    rows_offloaded_again: int
    effect: str
    applied: bool


class SourceIdentity(TypedDict):
    server: str
    database: str
    table: str
    uuid: str | None


class Adopt(TypedDict):
    """`adopt`: the ClickHouse table the Iceberg rows came from against the configured one."""

    ok: bool
    table: str
    recorded: SourceIdentity | None
    watermark_source: str | None
    configured: SourceIdentity
    cold_rows: int
    watermark: Watermark | None
    hot_rows_above: int
    hot_rows_at_or_below: int
    changes: bool
    effect: str
    applied: bool


class TableVerify(TypedDict):
    table: str
    ok: bool
    hot_rows: int
    cold_rows: int
    missing: int
    duplicates: int
    extra: int
    changed: int
    values: Annotated[bool, "every column was compared (else keys only)"]
    buckets_checked: int
    buckets_bad: Annotated[list[str], "start of each hour that differs"]
    error: Error | None


class Verify(TypedDict):
    """`verify`. `ok`: every table is equal in both tiers (else exit 1)."""

    ok: bool
    tables: list[TableVerify]
