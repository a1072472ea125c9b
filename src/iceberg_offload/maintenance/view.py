"""Hot + cold in one query: a ClickHouse view over the MergeTree table and its Iceberg copy.

    CREATE OR REPLACE VIEW k2.trades_all AS
        SELECT <columns> FROM k2.trades [FINAL] WHERE key > <watermark>              -- hot: not offloaded yet
        UNION ALL
        SELECT CAST(<column>, '<hot type>') ... FROM icebergLocal('<table location>',
            SETTINGS iceberg_metadata_file_path = '<the catalog's metadata file>') WHERE key <= <watermark>

The boundary is a pair fixed when the view is (re)created: the watermark W and the Iceberg metadata file
the catalog pointed at when W was read — the commit that carries W, or a later one with W carried forward
(a repair). That pair is consistent by construction: the pinned metadata holds exactly the rows with
key <= W, and every row with key > W is still in the hot tier (offloads only copy, and the TTL is far
longer than a refresh interval). So the view reads each row exactly once at any moment, whether or not
offloads ran since it was created; an offload only makes it stale (more rows served from hot than needed)
until `create_view` runs again, which should follow each cycle or repair.

Why not a boundary computed inside the query (max key of the cold table): ClickHouse would resolve the
"latest" Iceberg metadata twice per query (boundary subquery and cold branch) and an offload between the
two reads duplicates or drops a window; and without a pinned file, icebergLocal picks the highest-numbered
`metadata/*.metadata.json`, which with a SQL catalog can be a losing writer's file (pyiceberg writes the
file before the catalog's compare-and-swap refuses it). The catalog, not the directory, says which
metadata is current, so the view takes it from the catalog.

On chdb, icebergLocal reads only paths below the process's working directory (chdb keeps user_files_path
at "." whatever it is started with; measured with chdb 4.4). The view states its columns, so creating or
re-pointing it runs no query and works from any folder; a process reading the view must run in a folder
above the warehouse (the default layout: where offload.toml is).

On an s3:// warehouse the cold side is icebergS3 on `[catalog.properties] s3.endpoint` (else AWS's
virtual-hosted URL). Credentials never go into the view's DDL (which `SHOW CREATE` and system.tables show):
with `s3.access-key-id`/`s3.secret-access-key` (and `s3.session-token`) in the catalog properties, they go
into the named collection `<catalog name>_warehouse`, created or updated before the view, and the view
names the collection; without them, ClickHouse uses the credentials of its own environment
(AWS_ACCESS_KEY_ID, ..., or an instance role) when it reads the view. A named collection made with SQL is
kept by ClickHouse on disk (chdb: `<chdb path>/named_collections/`, the values in plain text, shown as
[HIDDEN] in system.named_collections); on a ClickHouse server the user needs the grant
`NAMED COLLECTION ADMIN` (or `named_collection_control`). Measured against moto's S3 with chdb 4.4
(tests/test_s3.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from pyiceberg.table import Table

from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.clickhouse.sql import literal, quote
from iceberg_offload.clickhouse.types import parse
from iceberg_offload.clickhouse.window import Watermark
from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.engine.plan import TablePlan
from iceberg_offload.errors import ConfigError, as_error
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.names import S3_COLLECTION

_NOT_NULLABLE = ("Array(", "Map(", "Tuple(", "Nested(", "JSON", "Object(", "Variant(", "Dynamic", "Nullable(")


def view_name(cfg: TableSettings, name: str | None = None) -> str:
    return name or f"{cfg.source}_all"


def view_sql(settings: Settings, cfg: TableSettings, sink: Sink, source: Source, name: str | None = None) -> str:
    """The CREATE OR REPLACE VIEW statement for one table at its current watermark."""
    return _build(settings, cfg, sink, source, name)[0]


def create_view(
    settings: Settings, cfg: TableSettings, sink: Sink, source: Source, name: str | None = None
) -> dict[str, Any]:
    """Create (or re-point) the view at the table's current watermark and metadata; idempotent."""
    sql, wm, table = _build(settings, cfg, sink, source, name)
    if table is not None and wm is not None:
        for statement in s3_collection_sql(settings):
            source.command(statement)
    source.command(sql)
    snap = table.current_snapshot() if table is not None else None
    return {
        "view": f"{source.database}.{view_name(cfg, name)}",
        "watermark": wm.as_dict() if wm else None,
        "metadata_location": table.metadata_location if table is not None else None,
        "snapshot_id": snap.snapshot_id if snap is not None else None,
        "sql": sql,
    }


def refresh_views(settings: Settings, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Re-point the views that exist (created by `iceberg-offload view`) at the current watermarks: after a
    cycle or maintenance. Tables without a view are left alone. One outcome per view, as data:
    {table, view, error} (error None when re-pointed); when the views cannot even be looked for, one outcome
    per named table with view None. Never raises: a view left behind is reported, not hidden."""
    selected = settings.select(names)
    wanted = {view_name(cfg): cfg for cfg in selected}
    try:
        with open_source(settings.source) as source:
            rows = source.rows(
                f"SELECT name FROM system.tables WHERE database = {literal(source.database)} "
                f"AND engine = 'View' AND name IN ({', '.join(literal(n) for n in wanted)})"
            )
            if not rows:
                return []
            sink = Sink(open_catalog(settings.catalog), settings.catalog.namespace)
            return [_repoint(settings, wanted[str(r[0])], sink, source) for r in rows]
    except Exception as exc:  # noqa: BLE001 - reported per table
        error = as_error(exc, "refreshing views").as_dict()
        return [{"table": cfg.target, "view": None, "error": error} for cfg in selected]


def _repoint(settings: Settings, cfg: TableSettings, sink: Sink, source: Source) -> dict[str, Any]:
    view = f"{source.database}.{view_name(cfg)}"
    try:
        create_view(settings, cfg, sink, source)
    except Exception as exc:  # noqa: BLE001 - one view's failure is its table's, reported
        return {"table": cfg.target, "view": view, "error": as_error(exc, view).as_dict()}
    return {"table": cfg.target, "view": view, "error": None}


def _build(
    settings: Settings, cfg: TableSettings, sink: Sink, source: Source, name: str | None
) -> tuple[str, Watermark | None, Table | None]:
    plan = TablePlan.build(source, cfg)
    table = sink.load(cfg.target)
    wm = sink.watermark(table)[0] if table is not None else None
    hot_types = dict(plan.info.columns)
    names = [p.name for p in plan.columns]
    fin = " FINAL" if cfg.final else ""
    hot = f"SELECT {', '.join(quote(n) for n in names)} FROM {plan.info.qualified}{fin} WHERE {plan.key.after(wm)}"
    body, types = hot, {n: hot_types[n] for n in names}
    if table is not None and wm is not None:
        optional = {f.name for f in table.schema().fields if not f.required}
        types = {n: _view_type(hot_types[n], n in optional) for n in names}
        casts = ", ".join(f"CAST({quote(n)}, {literal(types[n])}) AS {quote(n)}" for n in names)
        # the filter sits inside so it applies to the Iceberg columns (not the casts) and prunes files
        cold = f"SELECT {casts} FROM (SELECT * FROM {_cold_function(settings, table)} WHERE {plan.key.at_most(wm)})"
        body = f"{hot}\nUNION ALL\n{cold}"
    view = f"{quote(source.database)}.{quote(view_name(cfg, name))}"
    # the columns stated: ClickHouse then creates the view without running its query, so the embedded
    # engine's path check (files below the working directory) applies to readers only, not to re-pointing
    columns = ", ".join(f"{quote(n)} {t}" for n, t in types.items())
    return f"CREATE OR REPLACE VIEW {view} ({columns}) AS\n{body}", wm, table


def _view_type(hot_type: str, optional: bool) -> str:
    """The view column's type: the hot column's, Nullable when Iceberg holds NULLs the hot type cannot
    (a column added after older rows were offloaded). Read from the parsed type: a hot type that is already
    nullable (`Nullable(T)`, `LowCardinality(Nullable(T))`) stays as it is."""
    t = parse(hot_type)
    inner = t.children[0] if t.name == "LowCardinality" else t
    if not optional or inner.name == "Nullable" or hot_type.startswith(_NOT_NULLABLE):
        return hot_type
    if t.name == "LowCardinality":
        return f"LowCardinality(Nullable({inner}))"
    return f"Nullable({hot_type})"


def _cold_function(settings: Settings, table: Table) -> str:
    """icebergLocal / icebergS3 on the table's location, pinned to the catalog's current metadata file."""
    location = table.location().rstrip("/")
    meta = table.metadata_location
    pin = meta[len(location) + 1 :] if meta.startswith(location + "/") else meta
    pinned = f"SETTINGS iceberg_metadata_file_path = {literal(pin)}"
    url = urlparse(location)
    if url.scheme in ("", "file"):
        return f"icebergLocal({literal(url.path)}, {pinned})"
    if url.scheme in ("s3", "s3a"):
        endpoint = settings.catalog.properties.get("s3.endpoint", "").rstrip("/")
        http = (
            f"{endpoint}/{url.netloc}{url.path}/" if endpoint else f"https://{url.netloc}.s3.amazonaws.com{url.path}/"
        )
        if _s3_credentials(settings):  # the keys in a named collection, not in the view's DDL
            return f"icebergS3({quote(collection_name(settings))}, url = {literal(http)}, {pinned})"
        return f"icebergS3({literal(http)}, {pinned})"  # ClickHouse's own environment credentials
    raise ConfigError(
        f"{'.'.join(table.name())}: no ClickHouse Iceberg reader for a {url.scheme}:// warehouse",
        "use a file:// or s3:// [catalog] warehouse for the hot + cold view",
    )


_S3_KEYS = {  # ClickHouse's named-collection key: the pyiceberg properties that give it, first wins
    "access_key_id": ("s3.access-key-id", "client.access-key-id"),
    "secret_access_key": ("s3.secret-access-key", "client.secret-access-key"),
    "session_token": ("s3.session-token", "client.session-token"),
}


def _s3_credentials(settings: Settings) -> dict[str, str]:
    """The S3 credentials in [catalog.properties] as named-collection keys; empty unless key and secret are."""
    props = settings.catalog.properties
    found = {ch: next((props[p] for p in keys if props.get(p)), "") for ch, keys in _S3_KEYS.items()}
    if not (found["access_key_id"] and found["secret_access_key"]):
        return {}
    return {k: v for k, v in found.items() if v}


def collection_name(settings: Settings) -> str:
    """The ClickHouse named collection holding the warehouse's S3 credentials for the views."""
    return S3_COLLECTION.format(catalog=settings.catalog.name)


def s3_collection_sql(settings: Settings) -> list[str]:
    """The statements that create the named collection or set its credentials (none without credentials
    in the catalog properties): run before the view that names it."""
    creds = _s3_credentials(settings)
    if not creds:
        return []
    name = quote(collection_name(settings))
    values = ", ".join(f"{k} = {literal(v)}" for k, v in creds.items())
    return [f"CREATE NAMED COLLECTION IF NOT EXISTS {name} AS {values}", f"ALTER NAMED COLLECTION {name} SET {values}"]
