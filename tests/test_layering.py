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
    for where, name in _imports("connectors"):
        top = name.split(".")[0]
        assert top not in {"numpy.linalg", "scipy", "numba", "detectors", "prometheus_client"}, (
            f"{where} imports {name}"
        )
        if top == "monitor":
            assert name == "monitor.errors", (
                f"{where} imports {name}: only the error root is shared"
            )


def _stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize("package", OURS)
def test_packages_import_cleanly(package: str) -> None:
    __import__(package)
