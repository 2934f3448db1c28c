"""Building `app.extensions` at start-up: core scripts first, then every extension folder."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modules.extensions.core_scripts import core_scripts
from modules.extensions.host import ExtensionHost
from modules.extensions.state import STATE_FILE_NAME
from modules.paths import PROJECT_ROOT

if TYPE_CHECKING:
    from modules.app import App

BUILTIN_EXTENSIONS_DIR = PROJECT_ROOT / "extensions"


def extension_roots(data_dir: Path) -> list[Path]:
    """The project's extensions/ (built-in and installed ones), and --data-dir's extensions/ when it is elsewhere."""
    roots = [BUILTIN_EXTENSIONS_DIR]
    if data_dir.resolve() != PROJECT_ROOT.resolve():
        roots.append(data_dir / "extensions")
    return roots


def create_extension_host(app: App) -> ExtensionHost:
    host = ExtensionHost(app, extension_roots(app.paths.data_dir), app.paths.data_dir / STATE_FILE_NAME,
                         builtin_root=BUILTIN_EXTENSIONS_DIR)
    for script in core_scripts(app):
        host.add_core_script(script)
    host.load()
    return host
