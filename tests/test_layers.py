"""The house's layers point down: no module imports one above it, and no import runs in a circle (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# from the bottom up; a module may import its own layer and the ones below, never one above
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "records", "sanitize", "validation"),
    ("serde", "serde_container", "strategies", "privacy", "api", "api_use", "model_file"),
    ("tasks",),
    (
        "config",
        "provision",
        "provision_kit",
        "transport",
        "server",
        "site",
        "workloads",
        "kinds",
        "finetune",
        "features",
        "dashboard",
    ),
    ("job_plan", "sim", "sim_identities", "sim_ray", "sim_ray_host", "new_task", "report", "run_result"),
    ("experiment", "experiment_ray", "deploy_site", "deploy", "audit"),
    ("cli_common", "cli", "cli_audit", "cli_features", "cli_predict", "cli_status", "cli_site"),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "confide").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every confide module ``path`` imports at run time (top level or inside a function; not under
    ``if TYPE_CHECKING``, which only annotates)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for inner in node.body for child in ast.walk(inner))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: place it")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name, "confide"} for name, path in modules.items() if name != "confide"}


def test_no_module_imports_a_layer_above_its_own() -> None:
    graph = _graph()

    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module)
    )

    assert upward == []


def test_no_import_runs_in_a_circle() -> None:
    graph = _graph()
    circles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)

    assert circles == []
