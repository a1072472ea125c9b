"""The metrics endpoint's HTTP side: each answer rendered by the refresh thread after its refresh, once per
format a scraper has asked for, so a scrape writes bytes and waits for no rendering (200 tables are ~4,000
samples: ~20 ms of Python per render, and a scrape that rendered while the refresh thread held the GIL took
~140 ms). An answer older than `max_age_seconds` (a refresh that stalls) is rendered by the scrape itself:
what moves with the clock (lag, TTL headroom) never stops moving for longer than that."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector


class Answers:
    """Rendered answers of one collector, by the scraper's Accept header."""

    def __init__(self, collector: Collector, max_age_seconds: float) -> None:
        self.collector = collector
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        self._by_accept: dict[str, tuple[float, str, bytes]] = {}

    def render(self, accept: str) -> tuple[float, str, bytes]:
        encoder, content_type = choose_encoder(accept)
        started = time.monotonic()  # before the snapshot is read
        answer = (started, content_type, encoder(self.collector))
        with self._lock:  # never over a newer one (a counter served must not step back)
            if (kept := self._by_accept.get(accept)) is None or kept[0] <= answer[0]:
                self._by_accept[accept] = answer
        return answer

    def render_all(self) -> None:
        """After a refresh: render again every format asked for so far (the first scrape renders its own)."""
        with self._lock:
            accepts = list(self._by_accept)
        for accept in accepts:
            self.render(accept)

    def answer(self, accept: str) -> tuple[str, bytes]:
        with self._lock:
            found = self._by_accept.get(accept)
        if found is None or time.monotonic() - found[0] > self.max_age_seconds:
            found = self.render(accept)
        return found[1], found[2]

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        content_type, body = self.answer(environ.get("HTTP_ACCEPT", ""))
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def start(host: str, port: int, answers: Answers) -> WSGIServer:
    """Serve `answers` on host:port from a daemon thread (OSError when the port is taken)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (_Server,), {"address_family": family})
    server: WSGIServer = make_server(host, port, answers.app, server_class, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
