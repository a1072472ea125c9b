"""The raw input of the settings, and where each value came from: `OFFLOAD__*` environment overrides applied
onto the TOML data, and pydantic's refusals as one `ConfigError` naming the source of each bad value.

`OFFLOAD__SOURCE__DSN` sets `[source] dsn`; `OFFLOAD__TABLES__0__SETTLE...` reaches into the list (missing
entries are created); a value starting with `[` or `{` is JSON, anything else a string (pydantic coerces it).
Outside `[[tables]]`, `<KEY>_FILE` reads the value from a file (a relative path: against the config file's
folder) and is refused beside `<KEY>`. A refused value is reported against the variable that set it, or
else the file, with a fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from iceberg_offload.credentials import FILE_SUFFIX, secret_file
from iceberg_offload.errors import ConfigError

ENV_PREFIX = "OFFLOAD__"


def apply_env(data: dict[str, Any], env: dict[str, str], base: Path) -> dict[str, str]:
    """Apply OFFLOAD__* overrides (a relative `_FILE` path: against base); returns {dotted key: the variable
    that set it} for error messages."""
    applied: dict[str, str] = {}
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        raw = env[key]
        if parts[0] != "tables" and parts[-1].endswith(FILE_SUFFIX) and len(parts[-1]) > len(FILE_SUFFIX):
            if key[: -len(FILE_SUFFIX)] in env:
                raise ConfigError(
                    f"environment: both {key[: -len(FILE_SUFFIX)]} and {key} are set",
                    f"unset one of {key[: -len(FILE_SUFFIX)]} and {key}",
                )
            parts[-1] = parts[-1][: -len(FILE_SUFFIX)]
            raw = secret_file(f"environment {key}", str(base / raw))
        # Lists and tables come as JSON; scalars stay strings (pydantic coerces "120" and "true").
        value: Any = raw
        if raw.lstrip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment {key}: not valid JSON: {exc}", f"fix or unset {key}") from exc
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt: Any = {} if not parts[i + 1].isdigit() else []
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append({})
                node = node[idx]
            else:
                node = node.setdefault(part, nxt)
        last = parts[-1]
        applied[".".join(f"[{x}]" if x.isdigit() else x for x in parts).replace(".[", "[")] = key
        if isinstance(node, list) and last.isdigit():
            idx = int(last)
            while len(node) <= idx:
                node.append({})
            node[idx] = value
        else:
            node[last] = value
    return applied


def config_error(exc: ValidationError, file: str, from_env: dict[str, str] | None = None) -> ConfigError:
    lines, fixes = [], []
    for err in exc.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
        var = (from_env or {}).get(loc)
        where = f"environment {var}" if var else file
        kind = err["type"]
        if not loc:  # a rule over the whole config
            lines.append(f"{where}: {err['msg']}")
            fixes.append(str((err.get("ctx") or {}).get("fix", "fix the config")))
        elif kind == "missing":
            lines.append(f"{where}: key {loc} is missing")
            fixes.append(f"add {loc.split('.')[-1]} = ... to the {_section(loc)} section")
        elif kind == "extra_forbidden":
            lines.append(f"{where}: unknown key {loc} = {err.get('input')!r}")
            fixes.append(
                f"unset {var} (no such key)"
                if var
                else f"remove or rename {loc.split('.')[-1]} in the {_section(loc)} section "
                "(offload.example.toml lists every key)"
            )
        else:
            lines.append(f"{where}: {loc} = {err.get('input')!r}: {err['msg']}")
            fixes.append(
                f"set {var} to a valid value ({err['msg']})" if var else f"set {loc} to a valid value ({err['msg']})"
            )
    return ConfigError("; ".join(lines), "; ".join(dict.fromkeys(fixes)))


def _section(loc: str) -> str:
    head = loc.split(".")[0]
    return f"[[{head.split('[')[0]}]]" if "[" in head else f"[{head}]" if "." in loc else "top-level"
