"""Extension settings sections in the Settings tab: one heading per section, one input per setting, named by its
"<extension>.<key>" so the Settings tab's Apply saves them with the other settings."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.extensions.registry import SettingField
from modules.ui.forms import NamedComponents

if TYPE_CHECKING:
    from modules.app import App


def extension_setting_component(field: SettingField, value: Any) -> gr.components.Component:
    elem_id = "setting_" + field.key.replace(".", "_").replace("-", "_")
    if field.choices:
        return gr.Dropdown(list(field.choices), value=value, label=field.label, elem_id=elem_id)
    if isinstance(field.default, bool):
        return gr.Checkbox(value, label=field.label, elem_id=elem_id)
    if isinstance(field.default, int):
        return gr.Number(value, label=field.label, precision=0, elem_id=elem_id)
    if isinstance(field.default, float):
        return gr.Number(value, label=field.label, elem_id=elem_id)
    return gr.Textbox(str(value), label=field.label, elem_id=elem_id)


def build_extension_settings(app: App, fields: NamedComponents) -> None:
    """The settings sections of the enabled extensions, under the core settings."""
    for section in app.extensions.settings_sections():
        with gr.Group(elem_id=f"settings_extension_{section.extension}"):
            gr.Markdown(f"### {section.title}  \n<small>extension: {section.extension}</small>")
            for field in section.fields:
                fields.add(field.key, extension_setting_component(field, app.settings.value(field.key)))
