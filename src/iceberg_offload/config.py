"""Typed, frozen settings: a TOML file, then environment overrides named after the key path.

`OFFLOAD__SOURCE__DSN` overrides `[source] dsn`; `OFFLOAD__TABLES__0__SETTLE...` reaches into the list;
a value that parses as JSON (numbers, booleans, lists) is taken as JSON, anything else as a string
(config_input, which also words the errors).
Secrets may come from files: any key with `_file` appended (`dsn_file = "/run/secrets/dsn"` in the TOML,
or `OFFLOAD__SOURCE__DSN_FILE=/run/secrets/dsn`) is replaced by the file's content, surrounding whitespace
stripped; an environment variable overrides the TOML either way. The configured secrets are registered with
`errors.redact`, which removes them from every error, log line and output.
Relative paths (chdb directory, SQLite files, file:// warehouse, Prefect home, `_file`
paths), from the file or the environment, are resolved against the config file's folder (`paths`); without
a config file, against the working directory. A worker started elsewhere finds the same data.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from iceberg_offload import paths
from iceberg_offload.config_input import apply_env, config_error
from iceberg_offload.credentials import read_secret_files, register_secrets
from iceberg_offload.errors import ConfigError
from iceberg_offload.names import DEFAULT_CONFIG


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(_Section):
    dsn: str = Field(default="chdb://.offload/clickhouse", repr=False)
    database: str = "k2"
    lock_timeout_seconds: float = Field(default=120.0, ge=0)
    """How long to wait for the embedded engine when another process holds it."""


class CatalogSettings(_Section):
    name: str = "offload"
    type: str = "sql"
    uri: str = Field(default="sqlite:///.offload/catalog.db", repr=False)
    warehouse: str = "file://.offload/warehouse"
    namespace: str = "cold"
    properties: dict[str, str] = Field(default_factory=dict, repr=False)
    """Extra pyiceberg catalog properties (s3.endpoint, credentials, ...)."""


class OffloadSettings(_Section):
    settle_seconds: int = Field(default=120, ge=0)
    max_rows_per_commit: int = Field(default=2_000_000, ge=1)
    batch_rows: int = Field(default=250_000, ge=1)
    """Rows per write: each batch becomes one data file per partition it touches."""
    read_rows: int = Field(default=250_000, ge=1)
    """Rows per ClickHouse query; the engine's memory grows with this, not with the backlog."""
    late_lookback_seconds: int = Field(default=10_800, ge=0)
    """After each table's offload, rows that arrived late this far behind the watermark are compared and
    repaired in the same cycle (0: only the daily reconcile)."""


class PrefectSettings(_Section):
    api_url: str = "http://127.0.0.1:4200/api"
    """Set as PREFECT_API_URL for every Prefect call and process we start (no throwaway servers)."""
    database_url: str = Field(default="", repr=False)
    """The Prefect server's database: empty = SQLite under `home`; or postgresql+asyncpg://user@host/db."""
    home: str = ".offload/prefect"
    """PREFECT_HOME for the processes we start: profiles, local result storage, the SQLite database."""
    auth_string: str = Field(default="", repr=False)
    """PREFECT_API_AUTH_STRING / PREFECT_SERVER_API_AUTH_STRING when the API requires it (keep it in env)."""
    fan_out: Literal["tasks", "deployments"] = "tasks"
    """tasks: a cycle offloads its tables in threads of one flow run (fast, one worker);
    deployments: one flow run per table, spread over every worker in the pool (scale out)."""
    worker_query_seconds: float = Field(default=5.0, gt=0)
    """How often a worker asks the server for due runs."""
    worker_limit: int = Field(default=0, ge=0)
    """Flow runs one worker runs at once (0 = no limit). With fan_out = "deployments", a limit spreads the
    table runs of a cycle over the workers of the pool instead of the first one to poll taking them all."""
    retry_delays_seconds: list[float] = Field(default=[5.0, 30.0])
    """A table whose error is transient is retried after each of these delays, within the same cycle."""


class MetricsSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    refresh_seconds: float = Field(default=10.0, gt=0)
    """How often the exporter re-reads Iceberg and Prefect (a scrape serves at most this stale)."""
    hot_refresh_seconds: float = Field(default=30.0, gt=0)
    """How often it re-reads ClickHouse bounds (skipped while an offload holds the embedded engine)."""


class ScheduleSettings(_Section):
    offload_cron: str = "*/15 * * * *"
    maintenance_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    offload_interval_seconds: int = Field(default=0, ge=0)
    """When > 0, the offload deployment runs every N seconds instead of on offload_cron (tests, demos)."""


class MaintenanceSettings(_Section):
    """The daily maintenance (`iceberg-offload maintain`, deployment iceberg-maintenance-daily)."""

    target_file_mb: int = Field(default=128, gt=0)
    """Compaction rewrites a partition's small data files into files near this size."""
    snapshot_retention_days: float = Field(default=7.0, gt=0)
    """Snapshots older than this are expired (never the one holding the watermark)."""
    keep_last_snapshots: int = Field(default=10, ge=1)
    orphan_age_days: float = Field(default=3.0, gt=0)
    """Unreferenced files are deleted only when older than this (a running offload's files are younger)."""
    warn_snapshots: int = Field(default=1000, ge=1)
    """`doctor` warns when a table holds more snapshots than this: expiry is not keeping up, and every commit
    and watermark read costs more with each snapshot (docs/benchmarks.md "Scale in history")."""


PartitionBy = Literal["hour", "day", "month", "none"]
Layer = Literal["bronze", "silver", "gold"]
LAYERS: tuple[Layer, ...] = ("bronze", "silver", "gold")


class TableSettings(_Section):
    source: str
    target: str = ""
    layer: Layer = "bronze"
    timestamp_column: str
    sequence_column: str | None = None
    columns: list[str] = Field(default_factory=list)
    partition_by: PartitionBy = "day"
    final: bool = False
    closed_after_seconds: int = Field(default=0, ge=0)
    key_columns: list[str] = Field(default_factory=list)
    column_types: dict[str, str] = Field(default_factory=dict)
    """Opt-in mappings for lossy or out-of-range cases, e.g. {sequence_number = "decimal(20,0)"}."""

    @field_validator("source", "timestamp_column")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> TableSettings:
        if not self.target:
            object.__setattr__(self, "target", self.source)
        if self.sequence_column == "":
            object.__setattr__(self, "sequence_column", None)
        if not self.key_columns:
            keys = [self.timestamp_column] + ([self.sequence_column] if self.sequence_column else [])
            object.__setattr__(self, "key_columns", keys)
        if self.columns:
            needed = {self.timestamp_column, *(c for c in [self.sequence_column] if c)}
            missing = sorted(needed - set(self.columns))
            if missing:
                raise ValueError(f"columns must include {', '.join(missing)} (the window needs them)")
        return self

    @property
    def name(self) -> str:
        return self.target


class Settings(_Section):
    source: SourceSettings = Field(default_factory=SourceSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    offload: OffloadSettings = Field(default_factory=OffloadSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    tables: list[TableSettings] = Field(default_factory=list)
    path: str = ""
    """The config file this came from ('' for the embedded default)."""

    @model_validator(mode="after")
    def _unique_targets(self) -> Settings:
        seen: set[str] = set()
        for table in self.tables:
            if table.target in seen:
                raise PydanticCustomError(
                    "duplicate_target",
                    "two [[tables]] entries write to target '{target}'",
                    {
                        "target": table.target,
                        "fix": f'give one of them its own target = "..."; both write to '
                        f"{table.target!r} and their rows would mix",
                    },
                )
            seen.add(table.target)
        return self

    def table(self, name: str) -> TableSettings:
        for table in self.tables:
            if name in (table.target, table.source):
                return table
        known = ", ".join(t.target for t in self.tables) or "none"
        raise ConfigError(f"no table {name!r} in {self.path or 'the config'}", f"use one of: {known}")

    def select(self, names: list[str] | None) -> list[TableSettings]:
        if not self.tables:
            raise ConfigError(
                f"no tables configured in {self.path or 'the embedded default (no offload.toml here)'}",
                "add [[tables]] entries to offload.toml, pass --config, or run `iceberg-offload demo`",
            )
        return [self.table(n) for n in names] if names else list(self.tables)


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (default ./offload.toml; none = embedded default) and apply env overrides."""
    env = dict(os.environ if env is None else env)
    explicit = path is not None or "OFFLOAD_CONFIG" in env
    file = Path(path if path is not None else env.get("OFFLOAD_CONFIG", DEFAULT_CONFIG))
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}", f"fix the syntax in {file}") from exc
        base = file.resolve().parent
        for name, section in data.items():
            if name != "tables":  # column names there are not secrets
                read_secret_files(section, base, str(file))
        data["path"] = str(file.resolve())
    elif explicit:
        raise ConfigError(
            f"config file {file} does not exist",
            "pass --config with an existing file, or run `iceberg-offload demo` to write one",
        )
    else:
        base = Path.cwd()
    from_env = apply_env(data, env, base)
    register_secrets(data)  # before validating: its errors quote the values they refuse
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, str(file), from_env) from None
    return _resolve_paths(settings, base)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    src, cat, pre = settings.source, settings.catalog, settings.prefect
    return settings.model_copy(
        update={
            "source": src.model_copy(update={"dsn": paths.chdb_dsn(src.dsn, base)}),
            "catalog": cat.model_copy(
                update={"uri": paths.sqlite_uri(cat.uri, base), "warehouse": paths.warehouse(cat.warehouse, base)}
            ),
            "prefect": pre.model_copy(
                update={
                    "home": paths.absolute(pre.home, base),
                    "database_url": paths.sqlite_uri(pre.database_url, base),
                }
            ),
        }
    )


def prefect_env(settings: Settings) -> dict[str, str]:
    """The environment every Prefect client, server and worker we start gets from our config."""
    p = settings.prefect
    env = {
        "PREFECT_API_URL": p.api_url,
        "PREFECT_HOME": p.home,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": str(p.worker_query_seconds),
        "PREFECT_LOCAL_STORAGE_PATH": os.path.join(p.home, "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    }
    if p.auth_string:
        env["PREFECT_API_AUTH_STRING"] = p.auth_string
    return env


def apply_prefect_env(settings: Settings) -> None:
    """Set the Prefect environment in this process; call before the first `import prefect`."""
    os.environ.update(prefect_env(settings))
    os.makedirs(settings.prefect.home, exist_ok=True)
