"""The Outpaint tab: extend the canvas left / right / up / down (or to an aspect ratio), pre-fill the new area, and
inpaint it; the input (before) sits beside the result (after), and "Keep extending" puts the result back as input.

Form values → request in outpaint_form (gradio-free); prompt, sampling, seed and output panel shared with txt2img.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from modules.engine.outpaint import MAX_MASK_BLUR, MAX_OVERLAP, OUTPAINT_DIRECTIONS, OUTPAINT_FILLS
from modules.engine.request import RequestError
from modules.ui import generation
from modules.ui.forms import NamedComponents
from modules.ui.generation import OutputPanel, PromptArea, SeedControls
from modules.ui.outpaint_form import (MAX_SIDE_SLIDER, SIDE_STEP, canvas_text, default_outpaint_values,
                                      prompts_from_image, sides_for_aspect, submit_outpaint)
from modules.ui.txt2img_form import pasted_for_txt2img

if TYPE_CHECKING:
    from modules.app import App

PREFIX = "outpaint"
OUTPAINT_TAB_ID = "outpaint"
# "outpaint" first: sending the result to this tab again is "keep extending"
SEND_TARGETS = {"outpaint": "➕ Keep extending", "img2img": "🖼️ img2img", "inpaint": "🎨 inpaint",
                "extras": "📐 extras"}
FILL_LABELS = {"edge": "edge (stretch the border)", "blur": "blur (blurred border colours)",
               "noise": "noise (around the border colour)"}
CANVAS_INPUTS = ("image", *OUTPAINT_DIRECTIONS, "fill", "overlap", "mask_blur")  # what the canvas note reads


@dataclass
class OutpaintTab:
    fields: NamedComponents  # every value that goes into the request, by outpaint_form name
    prompt: PromptArea
    seeds: SeedControls
    fit_aspect: gr.Button
    canvas_note: gr.HTML
    output: OutputPanel


# --------------------------------------------------------------------------------------------- handlers


def paste_updates(app: App, tab: OutpaintTab, text: str) -> dict[Any, Any]:
    """An infotext into the form: prompts, sampler, steps, CFG, seed (the canvas size is the tab's own)."""
    pasted = pasted_for_txt2img(app, text)
    generation.warn_all(pasted.warnings)
    return tab.fields.updates(pasted.form)


def receive_updates(app: App, tab: OutpaintTab, image: Image.Image | None, infotext: str) -> dict[Any, Any]:
    """Send-to (and Keep extending): the image becomes the input; its infotext fills the prompts."""
    updates = paste_updates(app, tab, infotext) if infotext else {}
    return {**updates, tab.fields["image"]: image}


def receive_outputs(tab: OutpaintTab) -> list[Any]:
    return tab.fields.outputs


# ----------------------------------------------------------------------------------------------- layout


def _canvas_controls(fields: NamedComponents, defaults: dict[str, Any]) -> tuple[gr.Button, gr.HTML]:
    with gr.Row():
        for side in OUTPAINT_DIRECTIONS:
            fields.add(side, gr.Slider(0, MAX_SIDE_SLIDER, value=defaults[side], step=SIDE_STEP,
                                       label=f"{side.capitalize()}, pixels", elem_id=f"outpaint_{side}"))
    with gr.Row(equal_height=True):
        fields.add("aspect_ratio", gr.Textbox(defaults["aspect_ratio"], label="Target aspect ratio (e.g. 16:9, 1.5)",
                                              elem_id="outpaint_aspect_ratio", scale=3))
        fit_aspect = gr.Button("Fit sides to ratio", elem_id="outpaint_fit_aspect", scale=1)
    note = gr.HTML(canvas_text(defaults), elem_id="outpaint_canvas_size")
    fields.add("fill", gr.Radio([(label, fill) for fill, label in FILL_LABELS.items() if fill in OUTPAINT_FILLS],
                                value=defaults["fill"], label="Pre-fill the new area with", elem_id="outpaint_fill"))
    with gr.Row():
        fields.add("overlap", gr.Slider(0, MAX_OVERLAP, value=defaults["overlap"], step=4,
                                        label="Overlap into the original, pixels", elem_id="outpaint_overlap"))
        fields.add("mask_blur", gr.Slider(0, MAX_MASK_BLUR, value=defaults["mask_blur"], step=1, label="Mask blur",
                                          elem_id="outpaint_mask_blur"))
    return fit_aspect, note


def build_outpaint(app: App) -> OutpaintTab:
    fields = NamedComponents()
    defaults = default_outpaint_values()
    prompt = generation.build_prompt_area(app, fields, PREFIX, defaults["steps"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            # image_mode=None keeps the file's text chunks and mode: its infotext pre-fills the prompt
            fields.add("image", gr.Image(label="Before (the image to extend)", type="pil", image_mode=None,
                                         format="png", sources=["upload", "clipboard"], elem_id="outpaint_image",
                                         height=360))
            fit_aspect, note = _canvas_controls(fields, defaults)
            fields.add("denoising_strength", gr.Slider(0, 1, value=defaults["denoising_strength"], step=0.01,
                                                       label="Denoising strength",
                                                       elem_id="outpaint_denoising_strength"))
            generation.build_sampler_controls(fields, PREFIX, defaults)
            with gr.Row():
                generation.build_batch_controls(fields, PREFIX, defaults)
            generation.build_cfg_scale(fields, PREFIX, defaults)
            seeds = generation.build_seed_controls(fields, PREFIX, defaults)
        with gr.Column(scale=1):
            output = generation.build_output_panel(PREFIX, SEND_TARGETS, gallery_label="After")
    return OutpaintTab(fields, prompt, seeds, fit_aspect, note, output)


# ------------------------------------------------------------------------------------------------ events


def wire_outpaint(app: App, tab: OutpaintTab) -> None:
    fields = tab.fields
    canvas_inputs = {fields[name] for name in CANVAS_INPUTS}

    def fit_aspect(data: dict[Any, Any]) -> dict[Any, Any]:
        values = fields.values(data)
        try:
            sides = sides_for_aspect(values["image"], values["aspect_ratio"], values)
        except RequestError as error:
            gr.Warning(str(error))
            return {}
        return {**fields.updates(sides), tab.canvas_note: canvas_text({**values, **sides})}

    def prefill_prompts(image: Image.Image | None) -> dict[Any, Any]:
        return fields.updates(prompts_from_image(image))

    generation.wire_generate(tab.prompt, fields, tab.output, lambda values: submit_outpaint(app, values))
    generation.wire_paste(tab.prompt, fields, tab.output, lambda text: paste_updates(app, tab, text),
                          fields.outputs)
    generation.wire_generation_controls(app, fields, tab.prompt, tab.seeds, tab.output)
    tab.fit_aspect.click(fit_aspect, inputs=canvas_inputs | {fields["aspect_ratio"]},
                         outputs=[*(fields[side] for side in OUTPAINT_DIRECTIONS), tab.canvas_note])
    fields["image"].upload(prefill_prompts, inputs=fields["image"], outputs=[fields["prompt"],
                           fields["negative_prompt"]], show_progress="hidden")
    for name in CANVAS_INPUTS:
        event = fields[name].release if isinstance(fields[name], gr.Slider) else fields[name].change
        event(lambda data: canvas_text(fields.values(data)), inputs=canvas_inputs, outputs=tab.canvas_note,
              show_progress="hidden")
