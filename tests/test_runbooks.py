"""The runbooks' commands: every ```sh block runs on the native stack (test_scenarios.py runs them), every
```sh compose block is syntax-checked here and its `docker exec` commands run natively there too."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml

RUNBOOKS = Path(__file__).parent.parent / "docs" / "runbooks"
DEPLOY = Path(__file__).parent.parent / "deploy"
BLOCK = re.compile(r"^```(sh|sql)([^\n]*)\n(.*?)^```", re.S | re.M)
DOCKER = {"ps", "start", "restart", "logs", "exec", "inspect"}
IN_CONTAINER = {"iceberg-offload", "prefect", "curl"}


def blocks(path: Path) -> list[tuple[str, str]]:
    """(kind, body) per fenced block: kind is sh, compose or sql."""
    return [("compose" if "compose" in extra else lang, body) for lang, extra, body in BLOCK.findall(path.read_text())]


def commands(body: str) -> list[str]:
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def native_commands() -> list[tuple[str, str, str]]:
    """(runbook, kind, command) in document order: sh commands, sql statements, and what compose blocks
    run inside the worker container (`docker exec k2-prefect-worker CMD`), which must work natively too."""
    out = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        for kind, body in blocks(path):
            for cmd in commands(body):
                if kind == "compose":
                    words = shlex.split(cmd)
                    if words[1] == "exec":
                        out.append((path.name, "sh", shlex.join(words[3:])))
                else:
                    out.append((path.name, kind, cmd))
    return out


def container_names() -> set[str]:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return {svc.get("container_name") for svc in compose["services"].values()}


def test_every_runbook_starts_with_its_alert_and_doctor():
    paths = sorted(RUNBOOKS.glob("*.md"))
    assert {p.name for p in paths} == {
        "scheduler-down.md",
        "offload-failure.md",
        "lag.md",
        "watermark-recovery.md",
        "ttl-risk.md",
        "warehouse-lost.md",
    }
    for path in paths:
        head = path.read_text().split("```")[0]
        assert re.search(r"\*\*Alerts?:\*\* `IcebergOffload\w+`", head), path.name
        first = blocks(path)[0]
        assert first[0] == "sh" and commands(first[1])[0] == "iceberg-offload doctor", path.name


def test_compose_commands_are_valid_docker_commands_on_our_containers():
    names = container_names()
    seen = 0
    for path in sorted(RUNBOOKS.glob("*.md")):
        for kind, body in blocks(path):
            if kind != "compose":
                continue
            check = subprocess.run(["bash", "-n"], input=body, text=True, capture_output=True)
            assert check.returncode == 0, f"{path.name}: {check.stderr}"
            for cmd in commands(body):
                words = shlex.split(cmd)
                assert words[0] == "docker" and words[1] in DOCKER, f"{path.name}: {cmd}"
                targets = [w.removeprefix("name=") for w in words[2:] if w.startswith(("k2-", "name=k2-"))]
                if words[1] == "ps":  # a filter: a prefix of our containers
                    assert targets and all(any(n.startswith(t) for n in names if n) for t in targets), cmd
                    seen += 1
                    continue
                assert targets and set(targets) <= names, f"{path.name}: unknown container in {cmd}"
                if words[1] == "exec":
                    assert words[2] == "k2-prefect-worker" and words[3] in IN_CONTAINER, f"{path.name}: {cmd}"
                seen += 1
    assert seen >= 15


def parses(words: list[str]) -> None:
    """The command line parses as the program would parse it (nothing runs): an unknown command, sub-action
    or option, a missing or a bad value raises click.UsageError."""
    from iceberg_offload.cli.main import parse

    assert parse(words) is not None, f"{shlex.join(words)} only printed help"


def test_a_misspelt_command_line_fails_the_check():
    import click
    import pytest

    parses(["maintain", "reconcile", "--table", "t", "--yes"])
    for bad in (
        ["run", "--tabel", "t"],
        ["maintian", "all"],
        ["maintain", "recon"],
        ["watermark", "set", "--table", "t"],
        ["trigger", "--timeout", "soon"],
        ["schedule", "stop"],
        ["status", "-o", "yaml"],
    ):
        with pytest.raises(click.UsageError):
            parses(bad)


def test_native_commands_are_shell_syntax_and_use_existing_commands():
    """Syntax and command names here; test_scenarios.py runs each one on the native stack."""
    cmds = native_commands()
    assert len(cmds) >= 30
    for _runbook, kind, cmd in cmds:
        if kind == "sql":
            continue
        assert subprocess.run(["bash", "-n"], input=cmd, text=True, capture_output=True).returncode == 0, cmd
        for part in cmd.split(" && "):
            if part.startswith("iceberg-offload "):
                words = shlex.split(part.split(" | ")[0])
                parses([w.replace("TIME", "2026-11-29T16:00:00Z") for w in words[1:]])


def test_inline_commands_in_the_runbooks_parse():
    inline = [m for p in RUNBOOKS.glob("*.md") for m in re.findall(r"`(iceberg-offload [^`]+)`", p.read_text())]
    assert len(inline) >= 4
    for cmd in inline:
        parses(shlex.split(cmd)[1:])
