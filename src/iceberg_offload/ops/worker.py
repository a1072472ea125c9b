"""`iceberg-offload worker`: Prefect's process worker on the pool, in this process, and the metrics endpoint
beside it. It composes orchestration (the pool) and ops (the exporter), so it sits above both."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from iceberg_offload import names
from iceberg_offload.config import Settings, apply_prefect_env


def run(settings: Settings, name: str | None = None, limit: int | None = None) -> int:
    """A Prefect process worker on the pool, in this process, plus the metrics endpoint. SIGTERM or SIGINT
    stop it cleanly, also when started as a background job of a non-interactive shell (which inherits
    SIGINT ignored): we install our own handlers."""
    apply_prefect_env(settings)  # before Prefect is imported: it reads its settings at import
    from prefect.workers.process import ProcessWorker  # noqa: PLC0415

    from iceberg_offload.ops.metrics import serve  # noqa: PLC0415 - after the env, like Prefect

    server = serve(settings, keep_trying=True)
    worker_name = name or f"{socket.gethostname()}-{os.getpid()}"
    limit = limit if limit is not None else settings.prefect.worker_limit

    async def main() -> None:
        async with ProcessWorker(
            name=worker_name,
            work_pool_name=names.POOL,
            limit=limit or None,
            heartbeat_interval_seconds=int(os.environ.get("PREFECT_WORKER_HEARTBEAT_SECONDS", "30")),
        ) as worker:
            await worker.start()

    loop = asyncio.new_event_loop()
    task = loop.create_task(main())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    print(
        f"worker {worker_name} polling pool {names.POOL} at {settings.prefect.api_url}; "
        f"metrics on http://{settings.metrics.host}:{settings.metrics.port}/metrics",
        flush=True,
    )
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        print(f"worker {worker_name} stopped", flush=True)
    finally:
        server.shutdown()
        loop.close()
    return 0
