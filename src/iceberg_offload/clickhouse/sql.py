"""Quoting: every name and string we put into ClickHouse SQL goes through here."""

from __future__ import annotations


def quote(identifier: str) -> str:
    """Quote a ClickHouse identifier; every name we put into SQL goes through here."""
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def literal(value: str) -> str:
    """Quote a ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
