"""The "ControlNet" accordion of txt2img and img2img: N unit sub-tabs ("ControlNet Unit 0" …), laid out like the
A1111 extension's. `build_controlnet_units` adds each unit's inputs to the tab's form (names from
controlnet_form.field_name), so Generate reads them with the rest of the form; `wire_controlnet_units` connects the
per-unit helpers (module → sliders, model refresh, allow preview, 💥 run preprocessor); `paste_slider_updates` gives
the sliders of units a pasted infotext sets (the values come from controlnet_paste).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.engine.request import CONTROL_MODES, CONTROL_RESIZE_MODES, HR_OPTIONS
from modules.ui.controlnet_form import (default_unit_values, field_name, missing_preprocessors_text, model_choices,
                                        module_choices, run_preview, slider_settings, unit_count, unit_values)
from modules.ui.controlnet_paste import SLIDER_FIELDS
from modules.ui.forms import NamedComponents
from modules.ui.topbar import APP_ERRORS

if TYPE_CHECKING:
    from modules.app import App


@dataclass
class UnitControls:
    index: int
    preview: gr.Image
    allow_preview: gr.Checkbox
    run_preprocessor: gr.Button
    refresh_models: gr.Button


@dataclass
class ControlNetPanel:
    fields: NamedComponents  # the tab's form (units' values live there)
    prefix: str
    units: list[UnitControls] = field(default_factory=list)


def build_controlnet_units(app: App, fields: NamedComponents, prefix: str, *, img2img: bool = False) -> ControlNetPanel:
    panel = ControlNetPanel(fields, prefix)
    defaults = default_unit_values()
    with gr.Accordion("ControlNet", open=False, elem_id=f"{prefix}_controlnet"):
        with gr.Tabs(elem_id=f"{prefix}_controlnet_tabs"):
            for index in range(unit_count(app)):
                with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{prefix}_controlnet_unit_{index}"):
                    panel.units.append(_unit(app, fields, prefix, index, defaults, img2img))
        help_text = missing_preprocessors_text(app)
        if help_text:
            gr.Markdown(help_text, elem_id=f"{prefix}_controlnet_missing_preprocessors")
    return panel


def _unit(app: App, fields: NamedComponents, prefix: str, index: int, defaults: dict[str, Any],
          img2img: bool) -> UnitControls:
    def add(name: str, component: Any) -> Any:
        return fields.add(field_name(index, name), component)

    element = f"{prefix}_controlnet_{index}"
    with gr.Row(equal_height=True):
        add("image", gr.Image(label="Control image" + (" (used with 'Upload independent control image')"
                                                       if img2img else ""), type="pil", image_mode="RGB",
                              sources=["upload", "clipboard"], height=256, elem_id=f"{element}_image"))
        preview = gr.Image(label="Preprocessor preview", interactive=False, visible=False, height=256,
                           elem_id=f"{element}_preview")
    with gr.Row():
        add("enabled", gr.Checkbox(defaults["enabled"], label="Enable", elem_id=f"{element}_enable"))
        if img2img:
            add("upload_independent", gr.Checkbox(defaults["upload_independent"],
                                                  label="Upload independent control image",
                                                  elem_id=f"{element}_upload_independent"))
        add("pixel_perfect", gr.Checkbox(defaults["pixel_perfect"], label="Pixel Perfect",
                                         elem_id=f"{element}_pixel_perfect"))
        allow_preview = gr.Checkbox(False, label="Allow Preview", elem_id=f"{element}_allow_preview")
    with gr.Row(equal_height=True):
        add("module", gr.Dropdown(module_choices(app), value=defaults["module"], label="Preprocessor", scale=3,
                                  elem_id=f"{element}_module"))
        run_preprocessor = gr.Button("💥", scale=0, min_width=40, elem_id=f"{element}_run_preprocessor")
        add("model", gr.Dropdown(model_choices(app), value=defaults["model"], label="Model", scale=3,
                                 elem_id=f"{element}_model"))
        refresh_models = gr.Button("🔄", scale=0, min_width=40, elem_id=f"{element}_refresh_models")
    with gr.Row():
        add("weight", gr.Slider(0, 2, value=defaults["weight"], step=0.05, label="Control Weight",
                                elem_id=f"{element}_weight"))
        add("guidance_start", gr.Slider(0, 1, value=defaults["guidance_start"], step=0.01,
                                        label="Starting Control Step", elem_id=f"{element}_guidance_start"))
        add("guidance_end", gr.Slider(0, 1, value=defaults["guidance_end"], step=0.01, label="Ending Control Step",
                                      elem_id=f"{element}_guidance_end"))
    resolution, threshold_a, threshold_b = slider_settings(defaults["module"])
    with gr.Row():
        for name, setting in (("processor_res", resolution), ("threshold_a", threshold_a),
                              ("threshold_b", threshold_b)):
            add(name, gr.Slider(setting.minimum, setting.maximum, value=defaults[name], step=setting.step,
                                label=setting.label, visible=setting.visible, elem_id=f"{element}_{name}"))
    add("control_mode", gr.Radio(list(CONTROL_MODES), value=defaults["control_mode"], label="Control Mode",
                                 elem_id=f"{element}_control_mode"))
    add("resize_mode", gr.Radio(list(CONTROL_RESIZE_MODES), value=defaults["resize_mode"], label="Resize Mode",
                                elem_id=f"{element}_resize_mode"))
    if not img2img:  # img2img has no hires pass; the option only matters with txt2img's hires fix
        # shown while Hires. fix is ticked, as in the extension (wire_hires_option)
        add("hr_option", gr.Radio(list(HR_OPTIONS), value=defaults["hr_option"], label="Hires-Fix Option",
                                  visible=False, elem_id=f"{element}_hr_option"))
    return UnitControls(index, preview, allow_preview, run_preprocessor, refresh_models)


# ------------------------------------------------------------------------------------------------ pasting


def paste_slider_updates(panel: ControlNetPanel | None, form: Mapping[str, Any]) -> dict[Any, Any]:
    """For each unit whose module a pasted infotext sets (controlnet_paste): its sliders as that module shows them
    (range, label, visibility) holding the pasted values. Overrides the plain values of the form's updates."""
    if panel is None:
        return {}
    updates: dict[Any, Any] = {}
    for unit in panel.units:
        module = form.get(field_name(unit.index, "module"))
        if module is None:
            continue
        for name, setting in zip(SLIDER_FIELDS, slider_settings(module)):
            value = form.get(field_name(unit.index, name), setting.value)
            updates[panel.fields[field_name(unit.index, name)]] = gr.Slider(
                minimum=setting.minimum, maximum=setting.maximum, value=value, step=setting.step, label=setting.label,
                visible=setting.visible)
    return updates


# ------------------------------------------------------------------------------------------------ events


def wire_controlnet_units(app: App, panel: ControlNetPanel | None, *, fallback_image: Any = None) -> None:
    """Per unit: module → its sliders, 🔄 models, Allow Preview, 💥 preview (img2img falls back on its input)."""
    if panel is None:
        return
    for unit in panel.units:
        _wire_unit(app, panel, unit, fallback_image)


def wire_hires_option(panel: ControlNetPanel | None, enable_hr: Any) -> None:
    """Each unit's Hires-Fix Option follows the tab's Hires. fix checkbox (also when a paste ticks it)."""
    if panel is None:
        return
    radios = [panel.fields[field_name(unit.index, "hr_option")] for unit in panel.units]
    enable_hr.change(lambda on: [gr.Radio(visible=bool(on))] * len(radios), inputs=enable_hr, outputs=radios,
                     show_progress="hidden")


def _wire_unit(app: App, panel: ControlNetPanel, unit: UnitControls, fallback_image: Any) -> None:
    fields = panel.fields

    def component(name: str) -> Any:
        return fields[field_name(unit.index, name)]

    sliders = [component(name) for name in ("processor_res", "threshold_a", "threshold_b")]

    def module_changed(module: str) -> list[Any]:
        return [gr.Slider(minimum=s.minimum, maximum=s.maximum, value=s.value, step=s.step, label=s.label,
                          visible=s.visible) for s in slider_settings(module)]

    def preview(data: dict[Any, Any]) -> Any:
        values = fields.values(data)
        try:
            image = run_preview(app, unit_values(values, unit.index), data.get(fallback_image),
                                values.get("width", 512), values.get("height", 512))
        except APP_ERRORS as error:
            raise gr.Error(str(error)) from None
        return gr.Image(value=image, visible=True)

    # `input`, not `change`: a pasted infotext sets the module and its sliders together (paste_slider_updates);
    # a change event would then reset the pasted values to the module's defaults
    component("module").input(module_changed, inputs=component("module"), outputs=sliders, show_progress="hidden")
    unit.refresh_models.click(lambda current: gr.Dropdown(choices=model_choices(app, refresh=True), value=current),
                              inputs=component("model"), outputs=component("model"), show_progress="hidden")
    unit.allow_preview.change(lambda shown: gr.Image(visible=shown), inputs=unit.allow_preview,
                              outputs=unit.preview, show_progress="hidden")
    inputs = {fields[name] for name in fields if name.startswith(field_name(unit.index, ""))}
    inputs |= {fields[name] for name in ("width", "height") if name in fields}
    if fallback_image is not None:
        inputs.add(fallback_image)
    unit.run_preprocessor.click(preview, inputs=inputs, outputs=unit.preview)
