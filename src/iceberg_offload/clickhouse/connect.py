"""Opening a clickhouse-connect client, and ClickHouse's errors translated into ours with a fix."""

from __future__ import annotations

import re
from typing import Any

from iceberg_offload.config import SourceSettings
from iceberg_offload.errors import SourceError, SourceUnavailable, redact

# ClickHouse error codes we translate into fixes.
_UNKNOWN_TABLE, _UNKNOWN_DATABASE, _AUTH_FAILED, _UNKNOWN_IDENTIFIER = 60, 81, 516, 47


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
    if "Connection refused" in text or "timed out" in text.lower():
        return SourceUnavailable(f"ClickHouse unreachable: {text}", "check ClickHouse and [source] dsn")
    return SourceError(
        f"ClickHouse rejected a query: {text}", f"query was: {sql[:300]}" if sql else "check [source] dsn and database"
    )


def open_client(settings: SourceSettings) -> Any:
    import clickhouse_connect  # noqa: PLC0415 - ~0.3 s: only for commands that read ClickHouse
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError  # noqa: PLC0415

    try:
        return clickhouse_connect.get_client(dsn=settings.dsn)
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
