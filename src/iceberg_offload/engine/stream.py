"""The read side of one table's offload: its commits planned and read ahead on a thread, in bounded chunks."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pyiceberg.table import Table

from iceberg_offload.clickhouse.client import Source
from iceberg_offload.clickhouse.window import Watermark, Window, chunk_query, plan_query
from iceberg_offload.config import Settings
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.engine.wire import conform, file_schema
from iceberg_offload.errors import ResultMismatch


class Stream:
    """The window's commits, planned and read one after another on a thread that runs ahead of the writer,
    across commit boundaries: each commit is the next `max_rows_per_commit` keys (cut at the greatest), read
    with one bounded key-range query per `read_rows` keys and handed over in batches of about `batch_rows`.
    The commits' compare-and-swap keeps this safe: a read-ahead past a commit that fails is thrown away."""

    def __init__(self, source: Source, plan: TablePlan, table: Table, window: Window, settings: Settings) -> None:
        self.items = prefetch(self._produce(source, plan, file_schema(table.schema().as_arrow()), window, settings), 2)
        self.pending: Watermark | None = None

    def next_commit(self) -> Watermark | None:
        """The cut of the next commit, or None when the window is empty; its rows follow in chunks()."""
        if self.pending is not None:
            raise RuntimeError("the previous commit's chunks were not read to the end")
        item = next(self.items, None)
        if item is None:
            return None
        assert isinstance(item, Watermark)
        self.pending = item
        return item

    def chunks(self) -> Iterator[pa.Table]:
        for item in self.items:
            if item is _END:
                self.pending = None
                return
            yield item

    def close(self) -> None:
        self.items.close()  # type: ignore[attr-defined]

    @staticmethod
    def _produce(
        source: Source, plan: TablePlan, target: pa.Schema, window: Window, settings: Settings
    ) -> Iterator[Any]:
        tsql, final, key, batch_rows = plan.info.qualified, plan.cfg.final, plan.key, settings.offload.batch_rows
        select, order = [c.select for c in plan.columns], plan.sort_columns
        while True:
            splits, last, n = source.rows(
                plan_query(tsql, final, key, window, settings.offload.max_rows_per_commit, settings.offload.read_rows)
            )[0]
            if not n:
                return
            cut = key.watermark(last)
            yield cut
            lower, pending, rows, read = window.lower, [], 0, 0
            for upper in sorted({key.watermark(x) for x in splits if key.watermark(x) < cut}) + [cut]:
                sql, names = chunk_query(tsql, final, key, select, Window(lower, window.upper_ns), upper, order)
                part = conform(source.arrow(sql, names), plan.columns, target, plan.cfg.source)
                lower = upper
                pending.append(part)
                rows += part.num_rows
                read += part.num_rows
                if rows >= batch_rows:
                    yield pa.concat_tables(pending)
                    pending, rows = [], 0
            if pending:
                yield pa.concat_tables(pending)
            if read < n:  # the key range holds at least the rows the plan counted in it (more: late arrivals)
                raise ResultMismatch(
                    f"{plan.cfg.source}: read {read} rows up to {cut.describe()} where the plan "
                    f"counted {n}; the commit was discarded, nothing was written",
                    "none needed: the next run reads again (rows deleted meanwhile, or a "
                    "result that was not the query's)",
                )
            yield _END
            window = Window(cut, window.upper_ns)


_DONE = object()
_END = object()


def prefetch(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Produce the next item on a thread while the consumer works on the current one."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            q.put(exc)

    worker = threading.Thread(target=run, name="offload-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        worker.join()  # never leave a reader on the source: the next table reads through it
