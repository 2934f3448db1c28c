"""The Extensions tab without gradio: the table of installed extensions, enable / disable (saved by the extension
host), and install / update / uninstall / install requirements with their progress streamed as text.

Changing what is installed needs a restart to take effect (tabs and routes are built at start-up), and is refused
while the server listens or shares unless --enable-insecure-extension-access (installer.access_refusal).
"""
from __future__ import annotations

import html
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modules.extensions import installer, loader
from modules.extensions.manifest import ManifestError, read_manifest

if TYPE_CHECKING:
    from modules.app import App
    from modules.extensions.host import ExtensionRecord

RESTART_NOTE = "Restart the WebUI to load the change."
TABLE_HEADERS = ["Extension", "Enabled", "Version", "Status", "Source", "Commit", "Notes"]
LOG_LINES_SHOWN = 40
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class ExtensionRow:
    name: str
    enabled: bool
    version: str
    status: str
    source: str  # the git remote, "built-in", or "local folder"
    commit: str
    notes: str
    folder: Path

    def cells(self) -> list[str]:
        return [self.name, "✓" if self.enabled else "", self.version, self.status, self.source, self.commit,
                self.notes]


# ---------------------------------------------------------------------------------------------------- listing


def install_root(app: App) -> Path:
    """Where new extensions are cloned: <data dir>/extensions (the project's extensions/ by default)."""
    return app.paths.data_dir / "extensions"


def _row(record: ExtensionRecord) -> ExtensionRow:
    manifest = record.manifest
    if not record.folder.exists():
        status = "uninstalled (restart)"
    else:
        status = record.status
    source = record.git.remote or ("built-in" if record.builtin else "local folder")
    commit = (record.git.commit_hash or "")[:8]
    notes = record.problem or (manifest.description if manifest else "")
    return ExtensionRow(record.name, record.enabled, manifest.version if manifest else "", status, source, commit,
                        notes, record.folder)


def _new_folder_row(folder: Path) -> ExtensionRow:
    """A folder installed since start-up: listed, but nothing of it runs before a restart."""
    try:
        manifest = read_manifest(folder)
        name, version, notes = manifest.name, manifest.version, manifest.description
    except ManifestError as error:
        name, version, notes = folder.name, "", f"invalid manifest: {error}"
    return ExtensionRow(name, True, version, "installed (restart to load)", "", "", notes, folder)


def extension_rows(app: App) -> list[ExtensionRow]:
    records = app.extensions.records()
    known = {record.folder.resolve() for record in records}
    roots = list(app.extensions.roots)
    if install_root(app) not in roots:
        roots.append(install_root(app))
    new = [_new_folder_row(folder) for folder in loader.discover(roots) if folder.resolve() not in known]
    return [_row(record) for record in records] + new


def extensions_table(records: Sequence[ExtensionRecord], extra: Sequence[ExtensionRow] = ()) -> str:
    """The installed extensions as an HTML table (escaped), problems in red."""
    rows = [_row(record) for record in records] + list(extra)
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{title}</th>" for title in TABLE_HEADERS)
    body = []
    for row in rows:
        cells = row.cells()
        colour = " style='color:#dc2626'" if row.status == "failed" else ""
        body.append("<tr>" + "".join(f"<td style='padding:2px 8px;vertical-align:top'{colour if i == 6 else ''}>"
                                     f"{html.escape(cell)}</td>" for i, cell in enumerate(cells)) + "</tr>")
    return f"<table style='width:100%'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def table_html(app: App) -> str:
    rows = extension_rows(app)
    known = len(app.extensions.records())
    return extensions_table(app.extensions.records(), rows[known:])


def names(app: App) -> list[str]:
    return [row.name for row in extension_rows(app)]


def enabled_names(app: App) -> list[str]:
    """The extensions the user wants on (loaded or not), for the "Enabled extensions" checkboxes."""
    return [record.name for record in app.extensions.records() if record.enabled]


def access_note(app: App) -> str:
    """Shown at the top of the tab: why changes are refused, or what changes need."""
    return installer.access_refusal(app.options) or f"Changes take effect after a restart. {RESTART_NOTE}"


# ---------------------------------------------------------------------------------------------------- actions


def set_enabled(app: App, name: str, enabled: bool) -> str:
    """Saved at once; scripts and hooks follow immediately, tabs and routes after a restart."""
    if not name:
        raise ValueError("choose an extension first")
    record = app.extensions.set_enabled(name, enabled)
    return f"{record.name} {'enabled' if enabled else 'disabled'}. {RESTART_NOTE}"


def apply_enabled(app: App, wanted: Sequence[str]) -> str:
    """The Apply button: save each changed choice; a ticked extension that a failing hook switched off is given
    another chance ("enabled again"). Returns an HTML message."""
    chosen, changes = set(wanted), []
    for record in app.extensions.records():
        want = record.name in chosen
        if want != record.enabled:
            app.extensions.set_enabled(record.name, want)
            changes.append(f"{record.name} {'enabled' if want else 'disabled'}")
        elif want and record.loaded and record.problem:
            app.extensions.set_enabled(record.name, True)
            changes.append(f"{record.name} enabled again")
    if not changes:
        return "Nothing changed."
    return html.escape("; ".join(changes) + ". " + RESTART_NOTE)


def _row_named(app: App, name: str) -> ExtensionRow:
    for row in extension_rows(app):
        if row.name == name:
            return row
    raise ValueError(f"no extension named {name!r}")


def _record(app: App, name: str) -> ExtensionRecord | None:
    return next((record for record in app.extensions.records() if record.name == name), None)


def _removable_folder(app: App, row: ExtensionRow) -> Path:
    """The row's folder if it is directly inside one of the extension roots (never anything else)."""
    roots = {root.resolve() for root in (*app.extensions.roots, install_root(app))}
    if row.folder.parent.resolve() not in roots:
        raise ValueError(f"{row.name} is not inside an extensions folder")
    record = _record(app, row.name)
    if record is not None and record.builtin and not installer.is_own_checkout(row.folder):
        raise ValueError(f"{row.name} is built in: it can be disabled, not uninstalled")
    return installer.contained_folder(row.folder.parent, row.folder.name)


def install(app: App, url: str, folder_name: str = "", on_progress: installer.Progress | None = None) -> str:
    installer.require_access(app.options)
    folder = installer.install(install_root(app), url, name=folder_name or None, on_progress=on_progress)
    try:
        manifest = read_manifest(folder)
        requirements = f" It declares requirements ({', '.join(manifest.requirements)}): install them with " \
                       "'Install requirements' after reviewing them." if manifest.requirements else ""
        described = f"{manifest.name} {manifest.version}"
    except ManifestError as error:
        requirements, described = f" Warning: {error}; it will not load.", folder.name
    return f"Installed {described} into {folder}.{requirements} {RESTART_NOTE}"


def update(app: App, name: str, on_progress: installer.Progress | None = None) -> str:
    installer.require_access(app.options)
    row = _row_named(app, name)
    result = installer.update(row.folder, on_progress=on_progress)
    if not result.changed:
        return f"{name} is up to date ({result.after[:8]})."
    return f"Updated {name}: {result.before[:8]} → {result.after[:8]}. {RESTART_NOTE}"


def uninstall(app: App, name: str, confirmed: bool) -> str:
    installer.require_access(app.options)
    if not confirmed:
        raise ValueError(f"tick 'Yes, delete it' to uninstall {name or 'the extension'}: its folder is deleted")
    folder = _removable_folder(app, _row_named(app, name))
    installer.uninstall(folder.parent, folder.name)
    return f"Uninstalled {name} (deleted {folder}). {RESTART_NOTE}"


def install_requirements(app: App, name: str, on_progress: installer.Progress | None = None) -> str:
    installer.require_access(app.options)
    row = _row_named(app, name)
    record = _record(app, name)
    declared = record.manifest.requirements if record is not None and record.manifest else ()
    if not installer.install_requirements(row.folder, declared, on_progress=on_progress):
        return f"{name} declares no requirements."
    return f"Installed the requirements of {name}. {RESTART_NOTE}"


# ------------------------------------------------------------------------------------------------ streaming


def streamed(action: Callable[[installer.Progress], str]) -> Iterator[tuple[str, str | None]]:
    """Run `action(on_progress)` on a thread; yield (log so far, None) while it runs, then (log, final message).

    The final message is the action's return value, or "Error: ..." when it raised."""
    lines: queue.Queue[str] = queue.Queue()
    outcome: dict[str, str] = {}

    def work() -> None:
        try:
            outcome["message"] = action(lines.put)
        except Exception as error:  # shown to the user; the server goes on
            outcome["message"] = f"Error: {error}"

    thread = threading.Thread(target=work, name="extension-action", daemon=True)
    thread.start()
    log: list[str] = []
    while thread.is_alive() or not lines.empty():
        thread.join(POLL_SECONDS)
        while not lines.empty():
            log.append(lines.get())
        yield "\n".join(log[-LOG_LINES_SHOWN:]), None
    yield "\n".join(log[-LOG_LINES_SHOWN:]), outcome.get("message", "")


def run_to_end(action: Callable[[installer.Progress], str]) -> tuple[str, str]:
    """`streamed` without the intermediate steps (tests, scripts): (whole log, final message)."""
    log, message = "", ""
    for log, final in streamed(action):
        message = final if final is not None else message
    return log, message
