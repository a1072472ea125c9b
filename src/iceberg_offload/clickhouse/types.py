"""ClickHouse type names parsed into a tree: `Nullable(Array(Tuple(a Int32, b String)))` and friends."""

from __future__ import annotations

import re
from dataclasses import dataclass

from iceberg_offload.clickhouse.sql import quote


@dataclass(frozen=True)
class CHType:
    name: str
    args: tuple[str, ...] = ()
    children: tuple[CHType, ...] = ()
    names: tuple[str | None, ...] = ()

    def __str__(self) -> str:
        if self.children:
            inner = ", ".join(
                f"{quote(n)} {c}" if n else str(c) for n, c in zip(self.names, self.children, strict=True)
            )
            return (
                f"{self.name}({inner})"
                if self.name != "SimpleAggregateFunction"
                else f"{self.name}({self.args[0]}, {inner})"
            )
        return f"{self.name}({', '.join(self.args)})" if self.args else self.name


def top_level(text: str) -> str:
    """`text` with every character inside a quoted literal or identifier ('…', `…`, "…", with backslash escapes)
    or inside parentheses replaced by NUL, the same length: a keyword or comma found in it is at the top level,
    never inside a string, a quoted name or a function's arguments."""
    out, depth, quote_char, escaped = [], 0, "", False
    for ch in text:
        if quote_char:
            out.append("\0")
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote_char:
                quote_char = ""
            continue
        if ch in "'`\"":
            quote_char = ch
            out.append("\0")
            continue
        if ch == ")":
            depth -= 1
        out.append(ch if depth <= 0 else "\0")
        if ch == "(":
            depth += 1
    return "".join(out)


def find_keyword(text: str, keyword: str, start: int = 0, masked: str | None = None) -> re.Match[str] | None:
    """The first top-level `keyword` (words separated by any space, any case) in `text` from `start`, or None."""
    words = r"\s+".join(map(re.escape, keyword.split()))
    return re.compile(rf"(?<!\S){words}(?!\S)", re.I).search(masked or top_level(text), start)


def split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes (backslash escapes honoured)."""
    parts, last = [], 0
    for i, ch in enumerate(top_level(text)):
        if ch == ",":
            parts.append(text[last:i].strip())
            last = i + 1
    if text[last:]:
        parts.append(text[last:].strip())
    return parts


_NAMED = re.compile(r"^(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)$", re.S)


def parse(text: str) -> CHType:
    text = text.strip()
    if "(" not in text:
        return CHType(text)
    name, rest = text.split("(", 1)
    name, inner = name.strip(), rest.rsplit(")", 1)[0]
    args = split_top_level(inner)
    if name in ("Nullable", "LowCardinality", "Array"):
        return CHType(name, children=(parse(args[0]),), names=(None,))
    if name == "Map":
        return CHType(name, children=(parse(args[0]), parse(args[1])), names=(None, None))
    if name == "SimpleAggregateFunction":
        return CHType(name, args=(args[0],), children=(parse(", ".join(args[1:])),), names=(None,))
    if name == "Tuple":
        kids, names = [], []
        for arg in args:
            m = _NAMED.match(arg)
            if m and not m.group(2).startswith("("):
                names.append(m.group(1).strip("`"))
                kids.append(parse(m.group(2)))
            else:
                names.append(None)
                kids.append(parse(arg))
        return CHType(name, children=tuple(kids), names=tuple(names))
    return CHType(name, args=tuple(args))
