"""The settings every query carries, so that ClickHouse answers with every row, in the shape the wire
expects, or fails.

A server's profile can give the offload user settings that make a SELECT answer with fewer rows and no
error (`result_overflow_mode = 'break'`, `limit`, `additional_table_filters`, ...), with other rows
(`final`, `apply_deleted_mask = 0`), stale rows (`use_query_cache`), or in another Arrow shape. Rows the
answer leaves out would be behind the watermark and deleted by the TTL unseen. So every query sets these
back (a setting the server does not know is left alone: no profile can have set it), and a profile that
forbids it (a read-only setting at another value) stops the offload naming the setting and the fix.
"""

from __future__ import annotations

from typing import Any

from iceberg_offload.errors import SourceError

FULL_ANSWER = {
    **{
        f"{kind}_overflow_mode": "throw"  # 'break'/'any' answer with part of the rows and no error
        for kind in ("result", "read", "timeout", "group_by", "sort", "set", "join", "transfer", "distinct")
    },
    "read_overflow_mode_leaf": "throw",
    "timeout_overflow_mode_leaf": "throw",
    "limit": "0",  # a LIMIT on every query
    "offset": "0",
    "additional_table_filters": "{}",  # a WHERE on every table read
    "additional_result_filter": "",
    "final": "0",  # FINAL on tables the config reads without it
    "apply_deleted_mask": "1",  # 0 answers with lightweight-deleted rows
    "use_query_cache": "0",  # a cached, older answer
    "skip_unavailable_shards": "0",  # a Distributed table's answer without a shard
}
"""Settings a profile could use to make ClickHouse answer with fewer, other or older rows without an error."""

ARROW_SHAPE = {
    "output_format_arrow_low_cardinality_as_dictionary": "1",  # LowCardinality as a dictionary (Wire)
    "output_format_arrow_string_as_string": "1",
    "output_format_arrow_fixed_string_as_fixed_byte_array": "1",
    "output_format_arrow_use_signed_indexes_for_dictionary": "1",
    "output_format_arrow_use_64_bit_indexes_for_dictionary": "0",
    "output_format_arrow_date_as_uint16": "0",
    "output_format_arrow_uuid_as_fixed_byte_array": "0",
    "output_format_arrow_unsupported_types_as_binary": "1",
    "output_format_arrow_variant_as_string": "0",
}
"""The Arrow shape `engine/wire.py` decodes (chdb's defaults, LowCardinality as a dictionary): the same on
both paths, whatever a profile says."""

EMBEDDED_ARROW = {"output_format_arrow_compression_method": "none"}
"""In process, compressing the Arrow buffers only costs CPU (over HTTP they keep ClickHouse's lz4)."""


PREFERRED = {"output_format_arrow_low_cardinality_as_dictionary"}
"""ARROW_SHAPE keys `wire` decodes either way (a preference: left as the server has it when read-only)."""


def pin(client: Any) -> None:
    """Give a clickhouse-connect client FULL_ANSWER for every query it sends, as far as its server knows the
    settings. The client's own list of the server's settings was read under the profile (a `limit` cuts it
    short), so the settings that matter here are read again with the profile's row limits set back."""
    from clickhouse_connect.driver.exceptions import ProgrammingError  # noqa: PLC0415 - see connect.open_client
    from clickhouse_connect.driver.models import SettingDef  # noqa: PLC0415

    names = ", ".join(f"'{k}'" for k in (*FULL_ANSWER, *ARROW_SHAPE))
    rows = client.query(
        f"SELECT name, value, readonly FROM system.settings WHERE name IN ({names})",
        settings={"limit": "0", "offset": "0"},
    ).result_rows
    for name, value, readonly in rows:
        client.server_settings[name] = SettingDef(name=name, value=str(value), readonly=int(readonly))
    for key, value in FULL_ANSWER.items():
        if key in client.server_settings:
            try:
                client.set_client_setting(key, value)
            except ProgrammingError as exc:
                raise refused(key, value, client.server_settings[key].value) from exc


def arrow_settings(client: Any) -> dict[str, str]:
    """ARROW_SHAPE as this client's server can take it: the keys it knows; a read-only one at another value
    is left as it is when `wire` decodes both (PREFERRED), else refused."""
    out = {}
    for key, value in ARROW_SHAPE.items():
        known = client.server_settings.get(key)
        if known is None:
            continue
        if known.readonly and known.value != value:
            if key in PREFERRED:
                continue
            raise refused(key, value, known.value)
        out[key] = value
    return out


def refused(key: str, wanted: str, now: str) -> SourceError:
    return SourceError(
        f"ClickHouse does not let the offload user set {key} (it is {now!r}, read-only); at that value a "
        f"query can answer with fewer or other rows than it should, which the TTL would then delete unseen",
        f"set {key} = {wanted!r} in the offload user's profile, or let it change settings (readonly = 2, "
        f"no constraint on {key})",
    )
