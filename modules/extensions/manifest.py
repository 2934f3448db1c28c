"""The manifest of an extension: `extension.toml` (or `extension.json`) in its folder.

    name = "example-hello"            # unique; letters, digits, "-", "_" and "."
    version = "1.0.0"
    registry_version = 1              # the REGISTRY_VERSION it was written for
    entry_point = "hello:register"    # <module in the folder>:<function taking the Registry>
    requirements = ["qrcode>=7"]      # optional; installed only when the user asks
    description = "..."               # optional
    enabled_by_default = true         # optional; false: stays off until enabled in the Extensions tab
"""
from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILES = ("extension.toml", "extension.json")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # also a safe folder / settings key part
ENTRY_POINT_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
REQUIRED = ("name", "version", "registry_version", "entry_point")


class ManifestError(ValueError):
    """The manifest is missing, unreadable or has an invalid field; the message names the field."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    registry_version: int
    entry_point: str  # "module:function"
    requirements: tuple[str, ...] = ()
    description: str = ""
    enabled_by_default: bool = True

    @property
    def entry_module(self) -> str:
        return self.entry_point.split(":", 1)[0]

    @property
    def entry_function(self) -> str:
        return self.entry_point.split(":", 1)[1]


def manifest_path(folder: Path) -> Path | None:
    for name in MANIFEST_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_manifest(folder: Path) -> Manifest:
    """Parse and validate the folder's manifest (ManifestError otherwise)."""
    path = manifest_path(folder)
    if path is None:
        raise ManifestError(f"no {' or '.join(MANIFEST_FILES)} in {folder}")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path.name} could not be read: {error}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path.name} must be a table of fields")
    return parse_manifest(raw)


def parse_manifest(raw: dict[str, Any]) -> Manifest:
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise ManifestError(f"manifest lacks {', '.join(missing)}")
    name, version, entry_point = raw["name"], raw["version"], raw["entry_point"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ManifestError(f"manifest name must be 1-64 letters, digits, '-', '_' or '.', got {name!r}")
    if not isinstance(version, str) or not version.strip():
        raise ManifestError(f"manifest version must be a non-empty string, got {version!r}")
    registry_version = raw["registry_version"]
    if isinstance(registry_version, bool) or not isinstance(registry_version, int):
        raise ManifestError(f"manifest registry_version must be an integer, got {registry_version!r}")
    if not isinstance(entry_point, str) or not ENTRY_POINT_PATTERN.match(entry_point):
        raise ManifestError(f"manifest entry_point must look like 'module:function', got {entry_point!r}")
    requirements = raw.get("requirements", [])
    if not isinstance(requirements, list) or not all(isinstance(item, str) and item.strip() for item in requirements):
        raise ManifestError(f"manifest requirements must be a list of requirement strings, got {requirements!r}")
    description = raw.get("description", "")
    enabled_by_default = raw.get("enabled_by_default", True)
    if not isinstance(description, str):
        raise ManifestError(f"manifest description must be a string, got {description!r}")
    if not isinstance(enabled_by_default, bool):
        raise ManifestError(f"manifest enabled_by_default must be true or false, got {enabled_by_default!r}")
    return Manifest(name=name, version=version.strip(), registry_version=registry_version, entry_point=entry_point,
                    requirements=tuple(item.strip() for item in requirements), description=description,
                    enabled_by_default=enabled_by_default)
