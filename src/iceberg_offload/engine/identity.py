"""Which ClickHouse table an Iceberg table's rows come from: server (without credentials), database, table
and the table's UUID. Recorded in the Iceberg table's properties when the table is created (back-filled on
the first offload of an older table); a config that reads another source is refused before anything is
written, and `adopt` records a new one deliberately."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from pyiceberg.table import Table

from iceberg_offload import names
from iceberg_offload.clickhouse.embedded import chdb_path
from iceberg_offload.config import SourceSettings
from iceberg_offload.errors import SourceMismatch

SERVER, DATABASE, TABLE, UUID = names.SOURCE_SERVER, names.SOURCE_DATABASE, names.SOURCE_TABLE, names.SOURCE_UUID
KEYS = (SERVER, DATABASE, TABLE, UUID)
"""The Iceberg table properties that hold the source identity."""
NO_UUID = "00000000-0000-0000-0000-000000000000"
_TLS_PORTS = (443, 8443)
"""clickhouse-connect (get_client(dsn=...)) ignores the DSN's scheme: it speaks https exactly when the port is
one of these, and the port defaults to 8123 (http)."""


def server_of(dsn: str) -> str:
    """The server a DSN reads, without user, password or parameters: `chdb://<resolved engine path>`, or
    `http(s)://host:port` as clickhouse-connect reads it (so `clickhouse://ch1` is `http://ch1:8123`, and
    `https://ch1:8443` the same as `clickhouse+https://ch1:8443`). A recorded server goes through it again."""
    path = chdb_path(dsn)
    if path is not None:
        return "chdb://" + path
    url = urlparse(dsn)
    host = url.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    try:
        port = url.port or 8123
    except ValueError:
        return f"{url.scheme}://{host}"
    return f"{'https' if port in _TLS_PORTS else 'http'}://{host}:{port}"


@dataclass(frozen=True)
class SourceIdentity:
    server: str
    database: str
    table: str
    uuid: str | None
    """The ClickHouse table's UUID; "" when it has none, None when not looked up (no source at hand)."""

    @classmethod
    def of(cls, settings: SourceSettings, table: str, uuid: str | None = None) -> SourceIdentity:
        return cls(server_of(settings.dsn), settings.database, table, "" if uuid == NO_UUID else uuid)

    @classmethod
    def recorded(cls, table: Table) -> SourceIdentity | None:
        props = table.properties
        if SERVER not in props:
            return None
        return cls(server_of(props[SERVER]), props.get(DATABASE, ""), props.get(TABLE, ""), props.get(UUID, ""))

    def to_props(self) -> dict[str, str]:
        return {SERVER: self.server, DATABASE: self.database, TABLE: self.table, UUID: self.uuid or ""}

    def describe(self) -> str:
        uuid = f"uuid {self.uuid}" if self.uuid else "no uuid" if self.uuid == "" else "uuid not read"
        return f"{self.database}.{self.table} at {self.server} ({uuid})"

    def as_dict(self) -> dict[str, str | None]:
        return {"server": self.server, "database": self.database, "table": self.table, "uuid": self.uuid}

    def recreated(self, other: SourceIdentity) -> bool:
        """Same server and name, another table: dropped and created again (or restored)."""
        return (
            (self.server, self.database, self.table) == (other.server, other.database, other.table)
            and bool(self.uuid)
            and other.uuid is not None
            and other.uuid != self.uuid
        )

    def agrees(self, other: SourceIdentity) -> bool:
        """`other` (the configured source) is this one (the recorded): the same name and either the same UUID
        (a UUID names one table: an engine folder moved, restored or mounted elsewhere, a server renamed, is
        still it) or, where either UUID is unknown or empty, the same server."""
        if (self.database, self.table) != (other.database, other.table):
            return False
        if self.uuid and other.uuid:
            return self.uuid == other.uuid
        return self.server == other.server and not self.recreated(other)


def check(table: Table, configured: SourceIdentity, target: str) -> None:
    """Refuse a configured source that is not the one the Iceberg table's rows came from."""
    recorded = SourceIdentity.recorded(table)
    if recorded is None or recorded.agrees(configured):
        return
    raise mismatch(target, recorded, configured)


def mismatch(target: str, recorded: SourceIdentity, configured: SourceIdentity) -> SourceMismatch:
    if recorded.recreated(configured):
        what = (
            f"{configured.database}.{configured.table} was recreated in ClickHouse (uuid {recorded.uuid} "
            f"recorded, {configured.uuid or 'none'} now)"
        )
    else:
        what = f"the config reads {configured.describe()}"
    return SourceMismatch(
        f"{target}: the Iceberg table holds rows of {recorded.describe()}, but {what}; its rows would mix with "
        f"these and the watermark skip its rows; nothing was written",
        f"point [[tables]] target at a new Iceberg table, or restore [source] / [[tables]] source, or (a deliberate "
        f"move) iceberg-offload adopt --table {target}",
    )
