"""The compose file: validated by Debian's docker-compose (no engine needed) and checked against the runbook;
its secrets (deploy/make-secrets.sh) reach every service without an environment variable holding one; the
image installs the versions the tests ran (deploy/constraints.txt)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from iceberg_offload.config import load

DEPLOY = Path(__file__).parent.parent / "deploy"
SECRET_WORDS = ("PASSWORD", "SECRET", "AUTH_STRING", "DSN", "_URI", "CONNECTION_URL", "PROPERTIES")


@pytest.fixture(scope="module")
def deploy(tmp_path_factory) -> Path:
    """A copy of deploy/ with the secrets make-secrets.sh writes (as an operator does before `up`)."""
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("secrets", ".env"))
    out = subprocess.run(["sh", str(copy / "make-secrets.sh")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (copy / "secrets" / "postgres_password").exists(), out.stderr
    return copy


@pytest.fixture(scope="module")
def compose(deploy) -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed: apt-get install --no-install-recommends docker-compose "
            "(./dev test does this when run as root)"
        )
    out = subprocess.run(
        [exe, "--env-file", str(deploy / ".env.example"), "-f", str(deploy / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_runbook_containers_exist_and_restart_unless_stopped(compose):
    services = compose["services"]
    names = {s.get("container_name") for s in services.values()}
    assert {"k2-prefect-server", "k2-prefect-worker", "k2-prefect-db"} <= names
    for name, svc in services.items():
        if name != "minio-init":  # a one-shot job
            assert svc.get("restart") == "unless-stopped", name


def test_healthchecks_match_the_runbook(compose):
    s = compose["services"]
    assert "pg_isready" in " ".join(s["k2-prefect-db"]["healthcheck"]["test"])
    assert "/api/ready" in " ".join(s["k2-prefect-server"]["healthcheck"]["test"])  # not /api/health
    assert ":8000/metrics" in " ".join(s["k2-prefect-worker"]["healthcheck"]["test"])
    ports = [
        str(p.get("published")) + ":" + str(p.get("target")) if isinstance(p, dict) else p
        for p in s["k2-prefect-worker"]["ports"]
    ]
    assert any(p.startswith("8000") for p in ports)
    assert any("4200" in str(p) for p in s["k2-prefect-server"]["ports"])
    assert s["k2-prefect-db"]["image"].startswith("postgres:15")


def test_no_password_is_in_an_environment_variable(compose, deploy):
    """`docker inspect` shows a container's environment: no secret may be in it, only where to read one."""
    values = {p.name: p.read_text() for p in (deploy / "secrets").iterdir()}
    assert "version" not in yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())  # obsolete key
    for name, svc in compose["services"].items():
        mounted = {x["source"] if isinstance(x, dict) else x for x in svc.get("secrets", [])}
        for key, value in (svc.get("environment") or {}).items():
            assert not any(v and v in str(value) for v in values.values()), f"{name}: {key} holds a secret"
            if any(w in key for w in SECRET_WORDS):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}={value}"
                assert str(value).removeprefix("/run/secrets/") in mounted, f"{name}: {key} reads an unmounted secret"
    for name, spec in compose["secrets"].items():
        assert Path(spec["file"]).is_file(), f"make-secrets.sh does not write secret {name} ({spec['file']})"


def test_the_worker_reads_its_secrets_through_our_file_keys(compose, deploy):
    """The worker's OFFLOAD__*_FILE variables, as the container has them, give the config its credentials."""
    env = {k: str(v) for k, v in compose["services"]["k2-prefect-worker"]["environment"].items()}
    secrets = deploy / "secrets"
    files = {k: v.replace("/run/secrets/", f"{secrets}/") for k, v in env.items() if k.endswith("_FILE")}
    settings = load(deploy / "offload.compose.toml", env={**env, **files})
    password = (secrets / "clickhouse_password").read_text()
    assert settings.source.dsn == f"http://offload:{password}@clickhouse:8123/"
    assert settings.catalog.uri == (secrets / "catalog_uri").read_text()
    assert settings.catalog.properties == json.loads((secrets / "catalog_properties").read_text())
    assert settings.prefect.auth_string == (secrets / "prefect_auth_string").read_text()
    again = subprocess.run(["sh", str(deploy / "make-secrets.sh")], capture_output=True, text=True, timeout=60)
    assert (
        "kept" in again.stdout and (secrets / "clickhouse_password").read_text() == password
    )  # never rotated by accident


def test_the_image_installs_the_tested_versions():
    sys.path.insert(0, str(DEPLOY))
    try:
        import pin  # deploy/pin.py
    finally:
        sys.path.remove(str(DEPLOY))
    pinned = dict(
        line.split("==") for line in (DEPLOY / "constraints.txt").read_text().splitlines() if not line.startswith("#")
    )
    assert pinned == pin.runtime_closure(), "deploy/constraints.txt is stale: .venv/bin/python deploy/pin.py"
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in project:
        if m := re.match(r"([A-Za-z0-9_.-]+)(\[.*\])?==(.+)$", dep):
            assert pinned[pin.norm(m[1])] == m[3], dep
    assert "pip install -c deploy/constraints.txt ." in (DEPLOY / "Dockerfile").read_text()


def test_prometheus_scrapes_the_worker_as_iceberg_scheduler():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "iceberg-scheduler")
    assert job["static_configs"][0]["targets"] == ["k2-prefect-worker:8000"]


def test_dockerfile_installs_this_package():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11" in text and "COPY src ./src" in text
