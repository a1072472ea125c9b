"""The error tree: every error is defined in errors.py, each JSON `type` names one class, docs/cli.md's
"Error types" table is the tree, and a command stopped by an error exits with that error's `exit_code`.

`python tests/test_errors.py` prints the table for docs/cli.md."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import iceberg_offload
from iceberg_offload import errors
from iceberg_offload.errors import EXIT_FAILED, EXIT_USAGE, OffloadError

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
SKIP = {"iceberg_offload.flows", "iceberg_offload.cli.__main__"}
"""The legacy entrypoint re-exports orchestration.flows; `python -m` runs a command when imported."""
HEADER = "| type | exit code | transient (retried) | what it means |"


def all_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(iceberg_offload.__path__, "iceberg_offload.") if m.name not in SKIP]
    for name in names:
        importlib.import_module(name)
    return names


def meaning(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def table() -> str:
    """The Markdown table of the tree, parents before children."""
    rows = [f"| `{c.kind}` | {c.exit_code} | {'yes' if c.transient else 'no'} | {meaning(c)} |" for c in errors.tree()]
    return "\n".join([HEADER, "|---|---|---|---|", *rows])


def documented() -> dict[str, tuple[int, str]]:
    """type -> (exit code, transient) from the table under docs/cli.md's "## Error types"."""
    text = DOC.read_text()
    assert "\n## Error types\n" in text, "docs/cli.md has no '## Error types' section"
    section = text.split("\n## Error types\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d) \| (yes|no) \|", section, re.MULTILINE)
    assert len(rows) == len({r[0] for r in rows}), "a type listed twice"
    return {kind: (int(code), transient) for kind, code, transient in rows}


def test_every_exception_class_of_the_package_is_defined_in_errors():
    stray = []
    for name in all_modules():
        if name == errors.__name__:
            continue
        for attr, obj in vars(sys.modules[name]).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                stray.append(f"{name}.{attr}")
    assert not stray, f"exception classes outside iceberg_offload.errors: {stray}"
    below = [c for c in all_subclasses(OffloadError) if c.__module__ != errors.__name__]
    assert not below, below


def all_subclasses(cls: type) -> list[type]:
    return [s for sub in cls.__subclasses__() for s in (sub, *all_subclasses(sub))]


def test_each_type_names_one_class_and_each_class_documents_itself():
    all_modules()
    classes = [OffloadError, *all_subclasses(OffloadError)]
    assert errors.tree() == classes
    kinds = [c.kind for c in classes]
    assert len(kinds) == len(set(kinds)), sorted(k for k in kinds if kinds.count(k) > 1)
    assert all("kind" in vars(c) for c in classes), "a class inheriting its parent's type"
    assert all(c.__doc__ and meaning(c) for c in classes), [c.__name__ for c in classes if not c.__doc__]
    assert {c.exit_code for c in classes} == {EXIT_FAILED, EXIT_USAGE}


def test_operator_fixes_exit_2_the_rest_exit_1():
    """The codes from before exit_code existed: config, its subclasses (usage, source_mismatch) and source_error
    exit 2."""
    usage = {c.kind for c in errors.tree() if c.exit_code == EXIT_USAGE}
    assert usage == {"config", "usage", "source_mismatch", "source_error"}
    assert not any(c.transient for c in errors.tree() if c.exit_code == EXIT_USAGE)


def test_the_docs_table_is_the_tree():
    all_modules()
    want = {c.kind: (c.exit_code, "yes" if c.transient else "no") for c in errors.tree()}
    got = documented()
    assert not set(want) - set(got), f"docs/cli.md lacks types {sorted(set(want) - set(got))}"
    assert not set(got) - set(want), f"docs/cli.md lists types that do not exist {sorted(set(got) - set(want))}"
    assert got == want
    assert table() in DOC.read_text(), "the table differs from the tree: python tests/test_errors.py prints it"


def test_reported_as_tests_the_class_and_those_below_it():
    missing = errors.WarehouseMissing("gone", "fix").as_dict()
    assert errors.reported_as(missing, errors.WarehouseMissing)
    assert errors.reported_as(missing, errors.WarehouseError)  # a subclass is its parent too
    assert not errors.reported_as(errors.WarehouseError("full", "").as_dict(), errors.WarehouseMissing)
    assert not errors.reported_as(None, errors.WarehouseMissing)


@pytest.mark.parametrize(
    "cls",
    [
        errors.ConfigError,
        errors.SourceMismatch,
        errors.SourceError,
        errors.SourceUnavailable,
        errors.PrefectUnavailable,
        errors.TypeRefused,
        errors.InternalError,
    ],
)
def test_a_command_stopped_by_an_error_exits_with_its_exit_code(cls, monkeypatch, capsys):
    """Any command: main() reads the code from the error. Real configs: test_bad_input (a config mistake
    exits 2, an unreachable Prefect API exits 1) and test_cli (an unknown --table exits 2)."""
    from iceberg_offload.cli import main as cli

    def fail(args):
        raise cls("it broke", "mend it")

    monkeypatch.setattr(cli, "cmd_status", fail)
    assert cli.main(["status", "--json"]) == cls.exit_code
    assert '"type": "' + cls.kind + '"' in capsys.readouterr().out


if __name__ == "__main__":
    all_modules()
    print(table())
