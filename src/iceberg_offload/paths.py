"""Relative paths in the settings made absolute against one folder: the config file's (or, without a file,
the working directory). A worker or CLI started anywhere then opens the same engine, catalog and warehouse.

Covered: `chdb://` directories, `sqlite:///` files (catalog uri, Prefect database_url), `file://` or bare
warehouse paths, `[prefect] home` (and the stack folder beside it), and
`_file` secret paths (in credentials / config). Server URLs and absolute paths are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

_MEMORY = ("", ":memory:")


def absolute(path: str, base: Path) -> str:
    return path if os.path.isabs(path) else str((base / path).resolve())


def chdb_dsn(dsn: str, base: Path) -> str:
    if not dsn.startswith("chdb://"):
        return dsn
    rest = dsn[len("chdb://") :]
    return dsn if rest in _MEMORY or rest.startswith("/") else "chdb://" + absolute(rest, base)


def sqlite_uri(uri: str, base: Path) -> str:
    """`sqlite:///rel.db` (any sqlite+driver scheme) against base; `sqlite:////abs.db` stays."""
    scheme, sep, rest = uri.partition(":///")
    if not sep or not scheme.startswith("sqlite") or rest.startswith("/") or rest.split("?")[0] in _MEMORY:
        return uri
    return f"{scheme}:///{absolute(rest, base)}"


def warehouse(location: str, base: Path) -> str:
    if location.startswith("file://") and not location.startswith("file:///"):
        return "file://" + absolute(location[len("file://") :], base)
    if "://" not in location:
        return "file://" + absolute(location, base)
    return location
