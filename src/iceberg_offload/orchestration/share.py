"""What the table tasks of one flow run share in tasks fan-out (`CycleShare`): the settings the cycle loaded,
one catalog, ClickHouse sources handed to one task at a time, and the maintenance look (I11) batched.

Prefect-free: the maintenance look is given as a function of a set of tables (orchestration.tasks).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.config import Settings
from iceberg_offload.errors import OrchestrationError
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink


class CycleShare:
    """What the table tasks of one flow run share (tasks fan-out): the settings the cycle loaded, one catalog,
    and ClickHouse sources handed to one task at a time. Per table, opening a catalog (~0.2 s) and a source
    (~0.15 s) cost more than an idle table's offload. Both are opened by the first task that needs them (a
    catalog that does not answer is that task's transient error, retried as any), and a source still in a
    task's hands when the share closes is closed when the task gives it back."""

    def __init__(self, settings: Settings, maintained: Callable[[set[str]], set[str]] = lambda tables: set()) -> None:
        self.settings = settings
        self._looks = Looks(maintained)
        self.maintaining = self._looks.asks
        self._sink: Sink | None = None
        self._idle: list[tuple[contextlib.AbstractContextManager[Source], Source]] = []
        self._closed = False
        self._lock = threading.Lock()

    @property
    def sink(self) -> Sink:
        with self._lock:
            if self._sink is None:
                self._sink = Sink(open_catalog(self.settings.catalog), self.settings.catalog.namespace)
            return self._sink

    @contextlib.contextmanager
    def source(self) -> Iterator[Source]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the cycle's share is closed")
            held = self._idle.pop() if self._idle else None
        if held is None:
            opener = open_source(self.settings.source)
            held = (opener, opener.__enter__())
        try:
            yield held[1]
        finally:
            with self._lock:
                closed = self._closed
                if not closed:
                    self._idle.append(held)
            if closed:
                held[0].__exit__(None, None, None)

    def close(self) -> None:
        """Close the idle sources now; one a task still holds is closed when it comes back."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for opener, _ in idle:
            with contextlib.suppress(Exception):
                opener.__exit__(None, None, None)


_SHARED: dict[str, CycleShare] = {}


def shared(run_id: str) -> CycleShare | None:
    """The CycleShare of this flow run's cycle in this process, if one is open."""
    return _SHARED.get(run_id)


@contextlib.contextmanager
def shared_cycle(
    settings: Settings, run_id: str, maintained: Callable[[set[str]], set[str]] = lambda tables: set()
) -> Iterator[CycleShare]:
    """Table tasks of `run_id` in this process use one CycleShare until the block ends (then closed).
    `maintained`: which of a set of tables have their maintenance Running (one read)."""
    share = _SHARED[run_id] = CycleShare(settings, maintained)
    try:
        yield share
    finally:
        del _SHARED[run_id]
        share.close()


_INTERRUPTED = OrchestrationError(
    "the look for the table's maintenance was interrupted", "none needed: the table is offloaded by the next cycle"
)


class Looks:
    """Answers "is this table's maintenance Running?" for many tasks with few reads: a read takes every table
    asked since the last one started, one read at a time; a task is answered by a read that started after
    it asked (so after its own Running state was set, as I11 needs)."""

    def __init__(self, maintained: Callable[[set[str]], set[str]]) -> None:
        self._maintained = maintained
        self._cv = threading.Condition()
        self._asking: set[str] = set()
        self._done = 0  # reads finished
        self._busy = False  # a read is in flight
        self._answers: dict[int, tuple[set[str], Exception | None]] = {}
        self.reads = 0

    def asks(self, table: str) -> bool:
        with self._cv:
            self._asking.add(table)
            mine = self._done + (2 if self._busy else 1)  # the first read that starts after now
            while self._done < mine:
                if self._busy:
                    self._cv.wait()
                    continue
                self._busy, tables, self._asking = True, self._asking, set()
                self._cv.release()
                answer: tuple[set[str], Exception | None] = (set(), _INTERRUPTED)  # unless the read returns
                try:
                    answer = (self._maintained(tables), None)
                except Exception as exc:  # noqa: BLE001 - handed to every task of this read
                    answer = (set(), exc)
                finally:  # also when the read is interrupted: the tasks waiting for it are answered
                    self._cv.acquire()
                    self.reads += 1
                    self._done += 1
                    self._answers[self._done] = answer
                    self._busy = False
                    self._cv.notify_all()
            running, error = self._answers[mine]
        if error is not None:
            raise error
        return table in running
