"""A table's TTL from what ClickHouse shows of it: the table's rules (`engine_full`) and the columns' TTLs
(`create_table_query`), read with a scanner that knows string literals, quoted names and parentheses.
Row-deleting rules give the deadlines the plan's TTL check and the headroom use; moves are ignored."""

from __future__ import annotations

import re

from iceberg_offload.clickhouse.types import find_keyword, split_top_level, top_level

NEVER = "toDateTime(4294967295, 'UTC')"
"""The last DateTime: the deadline of a row no deleting rule matches."""


_SET_MORE = re.compile(r"\s*(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")
"""After a comma in a rule's `GROUP BY … SET` list: the next `name = aggregate(…)` assignment, not a new rule."""


def _ttl_rules(clause: str) -> list[str]:
    """The rules of a TTL clause, split on the top-level commas between them: a comma inside a literal or
    parentheses, or between the assignments of a rollup's `SET v = max(v), w = sum(w)`, does not end a rule."""
    masked, rules, last = top_level(clause), [], 0
    for i, ch in enumerate(masked):
        if ch != ",":
            continue
        if find_keyword(clause[last:i], "SET", masked=masked[last:i]) and _SET_MORE.match(clause, i + 1):
            continue  # the rollup's next assignment
        rules.append(clause[last:i].strip())
        last = i + 1
    rules.append(clause[last:].strip())
    return [r for r in rules if r]


def ttl_expressions(engine_full: str) -> tuple[str | None, str | None]:
    """(a bound on when ClickHouse may delete any row, when it deletes a given row), from the TTL rules in
    `engine_full`. Every rule that removes rows counts (`DELETE`, the default, with or without `WHERE`, and
    `GROUP BY` rollups, which replace rows) and the earliest wins (`least(...)`); moves (`TO DISK`/`TO
    VOLUME`) and `RECOMPRESS` do not. The bound ignores `WHERE` (it must hold for a row of any content: the
    plan's TTL check); the per-row deadline applies it, so a row that no rule matches is never deleted.
    Keywords and commas count only outside string literals, quoted names and parentheses."""
    masked = top_level(engine_full)
    ttl = find_keyword(engine_full, "TTL", masked=masked)
    if ttl is None:
        return None, None
    end = find_keyword(engine_full, "SETTINGS", ttl.end(), masked=masked)
    bounds, per_row = [], []
    for rule in _ttl_rules(engine_full[ttl.end() : end.start() if end else len(engine_full)]):
        m = top_level(rule)
        if any(find_keyword(rule, kw, masked=m) for kw in ("TO DISK", "TO VOLUME", "RECOMPRESS")):
            continue
        cuts = [k.start() for k in (find_keyword(rule, kw, masked=m) for kw in ("WHERE", "GROUP BY", "DELETE")) if k]
        expr = rule[: min(cuts)].strip() if cuts else rule.strip()
        if not expr:
            continue
        bounds.append(expr)
        where = find_keyword(rule, "WHERE", masked=m)
        if where is not None:
            group = find_keyword(rule, "GROUP BY", where.end(), masked=m)
            cond = rule[where.end() : group.start() if group else len(rule)].strip()
            per_row.append(f"if({cond}, toDateTime({expr}), {NEVER})")
        else:
            per_row.append(expr)
    if len(bounds) <= 1:
        return (bounds[0], per_row[0]) if bounds else (None, None)
    return tuple(
        "least(" + ", ".join(f"toDateTime({d})" for d in exprs) + ")"  # type: ignore[return-value]
        for exprs in (bounds, per_row)
    )


_NOT_A_COLUMN = re.compile(r"(INDEX|PROJECTION|CONSTRAINT|PRIMARY\s+KEY|STATISTICS)\s", re.I)
_COLUMN_NAME = re.compile(r"\s*(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)")


def column_ttls(create_table_query: str) -> tuple[tuple[str, str], ...]:
    """(column, TTL expression) for each column TTL in `create_table_query` (`v UInt32 TTL toDateTime(ts) +
    toIntervalHour(1)`): ClickHouse resets the column to its default once the TTL passes (at a merge), so a
    row offloaded after it carries the default, not the value written. engine_full does not hold them."""
    open_at = top_level(create_table_query).find("(")
    if open_at < 0:
        return ()
    close_at = top_level(create_table_query).find(")", open_at)
    found = []
    for col in split_top_level(create_table_query[open_at + 1 : close_at if close_at > 0 else None]):
        name = _COLUMN_NAME.match(col)
        if _NOT_A_COLUMN.match(col) or name is None:
            continue
        m = top_level(col)
        ttl = find_keyword(col, "TTL", name.end(), masked=m)
        if ttl is None:
            continue
        ends = [
            k.start()
            for k in (
                find_keyword(col, kw, ttl.end(), masked=m)
                for kw in ("PRIMARY KEY", "SETTINGS", "STATISTICS", "COMMENT", "CODEC")
            )
            if k
        ]
        column = name.group(1)
        if column.startswith("`"):
            column = re.sub(r"\\(.)", r"\1", column[1:-1])
        found.append((column, col[ttl.end() : min(ends, default=len(col))].strip()))
    return tuple(found)
