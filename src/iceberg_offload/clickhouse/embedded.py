"""The embedded engine's cross-process lock and path.

The embedded engine can be open in one process at a time, and the worker, its flow runs, the exporter
and the CLI are separate processes. So a process holds the engine only while it works: an exclusive file
lock beside the chdb directory (bounded wait, the holder named on timeout), shared by the threads of the
process (`engine_lock(path)`: one lock object per path).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from iceberg_offload.errors import EngineBusy


class EngineLock:
    """Process-wide exclusive lock on an embedded chdb path, shared by the threads of one process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_file = path.rstrip("/") + ".lock"
        self.users = 0
        self.fd: int | None = None
        self.mutex = threading.Lock()

    def acquire(self, timeout: float) -> None:
        with self.mutex:
            if self.users == 0:
                self._take(timeout)
            self.users += 1

    def release(self) -> bool:
        """Drop one user; True when this was the last and the engine must close."""
        with self.mutex:
            self.users -= 1
            if self.users > 0:
                return False
            assert self.fd is not None
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            return True

    def _take(self, timeout: float) -> None:
        os.makedirs(os.path.dirname(self.lock_file) or ".", exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    said = True
                    logging.getLogger("iceberg_offload").warning(
                        "waiting up to %.0fs for the embedded ClickHouse at %s, held by %s",
                        timeout,
                        self.path,
                        _read_holder(fd),
                    )
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise EngineBusy(
                        f"embedded ClickHouse at {self.path} is held by {holder} (waited {timeout:.0f}s)",
                        "wait for that process to finish, or stop it; raise [source] lock_timeout_seconds "
                        "if offloads routinely take longer",
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "cmd": " ".join(sys.argv)[:200], "since": time.time()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd


def _read_holder(fd: int) -> str:
    """Who holds the lock: the kernel's answer (/proc/locks) first, since a holder that is not one of us
    never writes the file; then what our last holder wrote into it."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (ValueError, OSError):
        info = {}
    pid = _flock_pid(fd)
    if pid is not None and pid != info.get("pid"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        return f"pid {pid} ({cmd[:200]})"
    if not info:
        return "another process"
    age = time.time() - float(info.get("since", time.time()))
    return f"pid {info.get('pid', '?')} ({info.get('cmd', '?')}, for {age:.0f}s)"


def _flock_pid(fd: int) -> int | None:
    """The pid holding a flock on the file behind fd, from /proc/locks (Linux); None if unknown."""
    try:
        inode = os.fstat(fd).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            f = line.split()
            if len(f) > 5 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(inode) and f[4].isdigit():
                return int(f[4])
    except OSError:
        pass
    return None


_LOCKS: dict[str, EngineLock] = {}
_LOCKS_MUTEX = threading.Lock()


def chdb_path(dsn: str) -> str | None:
    """The on-disk path of an embedded DSN, symlinks resolved (None for a server DSN). clickhouse-connect's
    chdb client starts the process's one embedded server on the resolved path and chdb refuses any other
    spelling of it; so the Arrow handle, the lock and the identity all use this one."""
    if not dsn.startswith("chdb://"):
        return None
    rest = dsn[len("chdb://") :]
    if rest in ("", ":memory:"):
        return ":memory:"
    path, sep, query = rest.partition("?")
    return os.path.realpath(path) + sep + query


def engine_lock(path: str) -> EngineLock:
    """The one lock of this process on the embedded engine at `path` (a `chdb_path`)."""
    with _LOCKS_MUTEX:
        return _LOCKS.setdefault(path, EngineLock(path))
