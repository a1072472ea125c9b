"""One exception tree: every error this tool raises is defined here, with its JSON `type` (`kind`), whether
it is retried (`transient`) and the exit code a command that stops on it returns (`exit_code`: 2 when the
operator fixes config or input, 1 otherwise). docs/cli.md's "Error types" table is this tree
(tests/test_errors.py checks it; `python tests/test_errors.py` prints it).

Every error carries `fix`: the next thing the operator should do, in one line. Third-party errors are
translated into this tree at the edge (source, sink); nothing above those modules catches a library
exception. Decisions test the class (`isinstance`, `exit_code`, `transient`, `reported_as`), never the
`type` text. This module imports nothing from the package.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""A command's exit codes: done, a table (or a check) failed, bad config or input."""


class OffloadError(Exception):
    """The base of every error this tool raises on purpose (not raised as such)."""

    transient = False
    kind = "error"
    exit_code = EXIT_FAILED

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(redact(message))
        self.message = redact(message)
        self.fix = redact(fix)

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message

    def as_dict(self) -> dict[str, object]:
        return {"type": self.kind, "transient": self.transient, "message": self.message, "fix": self.fix}


class TransientError(OffloadError):
    """Worth retrying as is: a service was unreachable, a lock was busy, another writer won a race. Raised as
    such when the local stack does not come up (`up`)."""

    transient = True
    kind = "transient"


class TerminalError(OffloadError):
    """Retrying changes nothing until an operator acts: bad config, a refused type, schema drift (a base, not
    raised as such)."""

    kind = "terminal"


class ConfigError(TerminalError):
    """The config (file or `OFFLOAD__*` variable) or a command's input is wrong: an unknown key, a bad value,
    no such table, a watermark move refused; the message names it."""

    kind = "config"
    exit_code = EXIT_USAGE


class UsageError(ConfigError):
    """The command line is wrong: an unknown command or option, a missing or bad value (under --json this
    is the payload; in text, click's usage message)."""

    kind = "usage"


class SourceMismatch(ConfigError):
    """The config reads another ClickHouse table (another server, name or a recreated table) than the one the
    Iceberg table's rows came from; see `adopt`."""

    kind = "source_mismatch"


class SourceUnavailable(TransientError):
    """ClickHouse did not answer (refused, timed out, dropped mid-read); nothing was committed."""

    kind = "source_unavailable"


class EngineBusy(TransientError):
    """Another process holds the embedded ClickHouse (chdb) folder past the lock timeout; the message names
    it."""

    kind = "engine_busy"


class PrefectUnavailable(TransientError):
    """The Prefect API did not answer, or answered with a server error (the orchestration commands)."""

    kind = "prefect_unavailable"


class CatalogUnavailable(TransientError):
    """The Iceberg catalog did not answer or failed; nothing was committed."""

    kind = "catalog_unavailable"


class CommitConflict(TransientError):
    """Another writer committed to the table after our watermark was read; nothing of ours landed."""

    kind = "commit_conflict"


class CommitOutcomeUnknown(TransientError):
    """The commit request was sent and the answer lost; the next run settles it from the history."""

    kind = "commit_outcome_unknown"


class SourceError(TerminalError):
    """ClickHouse answered with an error that retrying will not fix (missing table, bad column, refused
    credentials): the config names the wrong thing."""

    kind = "source_error"
    exit_code = EXIT_USAGE


class TypeRefused(TerminalError):
    """A ClickHouse column type has no exact Iceberg type, or only with an opt-in the config does not give."""

    kind = "type_refused"


class ValueOutOfRange(TerminalError):
    """A value does not fit its Iceberg type (a UInt64 above long, a time beyond nanoseconds, text that is not
    UTF-8); the table stops before it."""

    kind = "value_out_of_range"


class SchemaDrift(TerminalError):
    """The ClickHouse table's columns no longer match the Iceberg table's (added, dropped or retyped)."""

    kind = "schema_drift"


class TTLTooShort(TerminalError):
    """The ClickHouse TTL deletes a row sooner than a row waits before it is offloaded."""

    kind = "ttl_too_short"


class WarehouseError(TerminalError):
    """The warehouse refused a write (full, read-only, no permission, not a directory) or, an object store,
    the credentials (wrong, expired, or not allowed this bucket)."""

    kind = "warehouse_error"


class WarehouseMissing(WarehouseError):
    """The catalog lists a file the warehouse does not have (a metadata, manifest or data file): a wrong
    path or mount, another bucket, or deleted files. Retrying reads the same missing file; runbook
    docs/runbooks/warehouse-lost.md."""

    kind = "warehouse_missing"


class ResultMismatch(TransientError):
    """ClickHouse answered with a result that is not the one asked for (another query's columns or output);
    it was discarded with the connection, nothing was written."""

    kind = "result_mismatch"


class HotTierChanged(TransientError):
    """A hot-tier hour shrank while reconcile repaired it (the TTL or a delete); nothing was written, the
    next reconcile compares again."""

    kind = "hot_tier_changed"


class CompactionMismatch(TerminalError):
    """Compaction read another number of rows from a partition's files than their manifests count; nothing
    was changed."""

    kind = "compaction_mismatch"


class TableBusy(TransientError):
    """The table's maintenance held it longer than an offload task waits (15 min); the next cycle offloads
    it."""

    kind = "table_busy"


class OffloadInFlight(TransientError):
    """Maintenance found an offload cycle running and gave way; its task retries in 30 s."""

    kind = "offload_in_flight"


class OrchestrationError(TransientError):
    """A table's Prefect task or flow run ended without an outcome of ours (crashed, cancelled); its logs
    say why."""

    kind = "orchestration"


class InternalError(TerminalError):
    """An exception this tool did not expect (a bug): the table stops with it, the others go on; report it
    with the log."""

    kind = "internal"

    @classmethod
    def wrap(cls, exc: BaseException, what: str) -> InternalError:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
        return cls(
            f"{what}: unexpected {type(exc).__name__}{where}: {str(exc)[:300]}; nothing of it was committed",
            "report this with the log; the other tables were not affected",
        )


def tree(root: type[OffloadError] = OffloadError) -> list[type[OffloadError]]:
    """`root` and every class below it, parents before children, in the order they are defined."""
    return [root] + [c for sub in root.__subclasses__() for c in tree(sub)]


def reported_as(error: Mapping[str, Any] | None, cls: type[OffloadError]) -> bool:
    """Is this reported error (an `as_dict()`, say a table's outcome) a `cls` or one below it? For decisions
    on an outcome that holds the error as data: the class decides, not a copy of its `type` text."""
    return error is not None and error.get("type") in {c.kind for c in tree(cls)}


# -- not OffloadErrors: they carry an outcome or a value, and have no JSON type of their own ---------------
class PayloadMismatch(InternalError):
    """A `--json` payload that does not match its model in payloads*.py: a defect of this tool (checked only
    when OFFLOAD_CHECK_PAYLOADS=1, as the test suite runs)."""

    kind = "payload_mismatch"


class TableFailed(Exception):
    """A table's offload failed; `transient` decides whether Prefect retries the task. Its message starts
    with the wrapped error's `[type]` (for people: the exporter counts errors from the cycle's artifact, which
    carries the type as data); the operator sees that error's type, never this class's."""

    def __init__(self, result: dict[str, Any]) -> None:
        err = result.get("error") or {}
        super().__init__(
            f"[{err.get('type', 'error')}] {result['table']}: {err.get('message', 'failed')} "
            f"(fix: {err.get('fix', '-')})"
        )
        self.result = result
        self.transient = bool(err.get("transient"))


class OutOfRange(ValueError):
    """Internal control flow: a value a wire shape (engine/wire.py) cannot decode exactly. `conform` turns
    it into ValueOutOfRange naming the column and the fix; it never reaches the operator."""

    def __init__(self, value: str, fix: str) -> None:
        super().__init__(value)
        self.value, self.fix = value, fix


def as_error(exc: Exception, what: str) -> OffloadError:
    """Our error as it is; any other exception (a bug) as InternalError, logged with its traceback."""
    if isinstance(exc, OffloadError):
        return exc
    logging.getLogger("iceberg_offload").error("%s: unexpected error", what, exc_info=exc)
    return InternalError.wrap(exc, what)


_SECRET_PATTERNS = [
    # user:password@ in any URL
    (re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<secret>[^@\s/]+)(?=@)"), r"\g<head>***"),
    # password=... / secret=... / token=... in query strings or key=value text
    (
        re.compile(
            r"(?P<head>(?:password|passwd|secret|token|auth_string|access[-_]key[-_]id|secret[-_]access[-_]key)"
            r"[\"']?\s*[=:]\s*[\"']?)(?P<secret>[^\s&\"',;]+)",
            re.IGNORECASE,
        ),
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
