"""The one spelling of a time the outside world sees: RFC 3339 in UTC, ending in `Z`, with as many fraction
digits as the value has (none for a whole second, up to nine). Every time in a `--json` payload, a text
output and the snapshot summary's `offload.watermark.ts` is written here; where exactness matters (a
watermark, a row's timestamp), the payload carries the integer nanoseconds beside it as `<name>_ns`."""

from __future__ import annotations

import datetime as dt

NS = 1_000_000_000


def utc(ns: int) -> str:
    """Epoch nanoseconds as RFC 3339 UTC: `2026-12-02T13:10:41.336Z` (exact: nothing is rounded)."""
    stamp = dt.datetime.fromtimestamp(ns // NS, tz=dt.UTC).replace(tzinfo=None)
    frac = ns % NS
    return stamp.isoformat() + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def utc_or_none(ns: int | None) -> str | None:
    return None if ns is None else utc(ns)


def utc_ms(ms: int) -> str:
    """Epoch milliseconds (Iceberg's snapshot times) as RFC 3339 UTC."""
    return utc(ms * 1_000_000)


def utc_s(seconds: float) -> str:
    """Epoch seconds (a clock reading) as RFC 3339 UTC, to the microsecond."""
    return utc(round(seconds * 1_000_000) * 1000)
