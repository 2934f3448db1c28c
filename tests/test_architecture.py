"""Layers point one way: ui/ and api/ → services → engine/ → libraries (STYLE.md rule 7)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "modules/engine": ("gradio", "fastapi", "starlette", "uvicorn", "modules.api", "modules.ui", "modules.app",
                       "modules.jobs", "modules.models", "modules.server"),
    "modules/models": ("gradio", "fastapi", "starlette", "modules.api", "modules.ui", "modules.app", "modules.server"),
    "modules/api": ("gradio", "modules.ui"),
    "modules/ui": ("fastapi", "modules.api"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_do_not_import_upwards(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_no_module_level_global_statements():
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "modules").rglob("*.py")
                 if any(isinstance(node, ast.Global) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    assert not offenders, f"`global` used in {offenders}"
