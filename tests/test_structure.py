"""The package's shape: no import circle among its modules (function-level and type-only imports included), the
modules the config and the CLI's parsing need import no torch, and every registry entry names a real thing."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from carrystate import registry

PACKAGE = Path(__file__).resolve().parents[1] / "carrystate"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module → the package's modules it imports anywhere in its text (`from carrystate import x` counts as an
    import of carrystate.x where x is a module; a package's own __init__ is not counted as imported)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
                found.add(node.module)
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(m + ".")}
        graph[name] -= {m for m in graph[name] if modules[m].name == "__init__.py" and m.count(".") == 0}
    return graph


def test_no_import_circle_among_the_package_modules():
    graph = _imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " → ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


@pytest.mark.parametrize(
    "module", ["carrystate.config", "carrystate.registry", "carrystate.errors", "carrystate.metrics", "carrystate.cli"]
)
def test_config_registry_and_cli_import_no_torch(module):
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'triton'}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", (module, out.stdout)


def test_every_registry_entry_names_something_that_exists():
    for name, entry in registry.CORES.items():
        core = registry.load(entry.target, "policy.core")
        assert all(hasattr(core, a) for a in ("state_shapes", "step", "sequence")), name
    assert all(callable(registry.load(u.target, "policy.sequence_impl")) for u in registry.UNROLLS.values())
    for name, entry in registry.ENVS.items():  # the optional extras are installed with [test]
        assert callable(registry.load(entry.target, "env.name")), name
