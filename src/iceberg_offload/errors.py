"""One exception tree: transient errors are retried, terminal ones stop and tell the operator.

Every error carries `fix`: the next thing the operator should do, in one line. Third-party errors are
translated into this tree at the edge (source, sink); nothing above those modules catches a library
exception.
"""

from __future__ import annotations

import re


class OffloadError(Exception):
    """Base of every error this tool raises on purpose."""

    transient = False
    kind = "error"

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(redact(message))
        self.message = redact(message)
        self.fix = redact(fix)

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message

    def as_dict(self) -> dict[str, object]:
        return {"type": self.kind, "transient": self.transient, "message": self.message, "fix": self.fix}


class TransientError(OffloadError):
    """Worth retrying as is: a service was unreachable, a lock was busy, another writer won a race."""

    transient = True
    kind = "transient"


class TerminalError(OffloadError):
    """Retrying changes nothing until an operator acts: bad config, a refused type, schema drift."""

    kind = "terminal"


class ConfigError(TerminalError):
    kind = "config"


class SourceMismatch(ConfigError):
    """The config reads another ClickHouse table (another server, name or a recreated table) than the one the
    Iceberg table's rows came from: exit 2 like any config error."""

    kind = "source_mismatch"


class SourceUnavailable(TransientError):
    kind = "source_unavailable"


class EngineBusy(TransientError):
    kind = "engine_busy"


class PrefectUnavailable(TransientError):
    """The Prefect API did not answer, or answered with a server error."""

    kind = "prefect_unavailable"


class CatalogUnavailable(TransientError):
    kind = "catalog_unavailable"


class CommitConflict(TransientError):
    """Another writer committed to the table after our watermark was read; nothing of ours landed."""

    kind = "commit_conflict"


class CommitOutcomeUnknown(TransientError):
    """The commit request was sent and the answer lost; the next run settles it from the history."""

    kind = "commit_outcome_unknown"


class SourceError(TerminalError):
    """ClickHouse answered with an error that retrying will not fix (missing table, bad column)."""

    kind = "source_error"


class TypeRefused(TerminalError):
    kind = "type_refused"


class ValueOutOfRange(TerminalError):
    kind = "value_out_of_range"


class SchemaDrift(TerminalError):
    kind = "schema_drift"


class TTLTooShort(TerminalError):
    """The ClickHouse TTL deletes a row sooner than a row waits before it is offloaded."""

    kind = "ttl_too_short"


class WarehouseError(TerminalError):
    """The warehouse refused a write: full, read-only, no permission, not a directory."""

    kind = "warehouse_error"


class WarehouseMissing(WarehouseError):
    """The catalog lists a file the warehouse does not have (a metadata, manifest or data file): a wrong
    path or mount, another bucket, or deleted files. Retrying reads the same missing file."""

    kind = "warehouse_missing"


class ResultMismatch(TransientError):
    """ClickHouse answered with a result that is not the one asked for (another query's columns or output);
    it was discarded with the connection, nothing was written."""

    kind = "result_mismatch"


class InternalError(TerminalError):
    """An exception this tool did not expect (a bug): the table stops with it, the others go on."""

    kind = "internal"

    @classmethod
    def wrap(cls, exc: BaseException, what: str) -> InternalError:
        import traceback

        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
        return cls(f"{what}: unexpected {type(exc).__name__}{where}: {str(exc)[:300]}; nothing of it was committed",
                   "report this with the log; the other tables were not affected")


def as_error(exc: Exception, what: str) -> OffloadError:
    """Our error as it is; any other exception (a bug) as InternalError, logged with its traceback."""
    if isinstance(exc, OffloadError):
        return exc
    import logging

    logging.getLogger("iceberg_offload").error("%s: unexpected error", what, exc_info=exc)
    return InternalError.wrap(exc, what)


_SECRET_PATTERNS = [
    # user:password@ in any URL
    (re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<secret>[^@\s/]+)(?=@)"), r"\g<head>***"),
    # password=... / secret=... / token=... in query strings or key=value text
    (
        re.compile(r"(?P<head>(?:password|passwd|secret|token|auth_string|access[-_]key[-_]id|secret[-_]access[-_]key)"
                   r"[\"']?\s*[=:]\s*[\"']?)(?P<secret>[^\s&\"',;]+)", re.IGNORECASE),
        r"\g<head>***",
    ),
]


_KNOWN_SECRETS: set[str] = set()
MIN_SECRET_LENGTH = 6
"""Shorter values are not replaced by value (they would blank ordinary words); the patterns still apply."""


def add_secret(value: str | None) -> None:
    """Redact this exact value wherever it appears from now on (config.load registers the configured ones),
    also in every log record of this process (ours, Prefect's, a library's traceback)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        _KNOWN_SECRETS.add(value)
        _redact_log_records()


def _redact_log_records() -> None:
    """Wrap the log record factory once: a record's message and traceback are redacted when it is made,
    before any handler (a file, the console, Prefect's API log handler) sees it."""
    import logging

    previous = logging.getLogRecordFactory()
    if getattr(previous, "_offload_redacts", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                text = logging.Formatter().formatException(record.exc_info)
                if redact(text) != text:
                    record.exc_text = redact(text)
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is the handler's business
            pass
        return record

    factory._offload_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def redact(text: str) -> str:
    """Remove credentials from any text that may reach a log, an error or --json output: the secrets the
    config holds (by value, also URL-quoted), then anything shaped like a credential."""
    for secret in sorted(_KNOWN_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text
