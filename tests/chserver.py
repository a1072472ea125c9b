"""ClickHouse's HTTP interface, served by the embedded engine: the `http://` source path, tested for real.

No modern ClickHouse server can be installed here, so this process serves the parts of ClickHouse's HTTP
interface that clickhouse-connect uses, and executes every query in chdb (the ClickHouse engine):

- `GET /ping` and `GET /`: `Ok.`
- a query from the `query` parameter and/or the POST body; `database`, `default_format`, `query_id`,
  `param_<name>` (query parameters); every other parameter is a setting, applied for that query only
- HTTP basic auth, `X-ClickHouse-User`/`-Key` headers or `user`/`password` parameters, checked against
  `--user` and the password in `--password-file`; a wrong one is ClickHouse's code 516 with HTTP 403
- `enable_http_compression=1` with `Accept-Encoding`: lz4 (frame), zstd, gzip or deflate, the client's first
- errors: ClickHouse's text and code from the engine, `X-ClickHouse-Exception-Code`, and the HTTP status
  ClickHouse maps the code to
- answers chunked and streamed as the engine produces them (a SELECT in Native, the text formats or Arrow),
  with `X-ClickHouse-Format`, `-Timezone`, `-Query-Id`, `-Summary`; an error after the first byte is
  written into the body the way ClickHouse 25.11+ does (`__exception__` blocks, `X-ClickHouse-Exception-Tag`)

For tests: `POST /__fault` with `{"after_bytes": N, "match": "text"}` makes the process die (os._exit)
after sending N bytes of its next answer to a query containing the text, the way a server killed
mid-stream leaves its client; with `"error": "Code: ..."` the answer instead goes on with that error at
that byte (framed as 25.11+ does, or as plain text after the data with `"framing": "plain"`); `POST /__profile` with `{"setting": "value"}` sets settings every query gets
(a server profile's, e.g. `max_result_rows`). Every query is logged as a JSON line to `--log`.

    python tests/chserver.py --path DIR --port N [--user U --password-file F] [--log FILE]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import re
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb
import pyarrow as pa

_PARAMS = {  # HTTP parameters that are not settings
    "query", "database", "default_format", "query_id", "session_id", "session_timeout", "session_check",
    "user", "password", "quota_key", "compress", "decompress", "buffer_size", "wait_end_of_query", "role",
    "client_protocol_version",
}  # fmt: skip
_STATUS = {  # ClickHouse's HTTP status for an exception code's name (see its exceptionCodeToHTTPStatus)
    401: ["REQUIRED_PASSWORD"],
    403: ["UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"],
    400: ["BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
          "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
          "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
          "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
          "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST",
          "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
          "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"],
    404: ["UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
          "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
          "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"],
    413: ["QUERY_IS_TOO_LARGE"],
    501: ["NOT_IMPLEMENTED"],
    503: ["SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"],
    408: ["TIMEOUT_EXCEEDED"],
}  # fmt: skip
_CONTENT_TYPES = {"Native": "application/octet-stream", "Arrow": "application/octet-stream"}
_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_CHUNK = 1 << 20
_SELECT = re.compile(r"\s*(SELECT|WITH)\b", re.IGNORECASE)
_CONCATENATING = {"Native", "TabSeparated", "TSV", "TabSeparatedWithNames", "TSVWithNames", "CSV",
                  "CSVWithNames", "JSONEachRow", "JSONCompactEachRow", "RowBinary"}  # fmt: skip


class Engine:
    """The one chdb connection of this process: one query at a time (a streamed answer holds it to its end),
    the request's settings applied for that query and reset after it."""

    def __init__(self, path: str) -> None:
        self.conn = chdb.connect(path)
        self.lock = threading.Lock()
        self.version = self.scalar("SELECT version()")
        self.timezone = self.scalar("SELECT timezone()")
        self.compression = self.scalar("SELECT getSetting('enable_http_compression')")  # the default
        names = self.conn.query("SELECT number, errorCodeToName(number) FROM numbers(1100)", "TSV").bytes()
        codes = dict(line.split("\t")[::-1] for line in names.decode().splitlines() if line.split("\t")[1])
        self.status = {int(codes[name]): status for status, group in _STATUS.items() for name in group}

    def scalar(self, sql: str) -> str:
        return bytes(self.conn.query(sql, "TSV").bytes()).decode().strip()

    @contextlib.contextmanager
    def session(self, database: str, settings: dict[str, str]) -> Iterator[Any]:
        with self.lock:
            self.conn.query(f"USE {_ident(database)}")
            applied = []
            try:
                for key, value in settings.items():
                    self.conn.query(f"SET {_ident(key)} = {_literal(value)}")
                    applied.append(key)
                yield self.conn
            finally:
                for key in applied:
                    self.conn.query(f"SET {_ident(key)} = DEFAULT")


class _Sink:
    """Where pyarrow writes a re-framed Arrow file; taken piece by piece as it grows."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def answer(conn: Any, sql: str, fmt: str, params: dict[str, str]) -> Iterator[tuple[bytes, Any, int | None]]:
    """The answer to one query as (bytes, engine result, Arrow rows) pieces. A SELECT in a format whose
    pieces concatenate is streamed (so an error can come after the first piece, as from a server), Arrow as
    one file re-framed from the engine's per-piece files; anything else is answered whole."""
    if not (_SELECT.match(sql) and (fmt in _CONCATENATING or fmt == "Arrow")):
        result = conn.query(sql, fmt, params=params or None)
        yield (bytes(result.bytes()) if result is not None else b""), result, None
        return
    method = bytes(conn.query("SELECT getSetting('output_format_arrow_compression_method')", "TSV").bytes())
    codec = {"lz4_frame": "lz4", "zstd": "zstd"}.get(method.decode().strip())  # before the stream: it ends it
    stream = conn.send_query(sql, fmt, params=params or None)
    try:
        pieces = iter(stream)
        first = next(pieces, None)
        if first is None:  # no rows: the format's own empty answer
            result = conn.query(sql, fmt, params=params or None)
            yield bytes(result.bytes()), result, 0 if fmt == "Arrow" else None
            return
        if fmt != "Arrow":
            for piece in itertools.chain([first], pieces):
                yield bytes(piece.bytes()), piece, None
            return
        sink = _Sink()
        writer = None
        for piece in itertools.chain([first], pieces):
            reader = pa.ipc.open_file(pa.py_buffer(piece.bytes()))
            if writer is None:
                options = pa.ipc.IpcWriteOptions(compression=codec)
                writer = pa.ipc.new_file(pa.PythonFile(sink, mode="w"), reader.schema, options=options)
            rows = 0
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                writer.write_batch(batch)
                rows += batch.num_rows
            yield sink.take(), piece, rows
        assert writer is not None
        writer.close()
        yield sink.take(), None, 0
    finally:
        stream.close()


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _compressor(encoding: str) -> Any:
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameCompressor()
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compressobj()
    if encoding == "gzip":
        return zlib.compressobj(wbits=31)
    if encoding == "deflate":
        return zlib.compressobj()
    raise ValueError(encoding)


class _Cut(Exception):
    """An injected error at the fault's byte: the answer goes on with the error, as a server's would."""


class _Streamer:
    """Writes a body chunked, compressed per Content-Encoding, and dies (or errs) where a fault says so."""

    def __init__(self, handler: Handler, encoding: str | None, fault: dict[str, Any] | None) -> None:
        self.handler, self.fault, self.sent = handler, fault, 0
        self.comp = _compressor(encoding) if encoding else None
        if self.comp is not None and encoding == "lz4":
            self._raw(self.comp.begin())

    def _raw(self, data: bytes) -> None:
        if not data:
            return
        if self.fault is not None and self.sent + len(data) >= int(self.fault["after_bytes"]):
            data = data[: max(0, int(self.fault["after_bytes"]) - self.sent)]
            self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if data else b"")
            self.handler.wfile.flush()
            if "error" not in self.fault:
                os._exit(137)  # a killed server: the kernel closes the socket mid-response
            error, self.fault = self.fault["error"], None
            raise _Cut(error)
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.sent += len(data)

    def write(self, data: bytes) -> None:
        self._raw(self.comp.compress(data) if self.comp is not None else data)

    def close(self) -> None:
        if self.comp is not None:
            self._raw(self.comp.flush())
        self.handler.wfile.write(b"0\r\n\r\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding") in ("gzip", "deflate"):
            body = zlib.decompress(body, wbits=47)
        self._handle(body)

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        args = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/__fault":
            self.server.fault = json.loads(body or b"{}")
            return self._plain(200, b"armed\n")
        if url.path == "/__profile":
            self.server.profile = {k: str(v) for k, v in json.loads(body or b"{}").items()}
            return self._plain(200, b"set\n")
        if url.path == "/ping" or (url.path == "/" and not body and "query" not in args):
            return self._plain(200, b"Ok.\n")
        if not self._authorized(args):
            text = (
                f"Code: 516. DB::Exception: {self._credentials(args)[0]}: Authentication failed: password is "
                f"incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)"
            )
            self._log(args.get("query", "") or body.decode("utf-8", "replace"), "", error=text)
            return self._error(516, text)
        sql = "\n".join(part for part in (args.get("query", ""), body.decode("utf-8", "surrogateescape")) if part)
        params = {k[len("param_") :]: v for k, v in args.items() if k.startswith("param_")}
        settings = {k: v for k, v in args.items() if k not in _PARAMS and not k.startswith("param_")}
        compress = settings.pop("enable_http_compression", self.server.engine.compression) in ("1", "true")
        fmt = m.group(1) if (m := _FORMAT.search(sql)) else args.get("default_format", "TabSeparated")
        encoding = self._encoding() if compress else None
        started = time.monotonic()
        with self.server.engine.session(args.get("database", "default"), {**self.server.profile, **settings}) as conn:
            pieces = answer(conn, sql, fmt, params)
            try:
                first = next(pieces)
            except Exception as exc:  # noqa: BLE001 - before the first byte: an error answer, as ClickHouse sends it
                self._log(sql, fmt, error=str(exc)[:300])
                return self._error(_code(exc), str(exc))
            data, result, _ = first
            summary = {
                "read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                "written_rows": str(result.rows_written()), "written_bytes": str(result.bytes_written()),
                "elapsed_ns": str(int((time.monotonic() - started) * 1e9)),
            } if result is not None else {}  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", _CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8"))
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-ClickHouse-Format", fmt)
            self.send_header("X-ClickHouse-Timezone", self.server.engine.timezone)
            self.send_header("X-ClickHouse-Query-Id", args.get("query_id") or str(uuid.uuid4()))
            self.send_header("X-ClickHouse-Summary", json.dumps(summary))
            fault = self.server.fault if self.server.fault and self.server.fault.get("match", "") in sql else None
            if fault is not None:
                self.server.fault = None
            tag = None if fault and fault.get("framing") == "plain" else uuid.uuid4().hex[:16]  # plain: before 25.11
            if tag:
                self.send_header("X-ClickHouse-Exception-Tag", tag)
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.end_headers()
            out = _Streamer(self, encoding, fault)
            total, rows, error = 0, 0 if fmt == "Arrow" else None, None
            try:
                for data, _, piece_rows in itertools.chain([first], pieces):
                    total += len(data)
                    rows = rows + piece_rows if rows is not None and piece_rows is not None else rows
                    for at in range(0, len(data), _CHUNK):
                        out.write(data[at : at + _CHUNK])
            except Exception as exc:  # noqa: BLE001 - after the first byte: the error goes into the body
                error = str(exc).removeprefix("Streaming query failed: ")
                text = f"{error.rstrip()} (version {self.server.engine.version} (chdb))\n".encode()
                if tag:  # ClickHouse 25.11+ frames it with the answer's tag
                    text = b"__exception__\r\n%s\r\n%s%d %s\r\n__exception__\r\n" % (
                        tag.encode(),
                        text,
                        len(text),
                        tag.encode(),
                    )
                out.write(text)
            self._log(sql, fmt, bytes=total, arrow_rows=rows, encoding=encoding, error=error)  # before the end:
            out.close()  # a client that has the whole answer finds it logged

    def _credentials(self, args: dict[str, str]) -> tuple[str, str]:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return user, password
        if "X-ClickHouse-User" in self.headers:
            return self.headers["X-ClickHouse-User"], self.headers.get("X-ClickHouse-Key", "")
        return args.get("user", "default"), args.get("password", "")

    def _authorized(self, args: dict[str, str]) -> bool:
        return self._credentials(args) == (self.server.user, self.server.password)

    def _encoding(self) -> str | None:
        offered = [e.split(";")[0].strip() for e in self.headers.get("Accept-Encoding", "").split(",")]
        return next((e for e in offered if e in ("lz4", "zstd", "gzip", "deflate")), None)

    def _error(self, code: int, text: str) -> None:
        text = text.removeprefix("Streaming query failed: ")  # chdb's words, not the server's
        body = f"{text.rstrip()} (version {self.server.engine.version} (chdb))\n".encode()
        self.send_response(self.server.engine.status.get(code, 500))
        self.send_header("X-ClickHouse-Exception-Code", str(code))
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _log(self, sql: str, fmt: str, **fields: Any) -> None:
        if self.server.log is not None:
            line = json.dumps({"sql": sql[:4000], "format": fmt, **fields}) + "\n"
            with self.server.log_lock, open(self.server.log, "a") as out:
                out.write(line)


def _code(exc: Exception) -> int:
    """The ClickHouse error code in an engine error's text."""
    m = re.search(r"Code: (\d+)\.", str(exc))
    return int(m.group(1)) if m else 1002  # UNKNOWN_EXCEPTION


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, engine: Engine, user: str, password: str, log: str | None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.engine, self.user, self.password, self.log = engine, user, password, log
        self.log_lock = threading.Lock()
        self.fault: dict[str, Any] | None = None
        self.profile: dict[str, str] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", required=True, help="the chdb engine folder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="default")
    parser.add_argument("--password-file", help="a file holding the password (default: none)")
    parser.add_argument("--log", help="append one JSON line per query here")
    args = parser.parse_args()
    password = Path(args.password_file).read_text().strip() if args.password_file else ""
    server = Server(args.port, Engine(os.path.realpath(args.path)), args.user, password, args.log)
    server.serve_forever()


if __name__ == "__main__":
    main()
