"""Access: Prefect API authentication, secrets from env or files (never in logs, outputs or Prefect), and a
native stack that listens on 127.0.0.1 only.

The stack tests share one native stack (`up`) whose auth string comes from a file named in the TOML
(`auth_string_file`), whose ClickHouse DSN comes from a file (`dsn_file`), whose catalog is Postgres with a
password in OFFLOAD__CATALOG__URI and whose S3 keys come from OFFLOAD__CATALOG__PROPERTIES_FILE.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import _pg_admin, cold
from iceberg_offload import config
from iceberg_offload.config import Settings
from iceberg_offload.errors import ConfigError, SourceUnavailable, redact
from stackutil import ENV_BASE, free_port, seed, wait_for, write_config

MAIN = "iceberg-offload-main/iceberg-offload-15min"
OUTPUTS: list[str] = []
"""Every stdout and stderr of every command this module ran: searched for the secrets at the end."""


def run_cli(
    env: dict[str, str], config_path: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "iceberg_offload.cli", *args, "--config", config_path],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    OUTPUTS.append(f"$ iceberg-offload {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_json(
    env: dict[str, str], config_path: str, *args: str, ok: tuple[int, ...] = (0,), timeout: float = 300
) -> Any:
    proc = run_cli(env, config_path, *args, "--json", timeout=timeout)
    assert proc.returncode in ok, (
        f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return json.loads(proc.stdout)


def checks(doctor: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doctor["checks"]}


# -- secrets from files, redaction: no stack ---------------------------------------------------------------
def test_secret_files_from_the_toml_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("http://offload:S3CR3T-file-dsn@ch.internal:8123/\n")
    (tmp_path / "auth").write_text("  admin:S3CR3T-file-auth \n")
    (tmp_path / "props.json").write_text(json.dumps({"s3.secret-access-key": "S3CR3T-file-s3"}))
    cfg = tmp_path / "offload.toml"
    cfg.write_text(
        '[source]\ndsn_file = "dsn"\n\n[prefect]\nauth_string_file = "auth"\n\n'
        '[[tables]]\nsource = "t"\ntimestamp_column = "ts"\ncolumn_types = { price_file = "string" }\n'
    )
    s = config.load(cfg, env={})
    assert s.source.dsn == "http://offload:S3CR3T-file-dsn@ch.internal:8123/"  # relative to the config file
    assert s.prefect.auth_string == "admin:S3CR3T-file-auth"  # surrounding whitespace stripped
    assert s.tables[0].column_types == {"price_file": "string"}  # [[tables]] keys are not secret files
    assert config.prefect_env(s)["PREFECT_API_AUTH_STRING"] == "admin:S3CR3T-file-auth"

    # the environment overrides the TOML, in either form
    s = config.load(
        cfg,
        env={
            "OFFLOAD__PREFECT__AUTH_STRING": "admin:S3CR3T-env",
            "OFFLOAD__CATALOG__PROPERTIES_FILE": str(tmp_path / "props.json"),
            "OFFLOAD__SOURCE__DSN_FILE": str(tmp_path / "auth"),
        },
    )
    assert s.prefect.auth_string == "admin:S3CR3T-env"
    assert s.catalog.properties == {"s3.secret-access-key": "S3CR3T-file-s3"}  # JSON in a file, like in env
    assert s.source.dsn == "admin:S3CR3T-file-auth"

    with pytest.raises(ConfigError, match="both OFFLOAD__SOURCE__DSN and OFFLOAD__SOURCE__DSN_FILE"):
        config.load(cfg, env={"OFFLOAD__SOURCE__DSN": "chdb://x", "OFFLOAD__SOURCE__DSN_FILE": str(tmp_path / "dsn")})
    with pytest.raises(ConfigError, match="cannot read the secret file .*nowhere"):
        config.load(cfg, env={"OFFLOAD__PREFECT__AUTH_STRING_FILE": str(tmp_path / "nowhere")})
    cfg.write_text('[source]\ndsn = "chdb://x"\ndsn_file = "dsn"\n')
    with pytest.raises(ConfigError, match="both dsn and dsn_file"):
        config.load(cfg, env={})


def test_configured_secrets_are_redacted_everywhere_in_process(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    cfg = tmp_path / "offload.toml"
    cfg.write_text(
        '[catalog]\nuri = "postgresql+psycopg2://u:S3CR3T-pg-' + tag + '@db/x"\n'
        'properties = { "s3.access-key-id" = "S3CR3T-ak-' + tag + '", '
        '"s3.secret-access-key" = "S3CR3T-sk-' + tag + '", "s3.region" = "us-east-1" }\n'
    )
    s = config.load(
        cfg,
        env={
            "OFFLOAD__PREFECT__AUTH_STRING": f"admin:S3CR3T-auth-{tag}",
            "OFFLOAD__SOURCE__DSN": f"http://offload:S3CR3T-ch-{tag}@ch:8123/",
        },
    )
    secrets = [f"S3CR3T-{k}-{tag}" for k in ("pg", "sk", "auth", "ch")]
    text = repr(s) + str(s) + repr(s.catalog) + repr(s.prefect) + repr(s.source)
    assert not [x for x in secrets if x in text], "a secret is in the settings' repr"
    # by value, wherever it appears: not only in URL or key=value shape
    err = SourceUnavailable(
        f"boom {' / '.join(secrets)} {base64.b64encode(f'admin:S3CR3T-auth-{tag}'.encode())!r}",
        f"the key is S3CR3T-sk-{tag}",
    )
    assert not [x for x in secrets if x in str(err) + json.dumps(err.as_dict())], str(err)
    assert "us-east-1" in redact(json.dumps(s.catalog.properties))  # only secrets are removed
    assert redact("sk S3CR3T-sk-" + tag) == "sk ***"
    # a key's id names the key, as a DSN's user names the user: shown. Redacted, an id `offload` (the compose
    # example's) turned every `iceberg-offload` of the output into `iceberg-***`.
    assert redact("key id S3CR3T-ak-" + tag) == "key id S3CR3T-ak-" + tag
    config.load(cfg, env={"OFFLOAD__CATALOG__PROPERTIES": '{"s3.access-key-id": "offload"}'})
    assert redact("run: iceberg-offload up") == "run: iceberg-offload up"


def test_log_records_are_redacted_in_process(tmp_path: Path) -> None:
    """Once a config with secrets is loaded, no log record of the process carries them: a message, its
    arguments, or the traceback of a library exception (its chained cause included)."""
    import io
    import logging

    secret = f"S3CR3T-log-{uuid.uuid4().hex[:10]}"
    cfg = tmp_path / "offload.toml"
    cfg.write_text(f'[catalog]\nuri = "postgresql+psycopg2://u:{secret}@db/x"\n')
    config.load(cfg, env={})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test_access.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("connecting with %s", secret)
        logger.warning(f"key {secret} in an f-string")
        try:
            try:
                raise ValueError(f"pool said {secret}")
            except ValueError as exc:
                raise RuntimeError("could not connect") from exc
        except RuntimeError:
            logger.exception("catalog down")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "could not connect" in text and "pool said ***" in text and text.count("***") == 3, text
    assert secret not in text, text


def test_cli_errors_and_json_never_show_a_clickhouse_password(tmp_path: Path) -> None:
    """A DSN read from a file, with a password, pointing at a closed port: every command that reaches
    ClickHouse fails naming the host and port, and prints the password nowhere (stdout, stderr, --json)."""
    secret = f"S3CR3T-ch-{uuid.uuid4().hex[:10]}"
    port = free_port()
    (tmp_path / "dsn").write_text(f"http://offload:{secret}@127.0.0.1:{port}/\n")
    settings = write_config(tmp_path, ["trades"])
    env = {**ENV_BASE, "OFFLOAD__SOURCE__DSN_FILE": str(tmp_path / "dsn")}
    before = len(OUTPUTS)
    run = run_json(env, settings.path, "run", ok=(1,))
    error = run.get("error") or run["tables"][0]["error"]
    assert error["type"] == "source_unavailable"
    assert f"127.0.0.1:{port}" in error["message"] and "offload:***@" in error["message"], error
    text = run_cli(env, settings.path, "run")
    assert text.returncode == 1 and f"127.0.0.1:{port}" in text.stdout + text.stderr
    status = run_cli(env, settings.path, "status", "--json")
    assert f"127.0.0.1:{port}" in status.stdout + status.stderr
    doctor = run_json(env, settings.path, "doctor", ok=(1,), timeout=120)
    assert checks(doctor)["clickhouse"]["status"] == "fail"
    assert f"127.0.0.1:{port}" in checks(doctor)["clickhouse"]["saw"]
    leaked = [out.split("\n")[0] for out in OUTPUTS[before:] if secret in out]
    assert not leaked, f"the ClickHouse password is in the output of {leaked}"


def test_compose_turns_api_auth_on_for_the_server_and_everything_that_calls_it() -> None:
    import shutil

    import yaml

    deploy = Path(__file__).parent.parent / "deploy"
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed (apt-get install --no-install-recommends docker-compose)"
    out = subprocess.run(
        [exe, "--env-file", str(deploy / ".env.example"), "-f", str(deploy / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    secret = "/run/secrets/prefect_auth_string"  # deploy/make-secrets.sh writes it; no environment holds it
    server = services["k2-prefect-server"]
    assert "prefect_auth_string" in [x["source"] for x in server["secrets"]]
    assert f"PREFECT_SERVER_API_AUTH_STRING=$(cat {secret})" in " ".join(server["command"]).replace("$$", "$")
    envs = {name: svc.get("environment") or {} for name, svc in services.items()}
    callers = [
        n
        for n, e in envs.items()
        if n != "k2-prefect-server"
        and ({"PREFECT_API_URL", "OFFLOAD__PREFECT__API_URL"} & set(e) or "k2-prefect-server:4200" in str(e))
    ]
    assert "k2-prefect-worker" in callers
    for name in callers:  # our commands set PREFECT_API_AUTH_STRING for themselves and their flow runs from it
        assert envs[name].get("OFFLOAD__PREFECT__AUTH_STRING_FILE") == secret, f"{name} calls the API without it"
        assert "prefect_auth_string" in [x["source"] for x in services[name]["secrets"]], name
    # the server's healthcheck reads /api/ready, which Prefect answers without credentials
    assert "/api/ready" in " ".join(services["k2-prefect-server"]["healthcheck"]["test"])


# -- the native stack with authentication ------------------------------------------------------------------
@dataclass
class Stack:
    root: Path
    settings: Settings
    env: dict[str, str]
    secrets: dict[str, str]
    dsn_file: Path
    chdb_dsn: str

    @property
    def api(self) -> str:
        return self.settings.prefect.api_url.rstrip("/")

    def api_call(self, method: str, path: str, body: Any = None, auth: str | None = "") -> tuple[int, Any]:
        """(status, body) of one API call: auth "" = ours, None = no Authorization header, else that string."""
        auth = self.secrets["auth"] if auth == "" else auth
        req = urllib.request.Request(
            self.api + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        if auth is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return run_cli({**self.env, **(env or {})}, self.settings.path, *args, timeout=timeout)

    def json(
        self, *args: str, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None, timeout: float = 300
    ) -> Any:
        return run_json({**self.env, **(env or {})}, self.settings.path, *args, ok=ok, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("access")
    tag = uuid.uuid4().hex[:12]
    secrets = {
        "auth": f"admin:S3CR3T-auth-{tag}",
        "pg": f"S3CR3T-pg-{tag}",
        "s3_key": f"S3CR3T-ak-{tag}",
        "s3_secret": f"S3CR3T-sk-{tag}",
        "ch": f"S3CR3T-ch-{tag}",
    }
    sdir = root / "secrets"
    sdir.mkdir()
    (sdir / "auth").write_text(secrets["auth"] + "\n")
    chdb_dsn = f"chdb://{root}/ch"
    (sdir / "dsn").write_text(chdb_dsn + "\n")
    (sdir / "catalog.json").write_text(
        json.dumps(
            {
                "s3.access-key-id": secrets["s3_key"],
                "s3.secret-access-key": secrets["s3_secret"],
                "s3.region": "us-east-1",
            }
        )
    )
    for f in sdir.iterdir():
        f.chmod(0o600)
    db = f"offload_access_{tag}"
    admin = _pg_admin()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    tables = [
        {"source": f"b{i}", "layer": "bronze", "timestamp_column": "ts", "sequence_column": "seq"} for i in range(2)
    ]
    write_config(
        root, [], extra_tables=tables, prefect={"auth_string_file": "secrets/auth", "retry_delays_seconds": [1.0]}
    )
    path = root / "offload.toml"
    path.write_text(path.read_text().replace(f'dsn = "{chdb_dsn}"', 'dsn_file = "secrets/dsn"'))
    env = {
        **ENV_BASE,
        "OFFLOAD__CATALOG__URI": f"postgresql+psycopg2://postgres:{secrets['pg']}@127.0.0.1:5432/{db}",
        "OFFLOAD__CATALOG__PROPERTIES_FILE": str(sdir / "catalog.json"),
    }
    settings = config.load(path, env=env)
    assert settings.prefect.auth_string == secrets["auth"] and settings.source.dsn == chdb_dsn
    seed(settings, ["b0", "b1"], 2000)
    st = Stack(root, settings, env, secrets, sdir / "dsn", chdb_dsn)
    try:
        up = st.json("up", timeout=240)
        assert up["api_ready"] and up["workers_online"] >= 1, up
        yield st
    finally:
        st.cli("down", timeout=120)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@pytest.mark.integration
@pytest.mark.slow
def test_the_api_refuses_calls_without_the_auth_string(stack: Stack) -> None:
    protected = [
        ("POST", "/deployments/filter", {}),
        ("POST", "/flow_runs/filter", {}),
        ("POST", "/logs/filter", {}),
        ("GET", "/admin/version", None),
        ("GET", "/work_pools/iceberg-offload", None),
        ("POST", "/flow_runs/", {"flow_id": str(uuid.uuid4())}),
    ]
    for method, path, body in protected:
        assert stack.api_call(method, path, body, auth=None)[0] == 401, f"{method} {path} without credentials"
        assert stack.api_call(method, path, body, auth="admin:wrong")[0] == 401, f"{method} {path}, wrong auth"
    for method, path, body in protected[:5]:
        assert stack.api_call(method, path, body)[0] == 200, f"{method} {path} with our auth string"
    # Prefect answers health probes without credentials (documented; what compose's healthcheck relies on)
    assert stack.api_call("GET", "/ready", auth=None)[0] == 200
    assert stack.api_call("GET", "/health", auth=None)[0] == 200


@pytest.mark.integration
@pytest.mark.slow
def test_deploy_and_trigger_wait_complete_with_auth(stack: Stack) -> None:
    deploy = stack.json("deploy")
    assert {d["status"] for d in deploy["deployments"]} == {"unchanged"}, deploy
    run = stack.json("trigger", "--wait", "--timeout", "240", timeout=300)
    assert run["state"] == "COMPLETED", run  # the worker's flow-run subprocess reached the API too
    for t in ("b0", "b1"):
        assert cold(stack.settings, t).num_rows == 2000  # in the Postgres catalog with the secret password


@pytest.mark.integration
@pytest.mark.slow
def test_operator_commands_and_the_prefect_cli_work_with_auth(stack: Stack) -> None:
    doctor = stack.json("doctor", ok=(0, 1), timeout=120)
    by = checks(doctor)
    for name in ("prefect server", "workers", "deployment", "metrics endpoint", "clickhouse", "catalog"):
        assert by[name]["status"] == "ok", by[name]
    status = stack.json("status")
    assert {t["table"] for t in status["tables"]} == {"b0", "b1"} and all(
        t["cold_rows"] == 2000 for t in status["tables"]
    )
    show = stack.json("schedule", "show")
    assert all(d["exists"] for d in show["deployments"]), show
    ps = stack.json("ps")
    assert ps["running"] and ps["api_ready"] and ps["workers_online"] >= 1
    prefect_env = {**ENV_BASE, **config.prefect_env(stack.settings)}
    out = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "inspect", MAIN],
        env=prefect_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    OUTPUTS.append(f"$ prefect deployment inspect\n{out.stdout}\n{out.stderr}")
    assert out.returncode == 0 and "'iceberg-offload-15min'" in out.stdout, out.stdout + out.stderr
    no_auth = {k: v for k, v in prefect_env.items() if k != "PREFECT_API_AUTH_STRING"}
    out = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "inspect", MAIN],
        env=no_auth,
        capture_output=True,
        text=True,
        timeout=120,
    )
    OUTPUTS.append(f"$ prefect deployment inspect (no auth)\n{out.stdout}\n{out.stderr}")
    assert out.returncode != 0 and "'iceberg-offload-15min'" not in out.stdout, out.stdout + out.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_doctor_with_a_wrong_auth_string_says_401_and_names_the_fix(stack: Stack) -> None:
    doctor = stack.json(
        "doctor", ok=(1,), timeout=120, env={"OFFLOAD__PREFECT__AUTH_STRING": f"admin:wrong-{uuid.uuid4().hex[:8]}"}
    )
    server = checks(doctor)["prefect server"]
    assert server["status"] == "fail" and "401" in server["saw"], server
    assert "auth_string" in server["fix"] and "OFFLOAD__PREFECT__AUTH_STRING" in server["fix"], server
    assert not doctor["ok"]


@pytest.mark.integration
@pytest.mark.slow
def test_up_with_a_wrong_auth_string_fails_fast_and_names_the_fix(stack: Stack) -> None:
    started = time.monotonic()
    out = stack.json("up", ok=(2,), timeout=120, env={"OFFLOAD__PREFECT__AUTH_STRING": "admin:wrong-auth-value"})
    assert time.monotonic() - started < 60  # not the 180 s readiness timeout
    assert "401" in out["error"]["message"] and "auth_string" in out["error"]["fix"], out


@pytest.mark.integration
@pytest.mark.slow
def test_errors_of_a_failing_cycle_are_redacted_on_the_stack(stack: Stack) -> None:
    """The DSN file now names a ClickHouse server with a password on a closed port: flow runs (which read
    the config file anew) fail with errors that quote the DSN; the password must not be in them."""
    port = free_port()
    stack.dsn_file.write_text(f"http://offload:{stack.secrets['ch']}@127.0.0.1:{port}/\n")
    try:
        run = stack.json("trigger", "--wait", "--timeout", "240", ok=(1,), timeout=300)
        assert run["state"] == "FAILED", run
        code, found = stack.api_call("GET", f"/flow_runs/{run['flow_run_id']}")
        message = found["state"]["message"]
        assert code == 200 and f"127.0.0.1:{port}" in message and "offload:***@" in message, message
        cycle = stack.json("run", ok=(1,))
        assert f"127.0.0.1:{port}" in json.dumps(cycle), cycle
        status = stack.cli("status")
        assert f"127.0.0.1:{port}" in status.stdout + status.stderr
        doctor = stack.json("doctor", ok=(1,), timeout=120)
        assert f"127.0.0.1:{port}" in checks(doctor)["clickhouse"]["saw"]
    finally:
        stack.dsn_file.write_text(stack.chdb_dsn + "\n")


def _descendants(pids: set[int]) -> set[int]:
    children: dict[int, set[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, set()).add(int(proc.name))
    found, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[len("socket:[") : -1])
    except OSError:
        pass
    return out


def _addr(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = ".".join(str(b) for b in raw[::-1])
    else:  # four little-endian 32-bit words
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        ip = (
            "::ffff:" + ".".join(str(b) for b in words[12:])
            if words[:12] == b"\0" * 10 + b"\xff\xff"
            else ":".join(words[i : i + 2].hex() for i in range(0, 16, 2))
        )
    return ip, int(port, 16)


def _listening() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every LISTEN TCP socket, IPv4 and IPv6."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":
                out[f[9]] = _addr(f[1])
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_every_listening_socket_of_the_stack_is_on_loopback(stack: Stack) -> None:
    ps = stack.json("ps")
    pids = _descendants({p["pid"] for p in ps["processes"] if p["pid"]})
    listening = _listening()
    ours = {(pid, *listening[inode]) for pid in pids for inode in _socket_inodes(pid) if inode in listening}
    ports = {port for _pid, _ip, port in ours}
    api_port, metrics_port = int(stack.api.rsplit(":", 1)[1].split("/")[0]), stack.settings.metrics.port
    assert {api_port, metrics_port} <= ports, f"the API and metrics listeners were not found among {ours}"
    print(f"listening: {sorted(ours)}")
    wide = sorted(s for s in ours if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1"))
    cmd = {
        pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120].decode(errors="replace")
        for pid, _ip, _port in wide
    }
    assert not wide, f"listening beyond 127.0.0.1: {[(pid, ip, port, cmd[pid]) for pid, ip, port in wide]}"


def _all_pages(stack: Stack, path: str, body: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    while True:
        code, page = stack.api_call("POST", path, {**body, "limit": 200, "offset": len(out)})
        assert code == 200, (path, page)
        out += page
        if len(page) < 200:
            return out


@pytest.mark.integration
@pytest.mark.slow
def test_no_secret_in_prefect_logs_or_outputs(stack: Stack) -> None:
    """Read back what Prefect holds (flow and task runs, deployments, work pool, logs, artifacts, variables,
    blocks), then stop the stack and read every file it wrote and every output of this module: none holds a
    secret (also the auth string's password and its Basic token)."""
    path = stack.settings.path
    runs = _all_pages(stack, "/flow_runs/filter", {})
    assert runs and all(set(r["parameters"]) <= {"config", "table", "run_id"} for r in runs), runs
    assert {r["parameters"]["config"] for r in runs} == {path}
    deployments = _all_pages(stack, "/deployments/filter", {})
    assert len(deployments) == 3 and all(d["parameters"] == {"config": path} for d in deployments)
    logs = _all_pages(stack, "/logs/filter", {})
    assert len(logs) > 20 and any("***" in log["message"] for log in logs), "the failing cycle logged no error"
    held = {
        "flow runs": runs,
        "deployments": deployments,
        "logs": logs,
        "task runs": _all_pages(stack, "/task_runs/filter", {}),
        "artifacts": _all_pages(stack, "/artifacts/filter", {}),
        "work pools": _all_pages(stack, "/work_pools/filter", {}),
        "workers": _all_pages(stack, "/work_pools/iceberg-offload/workers/filter", {}),
        "variables": _all_pages(stack, "/variables/filter", {}),
        "blocks": _all_pages(stack, "/block_documents/filter", {"include_secrets": True}),
        "events": stack.api_call("POST", "/events/filter", {"limit": 50}),
    }
    assert held["events"][0] == 200 and held["events"][1]["events"], held["events"]
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.settings.metrics.port}/metrics", timeout=10) as resp:
        held["metrics"] = resp.read().decode()
    assert "offload_info" in held["metrics"]
    assert held["artifacts"], "no cycle artifact to search"
    down = stack.json("down", timeout=120)
    assert down["stopped"], down
    wait_for(lambda: not stack.json("ps", ok=(1,))["running"], 30, "the stack to stop")

    auth = stack.secrets["auth"]
    needles = {
        **{k: v for k, v in stack.secrets.items() if k != "s3_key"},  # a key id is not a secret (shown)
        "auth password": auth.partition(":")[2],
        "auth token": base64.b64encode(auth.encode()).decode(),
    }
    found = [
        f"Prefect {what}: {name}"
        for what, value in held.items()
        for name, secret in needles.items()
        if secret in json.dumps(value)
    ]
    files = [
        f
        for f in stack.root.rglob("*")
        if f.is_file() and stack.root / "secrets" not in f.parents and f.name != "offload.toml"
    ]
    stack_files = {f.name for f in (stack.root / "prefect").parent.joinpath("stack").iterdir()}
    assert {"server.log", "worker.log", "deploy.log", "supervisor.log"} <= stack_files, stack_files
    assert any(f.name == "prefect.db" for f in files)
    for f in files:
        data = f.read_bytes()
        found += [f"{f.relative_to(stack.root)}: {name}" for name, secret in needles.items() if secret.encode() in data]
    found += [
        f"output of {out.split(chr(10))[0]}: {name}"
        for out in OUTPUTS
        for name, secret in needles.items()
        if secret in out
    ]
    assert not found, "secrets leaked: " + "; ".join(found)
