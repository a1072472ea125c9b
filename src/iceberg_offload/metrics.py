"""The Prometheus endpoint on port 8000 (job `iceberg-scheduler`).

This first version serves `offload_info`; the observability issue adds the gauges computed at scrape
time from Iceberg, ClickHouse and Prefect state.
"""

from __future__ import annotations

import errno
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from . import __version__
from .config import Settings
from .errors import ConfigError


def registry_for(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry()
    info = Gauge("offload_info", "iceberg-offload is running: version, offload schedule and table count",
                 ["version", "schedule", "tables"], registry=registry)
    schedule = (f"every {settings.schedule.offload_interval_seconds}s" if settings.schedule.offload_interval_seconds
                else settings.schedule.offload_cron)
    info.labels(__version__, schedule, str(len(settings.tables))).set(1)
    return registry


def serve(settings: Settings) -> Any:
    """Start the endpoint on a daemon thread; returns the server (call .shutdown() to stop)."""
    m = settings.metrics
    try:
        server, _thread = start_http_server(m.port, addr=m.host, registry=registry_for(settings))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fix = f"find the holder with `ss -ltnp 'sport = :{m.port}'`, stop it, or set [metrics] port"
            raise ConfigError(f"metrics port {m.host}:{m.port} is already in use", fix) from exc
        raise
    return server
