"""The tree is the architecture: each subpackage imports only from the layers below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import iceberg_offload

PKG = Path(iceberg_offload.__file__).parent
LAYERS = ["", "clickhouse", "iceberg", "engine", "maintenance", "orchestration", "ops", "cli"]
"""Bottom to top; "" is the foundation at the package root (errors, paths, credentials, config, names)."""
LEGACY = {"flows"}
"""Root modules kept for the outside world: `iceberg_offload.flows` is the entrypoint of older deployments."""


def layer_of(module: str) -> str:
    top = module.split(".")[1] if "." in module else ""
    return "orchestration" if top in LEGACY else top if top in LAYERS else ""


def imports(path: Path) -> set[str]:
    """Every iceberg_offload module this file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("iceberg_offload"):
            # `from iceberg_offload import x` imports the module x (a layer of its own when x is a package)
            found |= (
                {f"{node.module}.{a.name}" for a in node.names} if node.module == "iceberg_offload" else {node.module}
            )
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("iceberg_offload")}
    return found


def test_imports_go_one_way_from_the_top_of_the_tree_down():
    upward = []
    for path in sorted(PKG.rglob("*.py")):
        module = "iceberg_offload." + ".".join(path.relative_to(PKG).with_suffix("").parts)
        own = LAYERS.index(layer_of(module))
        for target in sorted(imports(path)):
            if LAYERS.index(layer_of(target)) > own:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_every_module_belongs_to_a_layer():
    stray = [
        p.relative_to(PKG)
        for p in PKG.rglob("*.py")
        if len(p.relative_to(PKG).parts) > 1 and p.relative_to(PKG).parts[0] not in LAYERS
    ]
    assert not stray, stray


def test_the_algorithm_is_free_of_prefect():
    below = LAYERS[: LAYERS.index("orchestration")]
    found = []
    for path in sorted(PKG.rglob("*.py")):
        module = "iceberg_offload." + ".".join(path.relative_to(PKG).with_suffix("").parts)
        if layer_of(module) not in below:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            found += [f"{module} imports {n}" for n in names if n.split(".")[0] == "prefect"]
    assert not found, found


def test_the_names_the_outside_world_sees_are_written_once():
    """Prefect objects, artifact keys, summary keys and metric names come from names.py; a copy elsewhere
    drifts. A metric's old name (before this version's renames) is nowhere in the code either."""
    from iceberg_offload import names

    values = {
        v
        for k, v in vars(names).items()
        if k.isupper() and isinstance(v, str) and k != "PREFIX" and any(c in v for c in "-./:")
    }  # distinctive; "reconcile" is also a step's name
    values |= {names.table_limit("")} | set(names.METRICS) | set(names.RENAMED_METRICS)
    assert names.METRICS and all(m.startswith("offload_") for m in names.METRICS)
    assert set(names.RENAMED_METRICS.values()) <= set(names.METRICS)
    assert not set(names.RENAMED_METRICS) & set(names.METRICS)
    copies = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in values:
                if (path.name, node.value) == ("main.py", "iceberg-offload"):  # the program's name, not the pool
                    continue
                copies.append(f"{path.relative_to(PKG)}:{node.lineno} {node.value!r}")
    assert not copies, copies
