"""A progress bar on stderr for long work: one bar per table (and step), with rows done, rows/s and the time
left. Only on a terminal and only for text output; elsewhere (a pipe, --json, the tests) it writes nothing.

The engine calls it as `progress(label, done, total)` (engine.compare.Progress): the offload of a backlog,
reconcile and verify per page of hours compared (and repair per hour written), compaction per file written.
rich is imported at the first call that shows something.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Any

from iceberg_offload.cli.output import is_terminal


class ProgressBar:
    def __init__(self, enabled: bool, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and is_terminal(self.stream)
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        if self._bars is None:
            self._bars = _start(self.stream)
        task = self._tasks.get(label)
        if task is None:
            task = self._tasks[label] = self._bars.add_task(label, total=total)
        self._bars.update(task, completed=min(done, total), total=total)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _start(stream: IO[str]) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
    from rich.table import Column
    from rich.text import Text

    class Rows(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{int(task.completed):,}/{int(task.total or 0):,} rows")

    class Speed(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f} rows/s")

    whole = lambda: Column(no_wrap=True)  # noqa: E731 - the bar gives way, the figures do not wrap
    label = Column(no_wrap=True, overflow="ellipsis", max_width=40)
    bars = Progress(
        TextColumn("{task.description}", markup=False, table_column=label),
        BarColumn(bar_width=None),
        Rows(table_column=whole()),
        Speed(table_column=whole()),
        TimeRemainingColumn(table_column=whole()),
        console=Console(file=stream, highlight=False),
        transient=False,
        expand=True,
    )
    bars.start()
    return bars
