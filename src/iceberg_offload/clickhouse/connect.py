"""Opening a clickhouse-connect client, and ClickHouse's errors translated into ours with a fix."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from iceberg_offload.clickhouse.settings import pin
from iceberg_offload.config import SourceSettings
from iceberg_offload.errors import SourceError, SourceUnavailable, redact

if TYPE_CHECKING:
    import pyarrow as pa

# ClickHouse error codes we translate into fixes.
_UNKNOWN_TABLE, _UNKNOWN_DATABASE, _AUTH_FAILED, _UNKNOWN_IDENTIFIER = 60, 81, 516, 47
# A limit stopped the query: TOO_MANY_ROWS, TIMEOUT_EXCEEDED, MEMORY_LIMIT_EXCEEDED, TOO_MANY_BYTES,
# TOO_MANY_ROWS_OR_BYTES.
_LIMITS = (158, 159, 241, 307, 396)


def database_error(exc: Exception, sql: str) -> Exception:
    text = redact(str(exc).split("\n")[0][:500])
    code = getattr(exc, "code", None)
    if code is None and (m := re.match(r"Code: (\d+)\.", text)):
        code = int(m.group(1))
    if code == _AUTH_FAILED or "Authentication failed" in text:  # retrying will not change the password
        return SourceError(
            f"ClickHouse refused the credentials: {text}",
            "fix the user or password in [source] dsn (or OFFLOAD__SOURCE__DSN)",
        )
    if code in (_UNKNOWN_TABLE, _UNKNOWN_DATABASE):
        return SourceError(f"ClickHouse: {text}", "fix [[tables]] source or [source] database in the config")
    if code in _LIMITS:
        return SourceError(
            f"ClickHouse stopped a read at a limit: {text}",
            "lower [offload] read_rows (the rows one read asks for), or raise that limit for the offload user",
        )
    if "Connection refused" in text or "timed out" in text.lower():
        return SourceUnavailable(f"ClickHouse unreachable: {text}", "check ClickHouse and [source] dsn")
    return SourceError(
        f"ClickHouse rejected a query: {text}", f"query was: {sql[:300]}" if sql else "check [source] dsn and database"
    )


def open_client(settings: SourceSettings) -> Any:
    import clickhouse_connect  # noqa: PLC0415 - ~0.3 s: only for commands that read ClickHouse
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError  # noqa: PLC0415

    try:
        client = clickhouse_connect.get_client(dsn=settings.dsn)
    except DatabaseError as exc:
        if isinstance(exc, OperationalError):
            raise SourceUnavailable(
                f"cannot connect to ClickHouse at {settings.dsn}: {redact(str(exc))[:300]}",
                "check that ClickHouse is running and [source] dsn is right",
            ) from exc
        raise database_error(exc, "") from exc
    except Exception as exc:
        raise SourceUnavailable(
            f"cannot connect to ClickHouse at {settings.dsn}: {redact(str(exc))[:300]}",
            "check that ClickHouse is running and [source] dsn is right",
        ) from exc
    try:
        pin(client)
    except BaseException:
        client.close()
        raise
    return client


# A server error after the first byte of an answer ends it: ClickHouse 25.11+ frames it with the answer's
# X-ClickHouse-Exception-Tag (`<len> <tag>` before the closing marker); before, the error text simply follows the
# bytes sent so far, ending in `(NAME) (version ...)`. Both are matched at the very end of the body only, so a
# value in the rows that looks like an error is never taken for one.
_TAGGED = re.compile(
    rb"__exception__\r?\n(\w+)\r?\n((?:(?!__exception__).)*?)\n?(\d+) \1\r?\n__exception__\r?\n?\Z", re.DOTALL
)
_START = re.compile(rb"Code: \d+\. DB::Exception: ")
_PLAIN = re.compile(rb"(Code: \d+\. DB::Exception: [^\n]*\(\w+\) \(version [^\n()]*(?:\([^\n()]*\))?\))\n?\Z")


def read_answer(body: bytes) -> pa.Table:
    """An Arrow answer's table; an answer that is not whole raises the server's error found in its tail
    (SourceError), or SourceUnavailable when it was cut short without one. Nothing half-read is returned."""
    import pyarrow as pa  # noqa: PLC0415 - the caller has it loaded

    try:
        return pa.ipc.open_file(pa.py_buffer(body)).read_all()
    except pa.ArrowInvalid as exc:
        tail = body[-65536:]
        found = _TAGGED.search(tail) or _PLAIN.search(tail)
        if found is not None:
            raw = found.group(2 if found.re is _TAGGED else 1)
            starts = [m.start() for m in _START.finditer(raw)]  # the last error: text before it is the rows'
            text = raw[starts[-1] if starts else 0 :].decode("utf-8", "replace").strip()
            raise database_error(Exception(text), "") from exc  # the server's text, its code parsed from it
        raise SourceUnavailable(
            f"ClickHouse's answer to a read was cut short or unreadable ({exc}); nothing of it was written",
            "none needed if the next run succeeds: it reads again; if it repeats, check the ClickHouse server log",
        ) from exc
