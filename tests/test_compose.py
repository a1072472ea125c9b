"""The compose file: validated by Debian's docker-compose (no engine needed) and checked against the runbook."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed: apt-get install --no-install-recommends docker-compose "
            "(./dev test does this when run as root)"
        )
    out = subprocess.run(
        [exe, "--env-file", str(DEPLOY / ".env.example"), "-f", str(DEPLOY / "docker-compose.yml"), "config"],
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


def test_secrets_come_from_env_not_the_file():
    text = (DEPLOY / "docker-compose.yml").read_text()
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key, value in example.items():
        assert "${" + key + "}" in text, f"{key} from .env is not used"
        if any(word in key for word in ("PASSWORD", "SECRET", "AUTH_STRING")):
            assert value not in text, f"{key}'s value is written in docker-compose.yml"
    assert "change-me" not in text


def test_prometheus_scrapes_the_worker_as_iceberg_scheduler():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "iceberg-scheduler")
    assert job["static_configs"][0]["targets"] == ["k2-prefect-worker:8000"]


def test_dockerfile_installs_this_package():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11" in text and "pip install ." in text
