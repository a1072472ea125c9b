"""ClickHouse type names parsed into a tree: `Nullable(Array(Tuple(a Int32, b String)))` and friends."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .source import quote


@dataclass(frozen=True)
class CHType:
    name: str
    args: tuple[str, ...] = ()
    children: tuple[CHType, ...] = ()
    names: tuple[str | None, ...] = ()

    def __str__(self) -> str:
        if self.children:
            inner = ", ".join(f"{quote(n)} {c}" if n else str(c) for n, c in zip(self.names, self.children,
                                                                                       strict=True))
            return f"{self.name}({inner})" if self.name != "SimpleAggregateFunction" else \
                f"{self.name}({self.args[0]}, {inner})"
        return f"{self.name}({', '.join(self.args)})" if self.args else self.name


def split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes."""
    parts, depth, quote_char, cur = [], 0, "", []
    for ch in text:
        if quote_char:
            cur.append(ch)
            if ch == quote_char:
                quote_char = ""
            continue
        if ch in "'`\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if cur:
        parts.append("".join(cur).strip())
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
