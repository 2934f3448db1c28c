"""The Extensions tab: installed extensions with version, source and status (and why one is not running),
enable/disable (saved), update / uninstall / install requirements, install from a git URL with its progress; and the
tabs extensions add. Logic in extensions_form.py (and modules/extensions/installer.py)."""
from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.extensions.installer import access_refusal
from modules.ui import extensions_form
from modules.ui.extensions_form import RESTART_NOTE, apply_enabled, enabled_names

if TYPE_CHECKING:
    from modules.app import App

EXTENSIONS_TAB_ID = "extensions"
Updates = dict[Any, Any]


@dataclass
class ExtensionsTab:
    enabled: gr.CheckboxGroup
    apply: gr.Button
    refresh: gr.Button
    table: gr.HTML
    message: gr.HTML
    chosen: gr.Dropdown  # the extension Update / Uninstall / Install requirements act on
    update: gr.Button
    requirements: gr.Button
    confirm_uninstall: gr.Checkbox
    uninstall: gr.Button
    url: gr.Textbox
    folder_name: gr.Textbox
    install: gr.Button
    progress: gr.Textbox


def _note_html(app: App) -> str:
    refusal = access_refusal(app.options)
    if refusal:
        return f"<p style='color:#b45309'><b>⚠️ {html.escape(refusal)}</b></p>"
    return f"<p><small>{html.escape(extensions_form.access_note(app))}</small></p>"


def build_extensions_tab(app: App) -> ExtensionsTab:
    allowed = access_refusal(app.options) is None
    gr.HTML(_note_html(app), elem_id="extensions_note")
    with gr.Tabs(elem_id="extensions_tabs"):
        with gr.Tab("Installed", elem_id="extensions_installed_tab"):
            with gr.Row():
                apply = gr.Button("Apply", variant="primary", elem_id="extensions_apply")
                refresh = gr.Button("Refresh status", elem_id="extensions_refresh")
            names = [record.name for record in app.extensions.records()]
            enabled = gr.CheckboxGroup(names, value=enabled_names(app), label="Enabled extensions",
                                       info=RESTART_NOTE, elem_id="extensions_enabled")
            table = gr.HTML(extensions_form.table_html(app), elem_id="extensions_installed")
            with gr.Row(equal_height=True):
                chosen = gr.Dropdown(extensions_form.names(app), value=None, label="Extension",
                                     elem_id="extensions_chosen", scale=3)
                update = gr.Button("Update (git pull)", interactive=allowed, elem_id="extensions_update", scale=1)
                requirements = gr.Button("Install requirements", interactive=allowed,
                                         elem_id="extensions_install_requirements", scale=1)
            with gr.Row(equal_height=True):
                confirm = gr.Checkbox(False, label="Yes, delete it", elem_id="extensions_confirm_uninstall", scale=1)
                uninstall = gr.Button("Uninstall", variant="stop", interactive=allowed,
                                      elem_id="extensions_uninstall", scale=1)
        with gr.Tab("Install from URL", elem_id="extensions_install_tab"):
            url = gr.Textbox(label="URL of the extension's git repository",
                             placeholder="https://github.com/user/extension.git", elem_id="extensions_install_url")
            folder_name = gr.Textbox(label="Local folder name (optional)", elem_id="extensions_install_dirname")
            install = gr.Button("Install", variant="primary", interactive=allowed, elem_id="extensions_install")
    message = gr.HTML("", elem_id="extensions_message")
    progress = gr.Textbox(label="Progress", lines=8, max_lines=12, interactive=False, elem_id="extensions_progress")
    return ExtensionsTab(enabled, apply, refresh, table, message, chosen, update, requirements, confirm, uninstall,
                         url, folder_name, install, progress)


def wire_extensions_tab(app: App, tab: ExtensionsTab) -> None:
    def current() -> Updates:
        return {tab.enabled: gr.CheckboxGroup(choices=[r.name for r in app.extensions.records()],
                                              value=enabled_names(app)),
                tab.table: extensions_form.table_html(app),
                tab.chosen: gr.Dropdown(choices=extensions_form.names(app))}

    def on_apply(wanted: list[str]) -> Updates:
        return {**current(), tab.message: apply_enabled(app, wanted or [])}

    def streaming(action: Callable[[Callable[[str], None]], str]) -> Iterator[Updates]:
        for log_text, message in extensions_form.streamed(action):
            if message is None:
                yield {tab.progress: log_text}
            else:
                style = "color:#dc2626" if message.startswith("Error:") else ""
                yield {**current(), tab.progress: log_text,
                       tab.message: f"<p style='{style}'>{html.escape(message)}</p>"}

    def on_install(url: str, folder_name: str) -> Iterator[Updates]:
        yield from streaming(lambda progress: extensions_form.install(app, url, folder_name, progress))

    def on_update(name: str | None) -> Iterator[Updates]:
        yield from streaming(lambda progress: extensions_form.update(app, name or "", progress))

    def on_requirements(name: str | None) -> Iterator[Updates]:
        yield from streaming(lambda progress: extensions_form.install_requirements(app, name or "", progress))

    def on_uninstall(name: str | None, confirmed: bool) -> Iterator[Updates]:
        yield from streaming(lambda _progress: extensions_form.uninstall(app, name or "", confirmed))

    listing = [tab.enabled, tab.table, tab.chosen]
    outputs = [*listing, tab.message, tab.progress]
    tab.apply.click(on_apply, inputs=tab.enabled, outputs=[*listing, tab.message])
    tab.refresh.click(current, outputs=listing, show_progress="hidden")
    tab.install.click(on_install, inputs=[tab.url, tab.folder_name], outputs=outputs)
    tab.update.click(on_update, inputs=tab.chosen, outputs=outputs)
    tab.requirements.click(on_requirements, inputs=tab.chosen, outputs=outputs)
    tab.uninstall.click(on_uninstall, inputs=[tab.chosen, tab.confirm_uninstall], outputs=outputs).then(
        lambda: False, outputs=tab.confirm_uninstall, show_progress="hidden")


def build_extension_tabs(app: App) -> None:
    """One top-level tab per tab an enabled extension added (call inside gr.Tabs); a builder that raises disables
    its extension and leaves a note in its tab."""
    for number, spec in enumerate(app.extensions.tabs()):
        with gr.Tab(spec.title, id=f"extension_tab_{number}", elem_id=f"tab_extension_{number}"):
            try:
                spec.builder(app.extensions.view)
            except Exception as error:
                app.extensions.fail(spec.extension, f"tab {spec.title!r}", error)
                gr.Markdown(f"**The extension {spec.extension} failed to build this tab** ({type(error).__name__}: "
                            f"{error}); it has been disabled.")
