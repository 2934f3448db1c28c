"""Which extensions the user turned on or off: a small JSON file in the data folder, written atomically.

Only explicit choices are stored ({"enabled": {name: bool}}); an extension without one follows its manifest's
`enabled_by_default`. A broken file is moved aside and the defaults apply (never a failed start-up).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from modules.engine.images import write_atomically

log = logging.getLogger(__name__)

STATE_FILE_NAME = "extension_state.json"


def read_choices(path: Path) -> dict[str, bool]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        choices = raw.get("enabled", {}) if isinstance(raw, dict) else {}
        return {str(name): value for name, value in choices.items() if isinstance(value, bool)}
    except (OSError, ValueError, AttributeError) as error:
        backup = path.with_suffix(".json.bak")
        os.replace(path, backup)
        log.error("%s could not be read (%s); moved to %s, extensions use their defaults", path.name, error, backup)
        return {}


def write_choices(path: Path, choices: dict[str, bool]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"enabled": dict(sorted(choices.items()))}, indent=2) + "\n"
    write_atomically(path, text.encode("utf-8"))
