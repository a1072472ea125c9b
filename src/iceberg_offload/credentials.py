"""Secrets in the config: `<key>_file` keys read from files, and every configured credential registered with
`errors.redact` so that no error, log line or output shows it."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from iceberg_offload.errors import ConfigError, add_secret

FILE_SUFFIX = "_file"


def secret_file(what: str, path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot read the secret file {path}: {exc.strerror}",
            f"create {path} (readable by this user) or unset {what}",
        ) from None


def read_secret_files(node: Any, base: Path, file: str) -> None:
    """Replace every TOML `<key>_file = "path"` by `<key> = <the file's content>` (relative to the config)."""
    if not isinstance(node, dict):
        return
    for key in list(node):
        value = node[key]
        if key.endswith(FILE_SUFFIX) and len(key) > len(FILE_SUFFIX) and isinstance(value, str):
            name = key[: -len(FILE_SUFFIX)]
            if name in node:
                raise ConfigError(f"{file}: both {name} and {key} are set", f"keep one of {name} and {key}")
            del node[key]
            node[name] = secret_file(f"{file}: {key}", str(base / value))
        else:
            read_secret_files(value, base, file)


SECRETISH = ("secret", "password", "token", "key", "credential", "sas")


def is_secret_key(key: str) -> bool:
    """A catalog property that holds a secret (`s3.secret-access-key`, `token`, ...). A key's id
    (`s3.access-key-id`) names the key and is not one: redacting it would hide every word equal to it (an
    access key id `offload` made every `iceberg-offload` in the output read `iceberg-***`)."""
    k = key.lower()
    return any(w in k for w in SECRETISH) and not re.search(r"key[-_.]?id$", k)


def register_secrets(data: dict[str, Any]) -> None:
    """Tell `redact` the configured credentials, so no error, log line or output shows them."""

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    source, catalog, prefect = section("source"), section("catalog"), section("prefect")
    values: list[str] = []
    for url in (source.get("dsn"), catalog.get("uri"), prefect.get("database_url")):
        try:
            parsed = urlparse(url) if isinstance(url, str) else None
            if parsed is not None and parsed.password:
                values += [parsed.password, unquote(parsed.password)]
        except ValueError:
            continue
    properties = catalog.get("properties")
    values += [str(v) for k, v in (properties.items() if isinstance(properties, dict) else ()) if is_secret_key(str(k))]
    auth = prefect.get("auth_string")
    if isinstance(auth, str) and auth:
        values += [auth, auth.partition(":")[2], base64.b64encode(auth.encode()).decode()]
    for value in values:
        add_secret(value)
        add_secret(quote(value, safe=""))
