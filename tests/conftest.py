"""Shared fixtures: a fresh embedded ClickHouse per test, and a real catalog (SQLite, or Postgres on
127.0.0.1:5432 in a database made for the test)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from iceberg_offload import config
from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.config import Settings
from iceberg_offload.iceberg.catalog import open_catalog
from iceberg_offload.iceberg.sink import Sink

# A Prefect call in this process without a server of the test's own would start a temporary server (~17 s
# of CPU, and a test then reads a server nobody wrote to): refuse it instead (see stackutil.prefect_settings).
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
# Every --json payload a command prints in the suite (in-process or in a subprocess) is checked against its
# model in payloads*.py: a payload that drifts from docs/json.md fails the test that printed it.
os.environ["OFFLOAD_CHECK_PAYLOADS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the session: no process whose command line or environment names this session's temporary folder
    (a stack's server, worker, supervisor, exporter, or a flow run: its PREFECT_HOME is under the folder) may
    still run. Found ones are killed, then reported."""
    base = str(tmp_path_factory.getbasetemp()) + os.sep
    yield
    deadline = time.monotonic() + 15  # a process stopped just now may still be exiting
    while (left := processes_naming(base)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"the tests left these processes running (now killed): {left}"


def processes_naming(text: str) -> dict[int, str]:
    """pid -> command line of every other process whose command line or environment contains `text`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = Path(f"/proc/{entry}/environ").read_bytes().decode(errors="replace")
            if text in cmd or text in env:
                found[int(entry)] = cmd[:200]
    return found


PG_DSN = os.environ.get("OFFLOAD_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/")


def _pg_admin() -> Any:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    conn.autocommit = True
    return conn


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def catalog_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The catalog URI: a SQLite file in the test folder, or a new Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/catalog.db"
        return
    name = f"offload_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = _pg_admin()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(
            f"Postgres at 127.0.0.1:5432 is not answering ({exc}); start it: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_DSN + name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/catalog.db"


Make = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Make:
    """Write an offload.toml in the test folder and load it. Tables are dicts of [[tables]] keys."""

    def make(
        tables: list[dict[str, Any]],
        catalog_uri: str | None = None,
        warehouse: str | None = None,
        catalog_properties: dict[str, str] | None = None,
        catalog_type: str = "sql",
        namespace: str | None = None,
        dsn: str | None = None,
        **offload: Any,
    ) -> Settings:
        uri = catalog_uri or f"sqlite:///{tmp_path}/catalog.db"
        lines = [
            "[source]",
            f'dsn = "{dsn or f"chdb://{tmp_path}/ch"}"',
            'database = "k2"',
            "lock_timeout_seconds = 20",
            "",
            "[catalog]",
            f'type = "{catalog_type}"',
            *([f'namespace = "{namespace}"'] if namespace else []),
            f'uri = "{uri}"',
            f"warehouse = {_toml(warehouse or f'file://{tmp_path}/warehouse')}",
            *([f"properties = {_toml(catalog_properties)}"] if catalog_properties else []),
            "",
            "[offload]",
            f"settle_seconds = {offload.pop('settle_seconds', 0)}",
        ]
        lines += [f"{k} = {_toml(v)}" for k, v in offload.items()]
        for t in tables:
            lines += ["", "[[tables]]"] + [f"{k} = {_toml(v)}" for k, v in t.items()]
        path = tmp_path / "offload.toml"
        path.write_text("\n".join(lines) + "\n")
        return config.load(path, env={})

    return make


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


def _key(k: str) -> str:
    return k if k.replace("_", "").isalnum() and k.isascii() else _toml(k)


@contextlib.contextmanager
def clickhouse(settings: Settings) -> Iterator[Source]:
    with open_source(settings.source) as src:
        src.command("CREATE DATABASE IF NOT EXISTS k2")
        yield src


def sink_for(settings: Settings) -> Sink:
    return Sink(open_catalog(settings.catalog), settings.catalog.namespace)


def cold(settings: Settings, target: str) -> pa.Table:
    table = sink_for(settings).load(target)
    assert table is not None, f"no Iceberg table {target}"
    return table.scan().to_arrow()


def keys_of(tbl: pa.Table, *cols: str) -> list[tuple[Any, ...]]:
    return list(zip(*(tbl.column(c).to_pylist() for c in cols), strict=True))


TRADES_DDL = """CREATE TABLE k2.{name} (
    ts DateTime64(3), seq UInt64, symbol LowCardinality(String), price Decimal(18, 8)
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, seq)"""


def insert_trades(src: Source, name: str, start_ms: int, count: int, seq0: int = 0, step_ms: int = 1000) -> None:
    src.command(f"""INSERT INTO k2.{name} (ts, seq, symbol, price) SELECT fromUnixTimestamp64Milli(toInt64({start_ms} + number * {step_ms})),
        {seq0} + number, ['BTC', 'ETH'][1 + number % 2], toDecimal64(number / 100, 8) FROM numbers({count})""")


def trades_table(name: str = "trades", **extra: Any) -> dict[str, Any]:
    return {"source": name, "timestamp_column": "ts", "sequence_column": "seq", **extra}


# -- an S3 warehouse: moto's S3 server on 127.0.0.1, one per session, a bucket per test ---------------------


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str

    def client(self, key: str | None = None, secret: str | None = None) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key or self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_answering(proc: subprocess.Popen[bytes], url: str, timeout: float = 30) -> None:
    """Until `url` answers over HTTP (any status): the server is up. Fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            with contextlib.suppress(subprocess.TimeoutExpired):  # the wait is on the process, not a sleep
                proc.wait(timeout=0.05)
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}") from None
    raise RuntimeError(f"{proc.args} did not answer at {url} within {timeout} s")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3, Glue (and IAM) server, authentication enforced: requests need a key of the IAM user made here
    with the first unauthenticated calls, so a test proves which credentials reached S3."""
    pytest.importorskip("moto", reason="moto[server] is in the dev extra: pip install -e '.[dev]'")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_answering(proc, f"{endpoint}/moto-api/")
        import boto3

        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="offload")  # the unauthenticated calls: user, policy, key
        allow = [{"Effect": "Allow", "Action": ["s3:*", "glue:*"], "Resource": "*"}]  # the warehouse, the Glue catalog
        policy = {"Version": "2012-10-17", "Statement": allow}
        iam.put_user_policy(UserName="offload", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="offload")["AccessKey"]
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The credentials in the environment only (as the AWS SDKs read them), nowhere in the config."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server, request: pytest.FixtureRequest) -> str:
    """A new bucket for this test (named after it); the S3 warehouse is s3://<bucket>/warehouse."""
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    s3_env.client().create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """make_settings keywords for a local warehouse, or an S3 one (a bucket on the moto server, the
    endpoint in the config, the credentials in the environment)."""
    if request.param == "local":
        return {}
    bucket = request.getfixturevalue("s3_bucket")
    server: S3Server = request.getfixturevalue("s3_server")
    return {"warehouse": f"s3://{bucket}/warehouse", "catalog_properties": {"s3.endpoint": server.endpoint}}


def warehouse_files(table: Any, suffix: str = "") -> set[str]:
    """Every file under a table's location, local or S3, as its file system lists it (/path or bucket/key)."""
    import pyarrow.fs as pafs
    from pyiceberg.io.pyarrow import PyArrowFileIO

    scheme, netloc, path = PyArrowFileIO.parse_location(table.location())
    fs = table.io.fs_by_scheme(scheme, netloc)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)}


# -- a ClickHouse server over HTTP: tests/chserver.py, ClickHouse's HTTP interface over the embedded engine --


class HttpClickHouse:
    """One chserver process on 127.0.0.1 serving the engine folder `path`, user `offload` with a password."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.path, self.log = folder, folder / "ch", folder / "chserver.jsonl"
        self.password = f"pw-{uuid.uuid4().hex[:12]}"
        (folder / "ch-password").write_text(self.password + "\n")
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def dsn(self, password: str | None = None) -> str:
        return f"http://offload:{self.password if password is None else password}@127.0.0.1:{self.port}/"

    def start(self) -> None:
        script = Path(__file__).with_name("chserver.py")
        argv = [sys.executable, str(script), "--path", str(self.path), "--port", str(self.port), "--user", "offload"]
        argv += ["--password-file", str(self.folder / "ch-password"), "--log", str(self.log)]
        with open(self.folder / "chserver.out", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_answering(self.proc, f"{self.url}/ping")

    def fault(self, after_bytes: int, match: str, error: str | None = None, framing: str = "tagged") -> None:
        """The server dies after `after_bytes` of its next answer to a query containing `match`; with `error`,
        the answer goes on with that ClickHouse error instead (`framing`: "tagged" as 25.11+, or "plain")."""
        fault = {"after_bytes": after_bytes, "match": match, "framing": framing}
        body = json.dumps({**fault, "error": error} if error else fault).encode()
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/__fault", data=body), timeout=10).close()

    def queries(self) -> list[dict[str, Any]]:
        """Every query the server answered or refused, in order (one JSON object each)."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def ch_http(tmp_path: Path) -> Iterator[HttpClickHouse]:
    """A ClickHouse HTTP endpoint over this test's engine folder (tmp_path/ch); give make_settings
    `dsn=ch_http.dsn()`. The test must not open the folder itself: the server process holds it."""
    server = HttpClickHouse(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["embedded", "http"])
def source_dsn(request: pytest.FixtureRequest) -> str | None:
    """Run the test on both source paths: None (make_settings' embedded default) or the DSN of a ClickHouse
    HTTP endpoint over the same engine folder (`ch_http`)."""
    if request.param == "embedded":
        return None
    server: HttpClickHouse = request.getfixturevalue("ch_http")
    return server.dsn()
