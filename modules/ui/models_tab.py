"""The Models tab: the model manager made visible (checkpoints with family, hash, size, where they are, keep in RAM,
switch times; the RAM cache limit), model download from a URL, and the checkpoint merger.

`build_models_tab` lays it out and `wire_models_tab` connects thin handlers; the logic is in models_form.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.models.merge import ADD_DIFFERENCE, MERGE_METHODS, NO_INTERPOLATION, WEIGHTED_SUM
from modules.ui import models_form as form
from modules.ui.results import error_html
from modules.ui.topbar import APP_ERRORS, TopBar, checkpoint_titles, current_title, status_message

if TYPE_CHECKING:
    from modules.app import App

MODELS_TAB_ID = "models"
NONE_CHOICE = ("(none)", "")
FORMULAS = {WEIGHTED_SUM: "Result = A·(1 − M) + B·M", ADD_DIFFERENCE: "Result = A + (B − C)·M",
            NO_INTERPOLATION: "Result = A (bake a VAE or save as float16)"}


@dataclass
class ModelsTab:
    selected: gr.Dropdown
    load: gr.Button
    unload: gr.Button
    keep: gr.Button
    refresh: gr.Button
    status: gr.HTML
    table: gr.Dataframe
    ram_limit: gr.Number
    apply_limit: gr.Button
    ram_info: gr.Markdown
    history: gr.Markdown
    url: gr.Textbox
    folder: gr.Dropdown
    sha256: gr.Textbox
    file_name: gr.Textbox
    download: gr.Button
    cancel: gr.Button
    download_info: gr.HTML
    merge_inputs: dict[str, gr.components.Component]  # MergeForm field → component
    formula: gr.Markdown
    merge: gr.Button
    merge_info: gr.HTML
    downloads: dict[str, form.BackgroundTask] = field(default_factory=dict)  # running download per browser session


def build_models_tab(app: App) -> ModelsTab:
    names = form.checkpoint_names(app)
    with gr.Row(equal_height=True):
        selected = gr.Dropdown(names, value=names[0] if names else None, label="Checkpoint",
                               elem_id="models_selected", scale=4)
        load = gr.Button("Load", variant="primary", elem_id="models_load", scale=1)
        unload = gr.Button("Unload", elem_id="models_unload", scale=1)
        keep = gr.Button("Keep in RAM on/off", elem_id="models_keep_in_ram", scale=1)
        refresh = gr.Button("🔄 Refresh", elem_id="models_refresh", scale=1)
    status = gr.HTML("", elem_id="models_status")
    # callables: gradio calls them again on every page load, so a page opened later shows the state of now
    table = gr.Dataframe(lambda: form.checkpoint_rows(app), headers=form.CHECKPOINT_COLUMNS, interactive=False,
                         elem_id="models_table", wrap=True)
    with gr.Row(equal_height=True):
        ram_limit = gr.Number(lambda: app.settings.sd_checkpoints_limit, precision=0, minimum=1, maximum=64,
                              label="Checkpoints kept in RAM (cache limit)", elem_id="models_ram_limit", scale=1)
        apply_limit = gr.Button("Apply limit", elem_id="models_apply_limit", scale=0, min_width=120)
        ram_info = gr.Markdown(lambda: form.ram_summary(app), elem_id="models_ram_info")
    with gr.Accordion("Switch times", open=False):
        history = gr.Markdown(lambda: form.switch_history_markdown(app), elem_id="models_switch_history")
    with gr.Accordion("Download a model", open=False):
        url = gr.Textbox(label="URL", elem_id="models_download_url",
                         placeholder="https://huggingface.co/<repo>/resolve/<revision>/<file>.safetensors")
        with gr.Row():
            folder = gr.Dropdown(form.download_folder_choices(), value="auto", label="Folder",
                                 elem_id="models_download_folder")
            sha256 = gr.Textbox(label="sha256 (optional, checked)", elem_id="models_download_sha256")
            file_name = gr.Textbox(label="File name (optional)", elem_id="models_download_name")
        with gr.Row():
            download = gr.Button("Download", variant="primary", elem_id="models_download")
            cancel = gr.Button("Cancel", elem_id="models_download_cancel")
        download_info = gr.HTML("", elem_id="models_download_info")
    with gr.Accordion("Checkpoint merger", open=False):
        merge_inputs, formula, merge, merge_info = build_merger(app)
    return ModelsTab(selected, load, unload, keep, refresh, status, table, ram_limit, apply_limit, ram_info, history,
                     url, folder, sha256, file_name, download, cancel, download_info, merge_inputs, formula, merge,
                     merge_info)


def build_merger(app: App) -> tuple[dict[str, Any], gr.Markdown, gr.Button, gr.HTML]:
    names = form.checkpoint_names(app)
    optional = [NONE_CHOICE, *names]
    with gr.Row():
        primary = gr.Dropdown(names, value=None, label="Primary model (A)", elem_id="modelmerger_primary_model_name")
        secondary = gr.Dropdown(optional, value="", label="Secondary model (B)",
                                elem_id="modelmerger_secondary_model_name")
        tertiary = gr.Dropdown(optional, value="", label="Tertiary model (C)",
                               elem_id="modelmerger_tertiary_model_name")
    method = gr.Radio(list(MERGE_METHODS), value=WEIGHTED_SUM, label="Interpolation method",
                      elem_id="modelmerger_interp_method")
    formula = gr.Markdown(FORMULAS[WEIGHTED_SUM])
    multiplier = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M)",
                           elem_id="modelmerger_interp_amount")
    with gr.Row():
        vae = gr.Dropdown(form.vae_names(app), value=form.NO_VAE, label="Bake in VAE",
                          elem_id="modelmerger_bake_in_vae")
        custom_name = gr.Textbox(label="Custom name (optional)", elem_id="modelmerger_custom_name")
        fp16 = gr.Checkbox(False, label="Save as float16", elem_id="modelmerger_save_as_half")
        overwrite = gr.Checkbox(False, label="Overwrite an existing file", elem_id="modelmerger_overwrite")
    merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
    merge_info = gr.HTML("", elem_id="modelmerger_result")
    inputs = {"primary": primary, "secondary": secondary, "tertiary": tertiary, "method": method,
              "multiplier": multiplier, "vae": vae, "fp16": fp16, "custom_name": custom_name, "overwrite": overwrite}
    return inputs, formula, merge, merge_info


def listing_updates(app: App, tab: ModelsTab, selected: str | None = None) -> dict[Any, Any]:
    """Everything that shows the model lists, as it is now (after a load, download, merge or refresh)."""
    names = form.checkpoint_names(app)
    optional = [NONE_CHOICE, *names]
    return {
        tab.table: form.checkpoint_rows(app), tab.ram_info: form.ram_summary(app),
        tab.history: form.switch_history_markdown(app),
        tab.selected: gr.Dropdown(choices=names, value=selected if selected in names else next(iter(names), None)),
        tab.merge_inputs["primary"]: gr.Dropdown(choices=names),
        tab.merge_inputs["secondary"]: gr.Dropdown(choices=optional),
        tab.merge_inputs["tertiary"]: gr.Dropdown(choices=optional),
        tab.merge_inputs["vae"]: gr.Dropdown(choices=form.vae_names(app)),
    }


def listing_outputs(tab: ModelsTab) -> list[Any]:
    lists = (tab.merge_inputs[name] for name in ("primary", "secondary", "tertiary", "vae"))
    return [tab.table, tab.ram_info, tab.history, tab.selected, *lists]


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def wire_models_tab(app: App, tab: ModelsTab, bar: TopBar | None = None) -> None:
    topbar_outputs = [bar.checkpoint, bar.status] if bar else []

    def action(run):
        def handler(value: Any, selected: str | None) -> dict[Any, Any]:
            try:
                message = run(app, value)
            except APP_ERRORS as error:
                gr.Warning(str(error))
                message = error_html(str(error))
            topbar = {bar.checkpoint: gr.Dropdown(choices=checkpoint_titles(app), value=current_title(app)),
                      bar.status: status_message(app)} if bar else {}
            return {tab.status: message, **listing_updates(app, tab, selected), **topbar}
        return handler

    outputs = [tab.status, *listing_outputs(tab), *topbar_outputs]
    selection = [tab.selected, tab.selected]  # (the value the action takes, the selection to keep)
    tab.load.click(action(form.load_checkpoint), inputs=selection, outputs=outputs)
    tab.unload.click(action(form.unload_checkpoint), inputs=selection, outputs=outputs)
    tab.keep.click(action(form.toggle_keep_in_ram), inputs=selection, outputs=outputs)
    tab.refresh.click(action(lambda app_, _name: form.refresh(app_)), inputs=selection, outputs=outputs)
    tab.apply_limit.click(action(form.set_ram_limit), inputs=[tab.ram_limit, tab.selected], outputs=outputs)
    tab.table.select(pick_row, outputs=tab.selected)
    wire_download(app, tab)
    wire_merger(app, tab)


def pick_row(event: gr.SelectData) -> Any:
    """Clicking a table row selects that checkpoint for the buttons."""
    row = getattr(event, "row_value", None)
    return row[0] if row else gr.skip()


def wire_download(app: App, tab: ModelsTab) -> None:
    def on_download(url: str, kind: str, sha256: str, file_name: str, request: gr.Request):
        try:
            task = form.start_download(app, url, kind, sha256, file_name)
        except APP_ERRORS as error:
            gr.Warning(str(error))
            yield {tab.download_info: error_html(str(error))}
            return
        tab.downloads[_session(request)] = task
        for update in form.stream_task(task, form.download_progress_html, form.download_result_html):
            if update.error:
                gr.Warning(update.error)
            yield {tab.download_info: update.html, **(listing_updates(app, tab) if update.finished else {})}

    def on_cancel(request: gr.Request) -> None:
        task = tab.downloads.get(_session(request))
        if task is not None:
            task.cancel.set()

    tab.download.click(on_download, inputs=[tab.url, tab.folder, tab.sha256, tab.file_name],
                       outputs=[tab.download_info, *listing_outputs(tab)])
    tab.cancel.click(on_cancel)


def wire_merger(app: App, tab: ModelsTab) -> None:
    inputs = tab.merge_inputs

    def on_merge(data: dict[Any, Any]):
        values = form.MergeForm(**{name: data[component] for name, component in inputs.items()})
        try:
            task = form.start_merge(app, values)
        except APP_ERRORS as error:
            gr.Warning(str(error))
            yield {tab.merge_info: error_html(str(error))}
            return
        for update in form.stream_task(task, form.merge_progress_html, form.merge_result_html):
            if update.error:
                gr.Warning(update.error)
            yield {tab.merge_info: update.html, **(listing_updates(app, tab) if update.finished else {})}

    tab.merge.click(on_merge, inputs=set(inputs.values()), outputs=[tab.merge_info, *listing_outputs(tab)])
    inputs["method"].change(lambda method: FORMULAS.get(method, ""), inputs=inputs["method"], outputs=tab.formula,
                            show_progress="hidden")
