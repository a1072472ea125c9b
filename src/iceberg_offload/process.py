"""What each of our processes sets up before its threads start."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterator


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas for this process. The embedded engine, the reader thread and
    pyiceberg's writer pool otherwise fragment into one arena each; measured on a 30 M-row backlog this
    cut peak RSS by about 15% (docs/benchmarks.md). Call before threads start; harmless elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside, one full collection when the outermost pause ends. The
    libraries a run imports as it goes (pyiceberg, SQLAlchemy, pyarrow's modules, pandas) make hundreds of
    thousands of objects, and the collector traverses them again and again while they load and while the
    offload allocates: about a quarter of their import CPU time, and ~5% of an offload's (docs/benchmarks.md).
    Reference counting still frees everything that is not a cycle. For work that ends (a cycle, a command
    that runs once), never around a long-lived worker."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect()
