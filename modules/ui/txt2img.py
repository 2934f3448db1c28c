"""The txt2img tab: `build_txt2img` lays it out, `wire_txt2img` connects events to thin handlers.

Handlers turn form values into a GenerationRequest (txt2img_form), submit it, and stream the job's progress
(modules/ui/generation.py, shared with img2img).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.engine.request import MAX_SIZE, MAX_STEPS
from modules.jobs import Job
from modules.models.upscalers import hires_upscaler_choices
from modules.ui import controlnet as controlnet_ui
from modules.ui import extra_networks, generation
from modules.ui import scripts as script_ui
from modules.ui.forms import NamedComponents
from modules.ui.generation import OutputPanel, PromptArea, SeedControls
from modules.ui.send_to import GALLERY_SEND_TARGETS
from modules.ui.topbar import TopBar
from modules.ui.txt2img_form import (default_form_values, native_size, pasted_for_txt2img, request_from_form,
                                     submit_txt2img)

if TYPE_CHECKING:
    from modules.app import App

__all__ = ["Txt2ImgTab", "build_txt2img", "wire_txt2img", "paste_updates", "paste_outputs", "stream_job",
           "native_size"]


@dataclass
class Txt2ImgTab:
    fields: NamedComponents  # every value that goes into the request, by txt2img_form name
    prompt: PromptArea
    seeds: SeedControls
    swap_size: gr.Button
    hires_accordion: gr.Accordion
    output: OutputPanel
    networks: extra_networks.ExtraNetworksPanel | None = None  # 🎴 extra networks cards (issue 5)
    scripts: script_ui.ScriptControls | None = None  # Script dropdown and script inputs (issue 7)
    controlnet: controlnet_ui.ControlNetPanel | None = None  # ControlNet units (issue 6)

    # the output panel's parts, as callers read them from the tab
    @property
    def progress(self) -> gr.HTML:
        return self.output.progress

    @property
    def gallery(self) -> gr.Gallery:
        return self.output.gallery

    @property
    def gallery_info(self) -> gr.State:
        return self.output.gallery_info

    @property
    def info(self) -> gr.HTML:
        return self.output.info

    @property
    def last_infotext(self) -> gr.State:
        return self.output.last_infotext


# --------------------------------------------------------------------------------------------- handlers


def paste_updates(app: App, tab: Txt2ImgTab, bar: TopBar, text: str) -> dict[Any, Any]:
    """Component updates that put an infotext into the txt2img form and the top bar (PNG Info uses it too)."""
    pasted = pasted_for_txt2img(app, text)
    generation.warn_all(pasted.warnings)
    updates = {**tab.fields.updates(pasted.form), **generation.topbar_paste_updates(bar, pasted),
               **controlnet_ui.paste_slider_updates(tab.controlnet, pasted.form)}
    if pasted.form.get("enable_hr"):
        updates[tab.hires_accordion] = gr.Accordion(open=True)
    return updates


def paste_outputs(tab: Txt2ImgTab, bar: TopBar) -> list[Any]:
    return [*tab.fields.outputs, tab.hires_accordion, *generation.topbar_paste_outputs(bar)]


def stream_job(tab: Txt2ImgTab, job: Job, started: float) -> Iterator[dict[Any, Any]]:
    return generation.stream_job(tab.output, job, started)


# ----------------------------------------------------------------------------------------------- layout


def build_txt2img(app: App) -> Txt2ImgTab:
    fields = NamedComponents()
    defaults = default_form_values(native_size(app))
    prompt = generation.build_prompt_area(app, fields, "txt2img", defaults["steps"], extra_networks=True)
    networks = extra_networks.build_extra_networks("txt2img")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            generation.build_sampler_controls(fields, "txt2img", defaults)
            hires_accordion = _hires_section(fields, defaults, hires_upscaler_choices(app.upscalers))
            with gr.Row(equal_height=True):
                with gr.Column(scale=4):
                    generation.build_size_sliders(fields, "txt2img", defaults)
                swap_size = gr.Button("⇅", elem_id="txt2img_res_switch_btn", scale=0, min_width=40)
                with gr.Column(scale=2):
                    generation.build_batch_controls(fields, "txt2img", defaults)
            generation.build_cfg_scale(fields, "txt2img", defaults)
            seeds = generation.build_seed_controls(fields, "txt2img", defaults)
            controlnet = controlnet_ui.build_controlnet_units(app, fields, "txt2img")
            scripts = script_ui.build_script_controls(app, "txt2img", fields)
        with gr.Column(scale=1):
            output = generation.build_output_panel("txt2img", GALLERY_SEND_TARGETS)
    return Txt2ImgTab(fields, prompt, seeds, swap_size, hires_accordion, output, networks=networks, scripts=scripts,
                      controlnet=controlnet)


def _hires_section(fields: NamedComponents, defaults: dict[str, Any], upscalers: list[str]) -> gr.Accordion:
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr") as accordion:
        fields.add("enable_hr", gr.Checkbox(defaults["enable_hr"], label="Enable Hires. fix",
                                            elem_id="txt2img_enable_hr"))
        with gr.Row():
            fields.add("hr_upscaler", gr.Dropdown(upscalers, value=defaults["hr_upscaler"],
                                                  label="Upscaler", elem_id="txt2img_hr_upscaler"))
            fields.add("hr_second_pass_steps", gr.Slider(0, MAX_STEPS, value=defaults["hr_second_pass_steps"],
                                                         step=1, label="Hires steps", elem_id="txt2img_hires_steps"))
            fields.add("denoising_strength", gr.Slider(0, 1, value=defaults["denoising_strength"], step=0.01,
                                                       label="Denoising strength",
                                                       elem_id="txt2img_denoising_strength"))
        with gr.Row():
            fields.add("hr_scale", gr.Slider(1, 4, value=defaults["hr_scale"], step=0.05, label="Upscale by",
                                             elem_id="txt2img_hr_scale"))
            fields.add("hr_resize_x", gr.Slider(0, MAX_SIZE, value=defaults["hr_resize_x"], step=8,
                                                label="Resize width to", elem_id="txt2img_hr_resize_x"))
            fields.add("hr_resize_y", gr.Slider(0, MAX_SIZE, value=defaults["hr_resize_y"], step=8,
                                                label="Resize height to", elem_id="txt2img_hr_resize_y"))
    return accordion


# ------------------------------------------------------------------------------------------------ events


def wire_txt2img(app: App, tab: Txt2ImgTab, bar: TopBar) -> None:
    fields = tab.fields
    generation.wire_generate(tab.prompt, fields, tab.output, script_ui.scripted_submit(
        app, "txt2img", request_from_form, lambda values: submit_txt2img(app, values)))
    script_ui.wire_script_controls(tab.scripts)
    controlnet_ui.wire_controlnet_units(app, tab.controlnet)
    controlnet_ui.wire_hires_option(tab.controlnet, fields["enable_hr"])
    generation.wire_paste(tab.prompt, fields, tab.output, lambda text: paste_updates(app, tab, bar, text),
                          paste_outputs(tab, bar))
    generation.wire_generation_controls(app, fields, tab.prompt, tab.seeds, tab.output)
    extra_networks.wire_extra_networks(app, tab.networks, tab.prompt, fields, tab.output, bar)
    tab.swap_size.click(lambda width, height: (height, width), inputs=[fields["width"], fields["height"]],
                        outputs=[fields["width"], fields["height"]], show_progress="hidden")
