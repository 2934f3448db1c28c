"""The Settings tab, generated from the Settings dataclass: bool → checkbox, int → number, str → textbox.

A new field in modules/settings.py appears here with no change to this file; its label is `metadata["label"]`
when the field declares one, else A1111's wording below, else the field name in words.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.settings import Settings, setting_fields
from modules.ui.extension_settings import build_extension_settings
from modules.ui.forms import NamedComponents
from modules.ui.results import error_html
from modules.ui.topbar import APP_ERRORS, QUICK_SETTINGS

if TYPE_CHECKING:
    from modules.app import App

A1111_LABELS: dict[str, str] = {
    "sd_checkpoints_limit": "Maximum number of checkpoints loaded at the same time",
    "emphasis": "Emphasis mode",
    "samples_save": "Always save all generated images",
    "samples_format": "File format for images",
    "grid_save": "Always save all generated image grids",
    "grid_only_if_multiple": "Do not save grids consisting of one picture",
    "return_grid": "Show grid in gallery",
    "save_to_dirs": "Save images to a subdirectory (by date)",
    "enable_pnginfo": "Save text information about generation parameters as chunks to png files",
    "live_previews_enable": "Show live previews of the created image",
    "show_progress_every_n_steps": "Live preview display period (in sampling steps)",
    "send_seed": "Send seed when sending prompt or image to other interface",
    "send_size": "Send size when sending prompt or image to another interface",
    "outdir_txt2img_samples": "Output directory for txt2img images (empty = outputs/txt2img-images)",
    "outdir_txt2img_grids": "Output directory for txt2img grids (empty = outputs/txt2img-grids)",
    "outdir_img2img_samples": "Output directory for img2img images (empty = outputs/img2img-images)",
    "outdir_img2img_grids": "Output directory for img2img grids (empty = outputs/img2img-grids)",
    "outdir_extras_samples": "Output directory for images from extras tab (empty = outputs/extras-images)",
    "img2img_fix_steps": "With img2img, do exactly the amount of steps the slider specifies",
    "initial_noise_multiplier": "Noise multiplier for img2img",
    "img2img_color_correction": "Apply color correction to img2img results to match original colors",
    "inpainting_mask_weight": "Inpainting conditioning mask strength",
    "mask_apply_overlay": "For inpainting, include masked composite in results",
    "ESRGAN_tile": "Tile size for ESRGAN upscalers (0 = no tiling)",
    "ESRGAN_tile_overlap": "Tile overlap for ESRGAN upscalers",
    "upscaler_for_img2img": "Upscaler for img2img",
    "save_init_img": "Save init images when using img2img",
}

# Settings that take one of a few values (a field may also declare `metadata["choices"]`).
A1111_CHOICES: dict[str, tuple[str, ...]] = {
    "emphasis": ("Original", "No norm", "Ignore", "None"),
    "samples_format": ("png", "jpg", "webp"),
}


def editable_fields() -> list[dataclasses.Field]:
    return [f for f in setting_fields() if f.name not in QUICK_SETTINGS]


def setting_label(field: dataclasses.Field) -> str:
    return field.metadata.get("label") or A1111_LABELS.get(field.name) or field.name.replace("_", " ").capitalize()


def setting_component(field: dataclasses.Field, value: Any) -> gr.components.Component:
    """The input for one setting, chosen by the type of its default value."""
    label, elem_id = setting_label(field), f"setting_{field.name}"
    choices = field.metadata.get("choices") or A1111_CHOICES.get(field.name)
    if choices:
        return gr.Dropdown(list(choices), value=value, label=label, elem_id=elem_id, allow_custom_value=True)
    if isinstance(value, bool):
        return gr.Checkbox(value, label=label, elem_id=elem_id)
    if isinstance(value, int):
        return gr.Number(value, label=label, precision=0, elem_id=elem_id)
    if isinstance(value, float):
        return gr.Number(value, label=label, elem_id=elem_id)
    return gr.Textbox(str(value), label=label, elem_id=elem_id)


def settings_changes(current: Settings, values: dict[str, Any]) -> dict[str, Any]:
    """Only what differs from the current settings (so Apply never re-applies untouched values)."""
    return {name: value for name, value in values.items() if current.value(name) != value}


def apply_settings(app: App, values: dict[str, Any]) -> str:
    """The Apply button: validate and save through the App; the message lists what changed."""
    changes = settings_changes(app.settings, values)
    if not changes:
        return "Nothing changed."
    app.update_settings(changes)
    return f"{len(changes)} setting(s) changed: {', '.join(sorted(changes))}."


@dataclass
class SettingsTab:
    fields: NamedComponents
    apply: gr.Button
    result: gr.HTML


def build_settings(app: App) -> SettingsTab:
    fields = NamedComponents()
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
    result = gr.HTML("", elem_id="settings_result")
    with gr.Column():
        for field in editable_fields():
            fields.add(field.name, setting_component(field, getattr(app.settings, field.name)))
        build_extension_settings(app, fields)  # "<extension>.<key>" settings of enabled extensions
    return SettingsTab(fields, apply, result)


def settings_values(app: App, fields: NamedComponents) -> dict[Any, Any]:
    """Current values, for a freshly opened page."""
    return fields.updates({name: app.settings.value(name) for name in fields})


def wire_settings(app: App, tab: SettingsTab) -> None:
    fields, result = tab.fields, tab.result

    def on_apply(data: dict[Any, Any]) -> dict[Any, Any]:
        try:
            message = apply_settings(app, fields.values(data))
        except APP_ERRORS as error:
            gr.Warning(f"Settings not applied: {error}")
            message = error_html(f"Settings not applied: {error}")
        return {result: message, **settings_values(app, fields)}

    tab.apply.click(on_apply, inputs=fields.inputs, outputs=[result, *fields.outputs])
