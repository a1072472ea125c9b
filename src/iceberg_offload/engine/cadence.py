"""How long the schedule may leave a row waiting: the offload interval, or a cron expression's widest gap."""

from __future__ import annotations

import datetime as dt
import functools

from iceberg_offload.config import Settings

WAIT_MARGIN_SECONDS = 600
"""Slack on top of the longest wait: a slow cycle, a retry, a worker restart."""


def round_up_hour(seconds: float) -> int:
    return int(-(-seconds // 3600) * 3600)


MAX_SCHEDULE_GAP = 7 * 86400
"""A schedule sparser than weekly (a yearly cron that never fires, runs triggered by hand or by another
scheduler) is counted as weekly: the TTL check then guards a row waiting a week."""


def schedule_interval(settings: Settings) -> int:
    """The longest gap between two offload cycles, in seconds: the fixed interval, or the cron's (at most
    MAX_SCHEDULE_GAP)."""
    sched = settings.schedule
    return min(sched.offload_interval_seconds or cron_max_gap(sched.offload_cron), MAX_SCHEDULE_GAP)


_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAMES = {n: str(i) for i, n in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])} | {
    n: str(i + 1)
    for i, n in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])
}
CAUTIOUS_GAP = 366 * 86400
"""For a schedule we cannot read: the longest gap any five-field cron can have."""


@functools.lru_cache(maxsize=16)
def cron_max_gap(expr: str) -> int:
    """The longest gap between the fire times of a cron (five fields, `*`, `*/n`, `a-b/n`, lists, names,
    `@daily`-style aliases), over 400 days from a fixed Monday; CAUTIOUS_GAP when it cannot be read."""
    text = _ALIASES.get(expr.strip().lower(), expr)
    for name, number in _NAMES.items():
        text = text.upper().replace(name, number)
    fields = text.split()
    try:
        minutes, hours, dom, months, dow = (
            _cron_field(f, lo, hi)
            for f, (lo, hi) in zip(fields, [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)], strict=True)
        )
    except ValueError:
        return CAUTIOUS_GAP
    dow = {d % 7 for d in dow}
    either = fields[2] != "*" and fields[4] != "*"  # cron: both restricted means either matches
    in_day = sorted(h * 60 + m for h in hours for m in minutes)
    if not in_day:
        return CAUTIOUS_GAP
    fires: list[int] = []
    start = dt.date(2026, 1, 5)
    for day in range(400):
        d = start + dt.timedelta(days=day)
        by_dom, by_dow = d.day in dom, d.isoweekday() % 7 in dow
        if d.month in months and ((by_dom or by_dow) if either else (by_dom and by_dow)):
            fires += [day * 1440 + m for m in in_day]
    if len(fires) < 2:
        return CAUTIOUS_GAP
    return max(b - a for a, b in zip(fires, fires[1:], strict=False)) * 60


def _cron_field(field: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for part in field.split(","):
        rng, _, step = part.partition("/")
        a, b = (lo, hi) if rng == "*" else (int(rng.split("-")[0]), int(rng.split("-")[-1]))
        if not (lo <= a <= b <= hi) or (step and int(step) < 1):
            raise ValueError(field)
        out |= set(range(a, b + 1, int(step) if step else 1))
    return out
