"""The payload models (payloads*.py) at work: `check` a printed payload against its model, and `markdown`,
the text of docs/json.md (tests/test_json.py keeps the file equal to it; OFFLOAD_UPDATE_EXPECTED=1 rewrites
it). Standard library only: the CLI imports this when it prints JSON."""

from __future__ import annotations

import os
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

from iceberg_offload import payloads as p
from iceberg_offload import payloads_maint as m
from iceberg_offload import payloads_ops as o
from iceberg_offload.errors import PayloadMismatch

COMMANDS: list[tuple[str, Any]] = [
    ("run", p.Run),
    ("demo", p.Demo),
    ("status", p.Status),
    ("watermark show", p.WatermarkShow),
    ("watermark set", p.WatermarkSet),
    ("adopt", p.Adopt),
    ("verify", p.Verify),
    ("maintain reconcile|compact|expire|orphans|all", m.Maintain),
    ("view", m.Views),
    ("doctor", o.Doctor),
    ("recover", o.Recover),
    ("deploy", o.Deploy),
    ("up", o.Up),
    ("down", o.Down),
    ("ps", o.Ps),
    ("schedule show|pause|resume", o.Schedules),
    ("trigger", o.Trigger),
    ("any command, on an error", p.ErrorPayload),
]
"""Each command's payload model, in the order docs/json.md lists them."""

CHECK_ENV = "OFFLOAD_CHECK_PAYLOADS"
PIPE = "\\|"
"""A `|` inside a markdown table cell."""


def checking() -> bool:
    return os.environ.get(CHECK_ENV) == "1"


def check(value: Any, model: Any, where: str = "$") -> None:
    """Raise PayloadMismatch (naming the path, e.g. `$.tables[0].rows`) unless `value` has the model's shape:
    every key of a TypedDict present and no other, each value of its type (a float may be an int)."""
    hints = _hints(model)
    if hints is not None:
        if not isinstance(value, dict):
            raise PayloadMismatch(f"{where}: {type(value).__name__}, not an object ({model.__name__})")
        missing, extra = set(hints) - set(value), set(value) - set(hints)
        if missing or extra:
            raise PayloadMismatch(f"{where} ({model.__name__}): missing {sorted(missing)}, unexpected {sorted(extra)}")
        for key, hint in hints.items():
            check(value[key], hint, f"{where}.{key}")
        return
    origin, args = get_origin(model), get_args(model)
    if origin is Annotated:
        check(value, args[0], where)
    elif origin in (Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                check(value, arm, where)
                return
            except PayloadMismatch as exc:
                errors.append(str(exc))
        raise PayloadMismatch(" / ".join(errors))
    elif origin is Literal:
        if value not in args:
            raise PayloadMismatch(f"{where}: {value!r} is not one of {list(args)}")
    elif origin is list:
        if not isinstance(value, list):
            raise PayloadMismatch(f"{where}: {type(value).__name__}, not a list")
        for i, item in enumerate(value):
            check(item, args[0], f"{where}[{i}]")
    elif origin is dict:
        if not isinstance(value, dict):
            raise PayloadMismatch(f"{where}: {type(value).__name__}, not an object")
        for k, item in value.items():
            check(k, args[0], f"{where} key")
            check(item, args[1], f"{where}.{k}")
    elif model is Any:
        return
    elif model is None or model is type(None):
        if value is not None:
            raise PayloadMismatch(f"{where}: {value!r}, not null")
    elif model is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadMismatch(f"{where}: {value!r}, not a number")
    elif model is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PayloadMismatch(f"{where}: {value!r}, not an integer")
    elif model in (str, bool):
        if not isinstance(value, model):
            raise PayloadMismatch(f"{where}: {value!r}, not {model.__name__}")
    else:
        raise TypeError(f"{where}: no check for {model!r}")


def _hints(model: Any) -> dict[str, Any] | None:
    if not is_typeddict(model):
        return None
    return get_type_hints(model, include_extras=True)


def _name(hint: Any) -> str:
    """A type as a docs/json.md table cell spells it: `integer`, `string \\| null`, `list of [TableRun](…)`."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return _name(args[0])
    if origin in (Union, types.UnionType):
        return f" {PIPE} ".join(_name(a) for a in args)
    if origin is Literal:
        return f" {PIPE} ".join(f'"{a}"' if isinstance(a, str) else str(a).lower() for a in args)
    if origin is list:
        return f"list of {_name(args[0])}"
    if origin is dict:
        return f"object of {_name(args[1])}"
    if hint is None or hint is type(None):
        return "null"
    if is_typeddict(hint):
        return f"[{hint.__name__}](#{hint.__name__.lower()})"
    return {str: "string", int: "integer", float: "number", bool: "boolean", typing.Any: "any"}[hint]


def _note(hint: Any) -> str:
    return str(get_args(hint)[1]) if get_origin(hint) is Annotated else ""


def _models(model: Any, seen: list[Any]) -> None:
    """`model` and every model it refers to, depth first, each once."""
    if model in seen:
        return
    seen.append(model)
    for hint in _hints(model).values():  # type: ignore[union-attr]
        for inner in _inner(hint):
            _models(inner, seen)


def _inner(hint: Any) -> list[Any]:
    if is_typeddict(hint):
        return [hint]
    return [m for a in get_args(hint) for m in _inner(a)]


def markdown() -> str:
    """docs/json.md: the rules, then every command's payload and the objects inside, each as a table."""
    head = (p.__doc__ or "").split("\n\nThe models of")[0]
    out = [
        "# JSON output (`--json`)",
        "",
        "Generated from src/iceberg_offload/payloads*.py by `python -m iceberg_offload.payload_docs`; "
        "do not edit by hand.",
        "",
        head.strip(),
        "",
        "| command | payload |",
        "|---|---|",
    ]
    out += [f"| `{cmd.replace('|', PIPE)}` | {_name(model)} |" for cmd, model in COMMANDS]
    seen: list[Any] = []
    for _, model in COMMANDS:
        _models(model, seen)
    for model in seen:
        doc = " ".join((model.__doc__ or "").split())
        out += ["", f"## {model.__name__}", ""]
        if doc:
            out += [doc, ""]
        out += ["| key | type | meaning |", "|---|---|---|"]
        out += [f"| `{k}` | {_name(h)} | {_note(h)} |" for k, h in (_hints(model) or {}).items()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
