"""What the offload of one table reads and writes: columns, key and Iceberg schema from ClickHouse and the
config, and the terms the stored watermark was written in (refused when the config contradicts them)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pyiceberg.table import Table
from pyiceberg.types import TimestamptzType

from iceberg_offload import names
from iceberg_offload.clickhouse.client import Source, TableInfo
from iceberg_offload.clickhouse.sql import quote
from iceberg_offload.clickhouse.types import split_top_level
from iceberg_offload.clickhouse.window import NS, Key, Watermark, Window, upper_bound
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.cadence import WAIT_MARGIN_SECONDS, round_up_hour, schedule_interval
from iceberg_offload.engine.identity import SourceIdentity
from iceberg_offload.engine.identity import check as check_identity
from iceberg_offload.engine.typemap import ColumnMap, iceberg_fields, plan_columns
from iceberg_offload.errors import ConfigError, SourceError, SourceMismatch, TTLTooShort, ValueOutOfRange
from iceberg_offload.iceberg.history import Commit
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.times import utc

TS_COLUMN, SEQ_COLUMN = names.WATERMARK_TIMESTAMP_COLUMN, names.WATERMARK_SEQUENCE_COLUMN
SOURCE = names.WATERMARK_SOURCE
"""The key the watermark is a value of and its table; named `watermark.*` so every commit that carries the
watermark (repair, compaction, expiry, `watermark set`) carries these too."""


TTL_SAMPLE_ROWS = 10000
"""A TTL that reads other columns than the timestamp is evaluated on this many of the table's newest rows."""


@dataclass(frozen=True)
class TTLSpan:
    column: str | None
    """None: the table TTL; else the column a column TTL resets."""
    expr: str
    span: float | None
    """Seconds the deadline keeps a row after its timestamp, at the least (None: unknown, nothing to lose)."""


@dataclass(frozen=True)
class TablePlan:
    """What the offload of one table reads and writes, derived from ClickHouse and the config."""

    cfg: TableSettings
    info: TableInfo
    key: Key
    columns: list[ColumnMap]
    identity: SourceIdentity
    """The ClickHouse table read: server, database, name, UUID (recorded in the Iceberg table's properties)."""

    @classmethod
    def build(cls, source: Source, cfg: TableSettings) -> TablePlan:
        info = source.table_info(cfg.source)
        all_cols = dict(info.columns)
        if cfg.columns:
            missing = [c for c in cfg.columns if c not in all_cols]
            if missing:
                raise SourceError(
                    f"{cfg.source}: columns {', '.join(missing)} are not in the ClickHouse table",
                    f"fix columns = [...]; the table has: {', '.join(all_cols)}",
                )
            chosen = [(c, all_cols[c]) for c in cfg.columns]
        else:
            chosen = list(info.columns)
        key = Key.for_table(cfg.source, all_cols, cfg.timestamp_column, cfg.sequence_column)
        unknown_keys = [c for c in cfg.key_columns if c not in dict(chosen)]
        if unknown_keys:
            raise ConfigError(
                f"{cfg.source}: key_columns {', '.join(unknown_keys)} are not offloaded columns",
                "fix key_columns (they must be among the offloaded columns)",
            )
        plans = plan_columns(cfg.source, chosen, cfg.column_types)
        _refuse_null_keys(source, cfg, info, all_cols)
        return cls(cfg, info, key, plans, SourceIdentity.of(source.settings, cfg.source, info.uuid))

    @property
    def sort_columns(self) -> list[str]:
        """The order every offload file is written in and the table declares: the longest prefix of the
        ClickHouse sorting key that is also a prefix of the watermark key (timestamp, sequence). A commit's
        chunks are key ranges in key order, each read in the sorting key's order (ClickHouse reads in order,
        no sort), so a file is sorted by exactly this much. Empty when the sorting key does not start with
        the timestamp column."""
        key = [self.key.ts] + ([self.key.seq] if self.key.seq else [])
        out = []
        for item, col in zip(split_top_level(self.info.sorting_key), key, strict=False):
            if item.strip() not in (col, quote(col)):
                break
            out.append(col)
        return out

    def ensure(self, sink: Sink, loaded: Table | None = None) -> Table:
        """The Iceberg table, created or evolved to this plan (`loaded`: the table as the caller just loaded it)."""
        fields = iceberg_fields(self.columns)
        ts_field = next(f for f in fields if f.name == self.cfg.timestamp_column)
        if self.cfg.partition_by != "none" and not isinstance(ts_field.field_type, TimestamptzType):
            raise ConfigError(
                f"{self.cfg.source}: partition_by = {self.cfg.partition_by!r} needs "
                f"{self.cfg.timestamp_column} as a timestamp, but it maps to {ts_field.field_type}",
                'set partition_by = "none" or drop its column_types override',
            )
        return sink.ensure_table(
            self.cfg.target,
            fields,
            self.cfg.partition_by,
            self.cfg.timestamp_column,
            evolve=not self.cfg.columns,
            properties=self.identity.to_props(),
            sort_columns=self.sort_columns,
            loaded=loaded,
        )

    def check_source(self, table: Table | None) -> None:
        """Refuse a source other than the one the table's rows came from (its recorded identity)."""
        if table is not None:
            check_identity(table, self.identity, self.cfg.target)

    def lineage(self) -> dict[str, str]:
        """What the watermark means, stored beside it (every commit that carries a watermark carries these):
        the key it is a value of and the ClickHouse table it was read from."""
        return {
            TS_COLUMN: self.cfg.timestamp_column,
            SEQ_COLUMN: self.cfg.sequence_column or "",
            SOURCE: self.info.qualified,
            names.SOURCE: self.info.qualified,
        }

    def check_lineage(self, last: Commit | None, source: bool = True, key: bool = True) -> None:
        """Refuse a config that would read the stored watermark as something else: another timestamp or
        sequence column (the window would skip rows, or take them twice), or another ClickHouse table
        (its rows would mix with these and its watermark skip rows). Adding a sequence column to a table
        offloaded without one is safe: every row at the watermark's timestamp is already committed. Without
        `source`, the table is not compared (`adopt` is moving the watermark to this source); without `key`,
        the key is not (`watermark set` is moving the watermark in the new key's terms)."""
        if last is None or (wm := last.watermark) is None:
            return
        props, cfg, fix = last.props, self.cfg, self._lineage_fix()
        src = props.get(SOURCE) or props.get(names.SOURCE)
        if source and src and src != self.info.qualified:
            raise SourceMismatch(
                f"{cfg.target}: the Iceberg table holds rows of {src} (its watermark's source), "
                f"but the config reads {self.identity.describe()}; its rows would mix with these "
                f"and the watermark skip its rows; nothing was written",
                f"restore [[tables]] source, or point target at a new Iceberg table, or (a "
                f"deliberate move) iceberg-offload adopt --table {cfg.target}",
            )
        if not key:
            return
        ts = props.get(TS_COLUMN)
        if ts is not None and ts != cfg.timestamp_column:
            raise ConfigError(
                f"{cfg.target}: the watermark {wm.describe()} is a value of timestamp_column {ts!r}, "
                f"but the config says {cfg.timestamp_column!r}; the window would skip rows",
                fix,
            )
        seq = props.get(SEQ_COLUMN)  # None: commits from before it was recorded
        if wm.seq is not None and (cfg.sequence_column is None or seq not in (None, cfg.sequence_column)):
            now = f"sequence_column {cfg.sequence_column!r}" if cfg.sequence_column else "no sequence_column"
            was = f"sequence_column {seq!r}" if seq else "a sequence column"
            raise ConfigError(
                f"{cfg.target}: the watermark {wm.describe()} holds a value of {was}, but the config "
                f"has {now}; rows at {utc(wm.ts_ns)} after it would be skipped",
                fix,
            )

    def _lineage_fix(self) -> str:
        return (
            f"restore the [[tables]] entry as it was, or point target at a new Iceberg table, or (deliberately) "
            f"move the watermark in the new terms: iceberg-offload watermark set --table {self.cfg.target} "
            f"--to <time> (it records the new key)"
        )

    def ttl_spans(self, source: Source) -> list[TTLSpan]:
        """How long each deadline keeps a row: the table TTL (column None) and every column TTL (past it, the
        column is reset to its default). A span None: nothing to lose (an unevaluable TTL on an empty table)."""
        deadlines = ([(None, self.info.ttl)] if self.info.ttl else []) + list(self.info.column_ttls)
        return [TTLSpan(col, expr, self._span(source, col, expr)) for col, expr in deadlines]

    def ttl_span(self, source: Source) -> float | None:
        """The shortest of ttl_spans (None: no TTL)."""
        return min((x.span for x in self.ttl_spans(source) if x.span is not None), default=None)

    def _span(self, source: Source, column: str | None, expr: str) -> float | None:
        """The shortest time `expr` keeps a row, ClickHouse evaluating it on rows stamped over the next day;
        when it needs other columns than the timestamp, on the table's newest rows. Never "no TTL" for a TTL
        that could not be read while the table holds rows: TTLTooShort (the check cannot be made)."""
        ts, n = quote(self.cfg.timestamp_column), self.key.aliases.name("n")
        # rows stamped at every minute of a day from now: a TTL rounded to an hour or a day keeps the row
        # stamped just before the boundary the least time, and that is the one that must not be lost
        # (from the minute: the same query for every table with this TTL and timestamp column, asked once)
        stamps = self.key.ts_literal_of(f"{time.time_ns() // (60 * NS) * 60 * NS} + {n} * {60 * NS}")
        try:
            rows = source.memo(
                f"SELECT min(toInt64(toUnixTimestamp(toDateTime({expr}))) - "
                f"toInt64(toUnixTimestamp({ts}))) FROM (SELECT {stamps} AS {ts} FROM "
                f"(SELECT number AS {n} FROM numbers(1440)))"
            )
            return float(rows[0][0])
        except SourceError:
            pass
        tsql = self.info.qualified + (" FINAL" if self.cfg.final else "")
        try:  # the TTL reads other columns: the rows most recently written, the next to wait for a window
            rows = source.rows(
                f"SELECT count(), min(toInt64(toUnixTimestamp(toDateTime({expr}))) - "
                f"toInt64(intDiv({self.key.ts_ms_of(ts)}, 1000))) FROM (SELECT * FROM {tsql} "
                f"ORDER BY {self.key.order_by(desc=True)} LIMIT {TTL_SAMPLE_ROWS})"
            )
            return float(rows[0][1]) if rows[0][0] else None
        except SourceError as exc:
            if not source.rows(f"SELECT count() FROM (SELECT 1 FROM {tsql} LIMIT 1)")[0][0]:
                return None  # nothing the TTL could delete yet
            what = f"the column TTL of {column!r}" if column else "the TTL"
            raise TTLTooShort(
                f"{self.cfg.target}: {what} of {self.info.qualified} ({expr}) could not be evaluated, neither on "
                f"rows stamped from now nor on the table's newest rows ({exc.args[0] if exc.args else exc}): "
                f"the TTL check cannot tell whether ClickHouse deletes (or resets) a row before it is offloaded, "
                f"so it refuses; nothing was read",
                f"make the TTL an expression ClickHouse evaluates on the table's rows (ALTER TABLE "
                f"{self.info.qualified} MODIFY TTL toDateTime({ts}) + INTERVAL <n> DAY), or check it by hand "
                f"and remove it; report the expression if ClickHouse accepts it and this is wrong",
            ) from exc

    def check_ttl(self, settings: Settings, spans: list[TTLSpan]) -> None:
        """Refuse a TTL that deletes a row (or a column TTL that resets a value) before it can be offloaded: a
        row waits settle_seconds (and closed_after_seconds) before it is in a window, then up to a schedule
        interval for the next cycle. The shortest deadline is named."""
        known = [x for x in spans if x.span is not None]
        if not known:
            return
        short = min(known, key=lambda x: x.span or 0.0)
        span = short.span or 0.0
        settle, closed = settings.offload.settle_seconds, self.cfg.closed_after_seconds
        interval = schedule_interval(settings)
        need = settle + closed + interval + WAIT_MARGIN_SECONDS
        if span > need:
            return
        ts = quote(self.cfg.timestamp_column)
        wait = (
            f"but a row waits up to settle_seconds {settle} + closed_after_seconds {closed} + the schedule "
            f"interval {interval} s (+ {WAIT_MARGIN_SECONDS} s margin) before it is offloaded"
        )
        lower = "or lower settle_seconds / closed_after_seconds / the schedule interval"
        if short.column is None:
            raise TTLTooShort(
                f"{self.cfg.target}: the ClickHouse TTL ({short.expr}) deletes a row {span:.0f} s after its "
                f"timestamp, {wait}: ClickHouse would delete it first; nothing was read",
                f"lengthen the TTL (ALTER TABLE {self.info.qualified} MODIFY TTL toDateTime({ts}) + INTERVAL "
                f"{round_up_hour(need)} SECOND), {lower}",
            )
        col = quote(short.column)
        ctype = dict(self.info.columns).get(short.column, "<type>")
        raise TTLTooShort(
            f"{self.cfg.target}: the ClickHouse column TTL of {short.column!r} ({short.expr}) resets the column "
            f"to its default {span:.0f} s after a row's timestamp, {wait}: Iceberg would receive the default, "
            f"not the value written; nothing was read",
            f"lengthen the column TTL (ALTER TABLE {self.info.qualified} MODIFY COLUMN {col} {ctype} TTL "
            f"toDateTime({ts}) + INTERVAL {round_up_hour(need)} SECOND) or remove it (MODIFY COLUMN {col} REMOVE "
            f"TTL), {lower}",
        )

    def window(self, settings: Settings, lower: Watermark | None, now_ns: int) -> Window:
        return Window(lower, upper_bound(now_ns, settings.offload.settle_seconds, self.cfg.closed_after_seconds))


def _refuse_null_keys(source: Source, cfg: TableSettings, info: TableInfo, columns: dict[str, str]) -> None:
    """A row whose timestamp or sequence is NULL has no place in any window: it would never be offloaded.
    Stop the table before anything is written instead of leaving such rows behind without a word."""
    nullable = [c for c in (cfg.timestamp_column, cfg.sequence_column) if c and "Nullable(" in columns[c]]
    if not nullable:
        return
    cond = " OR ".join(f"{quote(c)} IS NULL" for c in nullable)
    nulls = int(source.rows(f"SELECT count() FROM {info.qualified}{' FINAL' if cfg.final else ''} WHERE {cond}")[0][0])
    if nulls:
        names = " or ".join(nullable)
        raise ValueOutOfRange(
            f"{info.database}.{info.name}: {nulls} rows have NULL in {names}; such rows fit no window and would "
            f"never be offloaded; nothing was written",
            f"give them a value (ALTER TABLE {info.qualified} UPDATE {quote(nullable[0])} = ... WHERE "
            f"{quote(nullable[0])} IS NULL) or delete them, then run again",
        )
