"""Data flows one way: detectors import nothing of ours, connectors no statistics."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
OURS = ("monitor", "detectors", "connectors")


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.add((path.relative_to(ROOT).as_posix(), name))
    return found


def test_detectors_import_only_numpy_scipy_numba_and_themselves() -> None:
    allowed_third_party = {"numpy", "scipy", "numba"}
    for where, name in _imports("detectors"):
        top = name.split(".")[0]
        if top in OURS:
            assert top == "detectors", f"{where} imports {name}"
        else:
            assert top in allowed_third_party or _stdlib(top), f"{where} imports {name}"


def test_connectors_know_no_statistics() -> None:
    """numba is allowed: the direct fetch path compiles its record-batch walk
    (connectors/records.py), which is parsing, not statistics."""
    for where, name in _imports("connectors"):
        top = name.split(".")[0]
        assert top not in {"numpy.linalg", "scipy", "detectors", "prometheus_client"}, (
            f"{where} imports {name}"
        )
        assert top != "numba" or where == "connectors/records.py", f"{where} imports {name}"
        assert top != "monitor", f"{where} imports {name}: connectors import nothing of monitor"


def test_the_error_root_is_a_leaf() -> None:
    ours = [name for where, name in _imports("connectors") if where == "connectors/errors.py"]
    assert not [n for n in ours if n.split(".")[0] in OURS]


def _module_graph() -> dict[str, set[str]]:
    """Module -> our modules it imports at import time (TYPE_CHECKING blocks and
    imports inside functions excluded: they cannot form an import cycle)."""
    graph: dict[str, set[str]] = {}
    for package in OURS:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            deps = graph.setdefault(module, set())
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for sub in _import_time_imports(tree.body):
                if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                    names = [sub.module]
                elif isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                else:
                    continue
                deps.update(n for n in names if n.split(".")[0] in OURS)
    return graph


def _import_time_imports(body: list[ast.stmt]) -> list[ast.stmt]:
    """Import statements run when the module is imported (not in functions, classes'
    methods or ``if TYPE_CHECKING:`` blocks)."""
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                found += _import_time_imports(node.body) + _import_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            found += _import_time_imports(node.body)
            for handler in node.handlers:
                found += _import_time_imports(handler.body)
    return found


def test_no_import_cycles() -> None:
    graph = _module_graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep] if dep in path else [module, dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def _stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize("package", OURS)
def test_packages_import_cleanly(package: str) -> None:
    __import__(package)


# Inside monitor/: which sub-packages each may import (besides the shared leaf
# modules errors, metrics, status, charts and checkpoints). Arrows point one way:
# cli -> runtime -> pipeline -> detectors; runtime -> alerting; all -> config.
_SHARED = {"errors", "metrics", "status", "charts", "checkpoints"}
_ARROWS = {
    "config": {"config"},
    "pipeline": {"config", "pipeline"},
    "alerting": {"config", "alerting"},
    "runtime": {"config", "pipeline", "alerting", "runtime"},
    "cli": {"config", "pipeline", "alerting", "runtime", "cli", "dev"},
    "dev": {"config", "pipeline", "alerting", "runtime", "dev"},
}


def test_monitor_sub_packages_import_only_downstream() -> None:
    assert {p.name for p in (ROOT / "monitor").iterdir() if (p / "__init__.py").exists()} == set(
        _ARROWS
    )
    for where, name in _imports("monitor"):
        parts = where.split("/")
        if len(parts) < 3 or not name.startswith("monitor."):
            continue  # a shared module (monitor/x.py) or not ours
        target = name.split(".")[1]
        if target not in _SHARED:
            assert target in _ARROWS[parts[1]], f"{where} imports {name}"


def test_shared_modules_import_no_sub_package() -> None:
    for where, name in _imports("monitor"):
        if where.count("/") == 1 and name.startswith("monitor."):
            assert name.split(".")[1] in _SHARED, f"{where} imports {name}"
