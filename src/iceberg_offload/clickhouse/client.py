"""ClickHouse through clickhouse-connect: `chdb://path` (embedded) or `http(s)://` (a server).

The embedded engine can be open in one process at a time, and the worker, its flow runs, the exporter
and the CLI are separate processes. So a process holds the engine only while it works: `open_source()`
takes an exclusive file lock beside the chdb directory (bounded wait, the holder named on timeout),
shares one engine between the threads of the process, and closes it when the last user leaves.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from iceberg_offload.clickhouse.connect import database_error, open_client, read_answer
from iceberg_offload.clickhouse.embedded import EngineLock, chdb_path, engine_lock
from iceberg_offload.clickhouse.settings import ARROW_SHAPE, EMBEDDED_ARROW, FULL_ANSWER, arrow_settings
from iceberg_offload.clickhouse.sql import literal, quote
from iceberg_offload.clickhouse.ttl import column_ttls, ttl_expressions
from iceberg_offload.config import SourceSettings
from iceberg_offload.errors import ResultMismatch, SourceError, SourceUnavailable


@dataclass(frozen=True)
class TableInfo:
    database: str
    name: str
    engine: str
    sorting_key: str
    ttl: str | None
    """When the TTL may delete a row, a bound for every row (e.g. `toDateTime(ts) + toIntervalDay(7)`): every
    deleting rule, `WHERE` conditions ignored. None: no TTL deletes rows."""
    columns: tuple[tuple[str, str], ...]
    uuid: str = ""
    """system.tables.uuid ("" for none: an Ordinary database's tables have the all-zero UUID)."""
    ttl_row: str | None = None
    """When the TTL deletes this row: as `ttl`, but a `DELETE WHERE` rule counts only for the rows its
    condition matches (a row no rule matches: 2106-02-07, the last DateTime, i.e. never)."""
    column_ttls: tuple[tuple[str, str], ...] = ()
    """(column, TTL expression) of each column TTL: past it, ClickHouse resets the column to its default at a
    merge, so a row offloaded later carries the default. Each is a deadline for the TTL check and headroom."""
    definition: str = ""
    """The table's UUID and CREATE statement as read: `Source.definition` tells whether it is still the same."""

    @property
    def deadline(self) -> str | None:
        """A bound on when any row is deleted or loses a value: the earliest of the table TTL (WHERE ignored)
        and every column TTL. None: no TTL deletes or resets anything."""
        exprs = ([self.ttl] if self.ttl else []) + [e for _, e in self.column_ttls]
        if len(exprs) <= 1:
            return exprs[0] if exprs else None
        return "least(" + ", ".join(f"toDateTime({e})" for e in exprs) + ")"

    @property
    def row_deadline(self) -> str | None:
        """When a given row is deleted or loses a value: the earliest of the table TTL (per row) and every
        column TTL. None: no TTL deletes or resets anything."""
        exprs = ([self.ttl_row or self.ttl] if self.ttl else []) + [e for _, e in self.column_ttls]
        if len(exprs) <= 1:
            return exprs[0] if exprs else None
        return "least(" + ", ".join(f"toDateTime({e})" for e in exprs) + ")"

    @property
    def qualified(self) -> str:
        return f"{quote(self.database)}.{quote(self.name)}"


class Source:
    """One client on one thread. Use `open_source(settings)`; never construct directly.

    A query that fails leaves the embedded engine's connection holding its partial output, which the next
    query's result is then read on top of (measured: another table's rows, or an unreadable result). So any
    error discards the handle and the client, and the next query opens fresh ones; and every Arrow result is
    checked to be the one asked for (`arrow(sql, names)`: the aliases it was asked to carry)."""

    def __init__(self, settings: SourceSettings, client: Any) -> None:
        self.settings = settings
        self.database = settings.database
        self._client: Any = client
        self.embedded = chdb_path(settings.dsn)
        self._engine: Any = None  # a chdb handle of our own for Arrow reads (see _fetch_arrow)
        self._arrow_settings: dict[str, str] | None = None  # over HTTP: ARROW_SHAPE as the server knows it
        self._engine_mutex = threading.Lock()
        self._memo: dict[str, list[tuple[Any, ...]]] = {}

    # -- queries -----------------------------------------------------------------------------------
    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self._translate(sql):
            return list(self.client.query(sql).result_rows)

    @property
    def client(self) -> Any:
        """The clickhouse-connect client, opened again after a discard."""
        if self._client is None:
            self._client = open_client(self.settings)
        return self._client

    def command(self, sql: str) -> None:
        with self._translate(sql):
            self.client.command(sql)

    def arrow(self, sql: str, names: list[str] | None = None) -> pa.Table:
        """The result of `sql` as Arrow; with `names`, the result must carry exactly these column names
        (give each query aliases of its own, see `window.Aliases`), else ResultMismatch."""
        with self._translate(sql):
            tbl = self._fetch_arrow(sql)
            if names is not None and tbl.column_names != names:
                raise ResultMismatch(
                    f"ClickHouse answered with columns {tbl.column_names[:8]} to a query for "
                    f"{names[:8]}; the result was discarded, nothing was written",
                    "none needed: the next run reads again on a fresh connection",
                )
            return tbl

    def _fetch_arrow(self, sql: str) -> pa.Table:
        """The one place result rows cross from ClickHouse, in the shape of settings.ARROW_SHAPE. Over HTTP,
        the answer's bytes, read here (a server error after the first byte is in them). Embedded, through a
        chdb handle of our own that hands over a pyarrow table with Arrow's lz4 framing off: through the
        client, the framing and the per-query settings round trips cost half as much CPU again as producing
        the rows."""
        if not self.embedded or self.embedded == ":memory:":
            if self._arrow_settings is None:
                self._arrow_settings = arrow_settings(self.client)
            return read_answer(self.client.raw_query(sql, fmt="Arrow", settings=self._arrow_settings))
        with self._engine_mutex:
            if self._engine is None:
                import chdb  # noqa: PLC0415 - the embedded engine only when a chdb:// source opens

                self._engine = chdb.connect(self.embedded)
                for key, value in {**FULL_ANSWER, **ARROW_SHAPE, **EMBEDDED_ARROW}.items():
                    self._engine.query(f"SET {key} = {literal(value)}")
            result = self._engine.query(sql, "Arrow")
        # read in place: the Arrow buffers point into the result, which the buffer's base keeps alive
        view = result.get_memview().view()
        raw = pa.py_buffer(view)
        buf = pa.foreign_buffer(raw.address, raw.size, base=(result, view))
        reader = pa.ipc.open_file(buf)
        # One result, whole: the schema the stream starts with is the footer's (a stale partial output in
        # front of the result would start with its own query's schema).
        if raw.size < 16 or not pa.ipc.read_schema(buf.slice(8)).equals(reader.schema):
            raise ResultMismatch(
                "the embedded ClickHouse answered with another query's output in front of this "
                "one; the result was discarded, nothing was written",
                "none needed: the next run reads again on a fresh connection",
            )
        return reader.read_all()

    def discard(self) -> None:
        """Drop the connections this source holds (after any error); the next query opens new ones."""
        self.close()
        if self.embedded is not None and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def close(self, client: bool = False) -> None:
        """Close our engine handle (and with `client`, the client too)."""
        if client and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        with self._engine_mutex:
            if self._engine is not None:
                with contextlib.suppress(Exception):
                    self._engine.close()
                self._engine = None

    def table_info(self, table: str) -> TableInfo:
        """The table as ClickHouse shows it now, in one query (the columns in a subquery: per table, a query costs
        more than what it reads)."""
        db, name = literal(self.database), literal(table)
        found = self.rows(
            f"SELECT engine, sorting_key, engine_full, toString(uuid), create_table_query, "
            f"(SELECT arraySort(groupArray((position, name, type))) FROM system.columns "
            f"WHERE database = {db} AND table = {name}) FROM system.tables WHERE database = {db} AND name = {name}"
        )
        if not found:
            raise self._missing(table)
        engine, sorting_key, engine_full, uuid, create_query, cols = found[0]
        bound, per_row = ttl_expressions(engine_full)
        return TableInfo(
            self.database,
            table,
            engine,
            sorting_key,
            bound,
            tuple((str(n), str(t)) for _, n, t in cols),
            "" if uuid == "00000000-0000-0000-0000-000000000000" else str(uuid),
            per_row,
            column_ttls(str(create_query)),
            _definition(uuid, create_query),
        )

    def _missing(self, table: str) -> SourceError:
        db = literal(self.database)
        dbs = self.rows(f"SELECT name FROM system.databases WHERE name = {db}")
        where = f"database {self.database!r}" if dbs else f"server (no database {self.database!r})"
        fix = "fix [[tables]] source or [source] database in the config"
        if self.embedded:  # name the folder: a wrong dsn opens a new, empty engine there
            where = (
                f"database {self.database!r} of the embedded ClickHouse at {self.embedded}"
                if dbs
                else f"embedded ClickHouse at {self.embedded} (no database {self.database!r}: a new, empty "
                f"engine folder?)"
            )
            fix = (
                "point [source] dsn at the engine folder that holds it (a relative path is resolved "
                "against the config file's folder), or " + fix
            )
        return SourceError(f"ClickHouse table {self.database}.{table} does not exist in the {where}", fix)

    def definition(self, table: str) -> str:
        """The table's UUID and CREATE statement now (`TableInfo.definition`; "" if it is gone): one query to
        tell that a plan made earlier still describes it (not dropped and recreated, no TTL or column changed)."""
        found = self.rows(
            f"SELECT toString(uuid), create_table_query FROM system.tables "
            f"WHERE database = {literal(self.database)} AND name = {literal(table)}"
        )
        return _definition(*found[0]) if found else ""

    def memo(self, sql: str) -> list[tuple[Any, ...]]:
        """`rows(sql)` for a query that reads no table (a constant expression): asked once per Source. The
        TTL check asks the same of every table with the same TTL and timestamp column."""
        if sql not in self._memo:
            self._memo[sql] = self.rows(sql)
        return self._memo[sql]

    @contextlib.contextmanager
    def _translate(self, sql: str) -> Iterator[None]:
        from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError  # noqa: PLC0415

        engine_errors: tuple[type[Exception], ...] = ()
        if self.embedded:  # chdb is ~240 MB of resident memory: never loaded for a server DSN
            from chdb._exceptions import ChdbError  # noqa: PLC0415

            engine_errors = (ChdbError,)

        try:
            try:
                yield
            except BaseException:
                self.discard()  # a failed query's leftovers must never reach the next query
                raise
        except engine_errors as exc:  # our own embedded handle (see _fetch_arrow)
            raise database_error(exc, sql) from exc
        except OperationalError as exc:
            raise SourceUnavailable(
                f"ClickHouse at {self.settings.dsn} is unreachable: {exc}",
                "check that ClickHouse is running and [source] dsn is right",
            ) from exc
        except DatabaseError as exc:
            raise database_error(exc, sql) from exc
        except OSError as exc:  # a socket that died under the driver (reset, broken pipe, timeout)
            raise SourceUnavailable(
                f"ClickHouse at {self.settings.dsn} is unreachable: {exc}",
                "check that ClickHouse is running and [source] dsn is right",
            ) from exc


def _definition(uuid: object, create_query: object) -> str:
    return f"{uuid}\n{create_query}"


@contextlib.contextmanager
def open_source(settings: SourceSettings) -> Iterator[Source]:
    """A connected Source for this thread; the embedded engine is locked for the process meanwhile."""
    path = chdb_path(settings.dsn)
    lock: EngineLock | None = None
    if path is not None and path != ":memory:":
        lock = engine_lock(path)
        lock.acquire(settings.lock_timeout_seconds)
    try:
        source = Source(settings, open_client(settings))
        try:
            yield source
        finally:
            source.close(client=True)
    finally:
        if lock is not None:
            lock.release()
