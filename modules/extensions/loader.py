"""Finding extension folders and importing an extension's entry point in isolation.

Each extension is imported as its own package (`webui_extension_<name>_<folder hash>`, __path__ = its folder), so
its modules can import each other relatively and two extensions' `utils.py` never collide. Nothing is imported
for a folder that is disabled, incompatible or lacks requirements.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import re
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from modules.extensions.manifest import Manifest, manifest_path

EntryPoint = Callable[[Any], None]


def discover(roots: Sequence[Path]) -> list[Path]:
    """Extension folders (a sub-folder with a manifest) of each root, by name; hidden and `_` folders skipped."""
    found: list[Path] = []
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir(), key=lambda path: path.name.lower()):
            resolved = folder.resolve()
            if folder.name.startswith((".", "_")) or not folder.is_dir() or resolved in seen:
                continue
            if manifest_path(folder) is not None:
                seen.add(resolved)
                found.append(folder)
    return found


def package_name(manifest: Manifest, folder: Path) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode("utf-8")).hexdigest()[:8]
    return f"webui_extension_{re.sub(r'[^A-Za-z0-9_]', '_', manifest.name)}_{digest}"


def import_entry_point(manifest: Manifest, folder: Path) -> EntryPoint:
    """Import `<module>` from the folder and return `<function>`; raises whatever the import raises."""
    package = package_name(manifest, folder)
    if package not in sys.modules:
        module = types.ModuleType(package, f"extension {manifest.name}")
        module.__path__ = [str(folder.resolve())]
        module.__package__ = package
        sys.modules[package] = module  # the import system keeps packages here; it is not ours to avoid
    entry_module = importlib.import_module(f"{package}.{manifest.entry_module}")
    function = getattr(entry_module, manifest.entry_function, None)
    if not callable(function):
        raise AttributeError(f"{manifest.entry_module}.py has no function {manifest.entry_function!r}")
    return function


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The requirements that are not installed (or installed in a version outside the specifier)."""
    missing = []
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            missing.append(f"{text} (not a valid requirement)")
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{text} (installed: {installed})")
    return missing
