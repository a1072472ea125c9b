"""How a command is declared with click and what its callback returns: an `Invocation`, the name of the
cmd_* function and the options merged from every level, so parsing runs nothing.

`-c/--config`, `-o/--output` and `--json` are valid before the command, after it and after a sub-action;
the innermost given wins (`--json` and `-o` alike). A group's own options reach its sub-actions the same
way; given at both levels, repeatable ones (`--table`, `--deployment`) add up, and one not given at all is
None. Every command and group gets `-h`, its summary as help and one example. Only click is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypedDict

import click
from click.core import ParameterSource

from iceberg_offload.names import DEFAULT_CONFIG

CONTEXT = {"help_option_names": ["-h", "--help"]}
GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)
REPEATABLE = {"table", "deployment"}
"""Repeatable options: a list, or None when not given (every table, the default deployments)."""


@dataclass
class Invocation:
    func: str
    """The name of the cmd_* function (looked up in cli.main when run)."""
    args: SimpleNamespace


class Ordered(click.Group):
    """Lists its commands in the order they are declared (the order an operator meets them), not A-Z."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def global_options() -> list[click.Parameter]:
    return [
        click.Option(
            ["-c", "--config"],
            metavar="PATH",
            help=f"config file (default $OFFLOAD_CONFIG, else ./{DEFAULT_CONFIG}; none: the embedded default)",
        ),
        click.Option(["-o", "--output"], type=click.Choice(["text", "json"]), help="text (default) or json"),
        click.Option(["--json"], is_flag=True, default=False, help="print JSON (= -o json)"),
    ]


def tables(what: str = "only this table (repeatable)") -> click.Option:
    return click.Option(["-t", "--table"], multiple=True, metavar="NAME", help=what)


def one_table() -> click.Option:
    return click.Option(["-t", "--table"], required=True, metavar="NAME", help="the table (its target name)")


def yes(what: str) -> click.Option:
    return click.Option(["-y", "--yes"], is_flag=True, default=False, help=what)


def values(what: str) -> click.Option:
    return click.Option(["--values/--no-values"], default=None, help=what)


def flag(name: str, what: str) -> click.Option:
    return click.Option([name], is_flag=True, default=False, help=what)


def seconds(default: float, what: str) -> click.Option:
    return click.Option(["--timeout"], type=float, default=default, metavar="S", show_default=True, help=what)


def invocation(func: str, fixed: dict[str, Any]) -> Invocation:
    """The options of every level from the program down to this command, the innermost given winning."""
    chain: list[click.Context] = []
    ctx: click.Context | None = click.get_current_context()
    while ctx is not None:
        chain.insert(0, ctx)
        ctx = ctx.parent
    given: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    output = "text"
    for c in chain:
        if c.get_parameter_source("output") in GIVEN:
            output = c.params["output"]
        if c.params.get("json"):
            output = "json"
        for name, value in c.params.items():
            if name in ("json", "output"):
                continue
            if c.get_parameter_source(name) not in GIVEN:
                defaults[name] = value
            elif name in REPEATABLE and isinstance(value, tuple):
                given[name] = (*given.get(name, ()), *value)
            else:
                given[name] = value
    merged = {**defaults, **given}
    for name in REPEATABLE & set(merged):
        if isinstance(merged[name], tuple):
            merged[name] = list(merged[name]) or None
    return Invocation(func, SimpleNamespace(**merged, **fixed, output=output, json=output == "json"))


def command(
    group: click.Group,
    name: str,
    func: str,
    summary: str,
    example: str,
    *params: click.Parameter,
    more: str = "",
    hidden: bool = False,
    **fixed: Any,
) -> click.Command:
    """A command that returns its Invocation: `func` with the merged options and `fixed` (command, action)."""

    def callback(**_: Any) -> Invocation:
        return invocation(func, {"command": name, **fixed})

    cmd = click.Command(
        name,
        params=[*params, *global_options()],
        callback=callback,
        **_texts(summary, example, more),
        hidden=hidden,
        context_settings=CONTEXT,
    )
    group.add_command(cmd)
    return cmd


def subgroup(
    parent: click.Group, name: str, summary: str, example: str, *params: click.Parameter, more: str = ""
) -> click.Group:
    group = Ordered(
        name,
        params=[*params, *global_options()],
        callback=nothing,
        **_texts(summary, example, more),
        context_settings=CONTEXT,
    )
    parent.add_command(group)
    return group


class _Texts(TypedDict):
    short_help: str
    help: str
    epilog: str


def _texts(summary: str, example: str, more: str) -> _Texts:
    """A command's help texts: the one-line summary, the help (with `more`), the example."""
    return {
        "short_help": summary,
        "help": summary[0].upper() + summary[1:] + "." + (f"\n\n{more}" if more else ""),
        "epilog": f"\b\nExample:\n  {example}",
    }


def nothing(**_: Any) -> None:
    return None
