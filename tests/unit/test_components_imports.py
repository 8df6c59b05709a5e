"""Every component is hermetic at module level (as kubeflow/pipelines-components' check_imports enforces).

A lightweight component ships only its function's source into the container, so module-level imports
other than the standard library and kfp would either be missing there or make the CLI slow to start.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
COMPONENT_FILES = sorted(COMPONENTS.glob("*/component.py"))
ALLOWED_ROOTS = set(sys.stdlib_module_names) | {"kfp"}


def _module_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Imports executed when the module is imported (not inside functions or classes)."""
    found: list[tuple[str, int]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.append(("." * node.level + (node.module or ""), node.lineno))
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return found


def test_there_is_a_component_per_folder():
    folders = sorted(p.name for p in COMPONENTS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert folders, "no component folders found"
    assert [p.parent.name for p in COMPONENT_FILES] == folders


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.parent.name)
def test_module_level_imports_are_stdlib_or_kfp(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [
        (name, line) for name, line in _module_level_imports(tree) if name.split(".")[0] not in ALLOWED_ROOTS
    ]
    assert not bad, f"{path}: module-level imports outside stdlib/kfp: {bad}"


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.parent.name)
def test_component_factory_builds_with_the_given_image(path: Path):
    name = path.parent.name
    module = importlib.import_module(f"freshrec.components.{name}.component")
    assert callable(getattr(module, name)), f"{path} must define the plain function {name}()"
    comp = module.component("registry.example/freshrec:test")
    container = comp.component_spec.implementation.container
    assert container.image == "registry.example/freshrec:test"
    # The image already has kfp (freshrec depends on it): no pip install at task start.
    assert not any("pip install" in part for part in container.command)
    assert comp.component_spec.name == name.replace("_", "-")
