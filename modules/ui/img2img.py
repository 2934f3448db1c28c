"""The img2img tab (A1111's layout): mode sub-tabs img2img / Sketch / Inpaint / Inpaint upload / Batch, resize and
inpaint options, and the sampling controls and output panel shared with txt2img (modules/ui/generation.py).

Form values → requests in img2img_form (gradio-free); batch runs in modules/img2img_batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from modules.engine.request import INPAINT_AREAS, MASK_MODES, MASKED_CONTENT, RESIZE_MODES
from modules.img2img_batch import BatchRun, INFOTEXT_FIELDS, server_folders_allowed
from modules.ui import controlnet as controlnet_ui
from modules.ui import extra_networks, generation
from modules.ui import scripts as script_ui
from modules.ui.forms import NamedComponents
from modules.ui.generation import OutputPanel, PromptArea, SeedControls
from modules.ui.img2img_form import (EDITOR_MODES, INPAINT_MODES, MODE_IMAGE_FIELDS, MODES, default_img2img_values,
                                     editor_value, mode_image, pasted_for_img2img, resize_by_text, size_from_image,
                                     submit_img2img)
from modules.ui.img2img_form import request_from_img2img_form
from modules.ui.topbar import TopBar
from modules.ui.txt2img_form import native_size

if TYPE_CHECKING:
    from modules.app import App

PREFIX = "img2img"
SEND_TARGETS = {"img2img": "🖼️ img2img", "inpaint": "🎨 inpaint", "outpaint": "↔️ outpaint", "extras": "📐 extras"}
SKETCH_COLOURS = ["#000000", "#ffffff", "#e53935", "#fb8c00", "#fdd835", "#43a047", "#1e88e5", "#8e24aa"]
MASK_COLOUR = ("#ffffff", 0.8)  # translucent, so the image shows through the mask
FOLDERS_REFUSED = "refused here: the WebUI is listening on the network or shared (upload the images instead)"


@dataclass
class Img2ImgTab:
    fields: NamedComponents  # every value that goes into the request, by img2img_form name
    prompt: PromptArea
    seeds: SeedControls
    mode_tabs: gr.Tabs
    modes: dict[str, gr.Tab]  # mode id → its sub-tab
    size_tabs: dict[str, gr.Tab]  # "to" / "by"
    size_from_image: gr.Button
    scale_note: gr.HTML
    inpaint_options: gr.Column
    output: OutputPanel
    networks: extra_networks.ExtraNetworksPanel | None = None  # 🎴 extra networks cards (issue 5)
    scripts: script_ui.ScriptControls | None = None  # Script dropdown and script inputs (issue 7)
    controlnet: controlnet_ui.ControlNetPanel | None = None  # ControlNet units (issue 6)


# --------------------------------------------------------------------------------------------- handlers


def paste_updates(app: App, tab: Img2ImgTab, bar: TopBar, text: str) -> dict[Any, Any]:
    pasted = pasted_for_img2img(app, text)
    generation.warn_all(pasted.warnings)
    return {**tab.fields.updates(pasted.form), **generation.topbar_paste_updates(bar, pasted),
            **controlnet_ui.paste_slider_updates(tab.controlnet, pasted.form)}


def paste_outputs(tab: Img2ImgTab, bar: TopBar) -> list[Any]:
    return [*tab.fields.outputs, *generation.topbar_paste_outputs(bar)]


def mode_updates(tab: Img2ImgTab, mode: str) -> dict[Any, Any]:
    """Select a mode: the sub-tab, the mode value, and the inpaint options shown only for inpaint modes."""
    return {tab.mode_tabs: gr.Tabs(selected=mode), tab.fields["mode"]: mode,
            tab.inpaint_options: gr.Column(visible=mode in INPAINT_MODES)}


def receive_updates(app: App, tab: Img2ImgTab, bar: TopBar, mode: str, image: Image.Image | None,
                    infotext: str) -> dict[Any, Any]:
    """Send-to: the image into `mode`'s input, the infotext into the form; the size follows the image."""
    updates = paste_updates(app, tab, bar, infotext) if infotext else {}
    value = editor_value(image) if mode in EDITOR_MODES else image
    updates[tab.fields[MODE_IMAGE_FIELDS[mode]]] = value
    size = size_from_image(image)
    if size is not None and app.settings.send_size:
        updates.update({tab.fields["width"]: size[0], tab.fields["height"]: size[1]})
    return {**updates, **mode_updates(tab, mode)}


def receive_outputs(tab: Img2ImgTab, bar: TopBar) -> list[Any]:
    return [*paste_outputs(tab, bar), tab.mode_tabs, tab.inpaint_options]


# ----------------------------------------------------------------------------------------------- layout


def _image_tabs(fields: NamedComponents, folders_note: str | None) -> tuple[gr.Tabs, dict[str, gr.Tab]]:
    modes: dict[str, gr.Tab] = {}
    with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
        with gr.Tab(MODES["img2img"], id="img2img", elem_id="img2img_img2img_tab") as modes["img2img"]:
            fields.add("init_image", gr.Image(label="Image for img2img", type="pil", image_mode="RGBA", format="png",
                                              sources=["upload", "clipboard"], elem_id="img2img_image", height=480))
        with gr.Tab(MODES["sketch"], id="sketch", elem_id="img2img_img2img_sketch_tab") as modes["sketch"]:
            fields.add("sketch", gr.ImageEditor(
                label="Image for img2img: draw on it with the brush", type="pil", image_mode="RGBA", format="png",
                sources=["upload", "clipboard"], brush=gr.Brush(default_size=6, colors=SKETCH_COLOURS),
                layers=False, elem_id="img2img_sketch", height=480))
        with gr.Tab(MODES["inpaint"], id="inpaint", elem_id="img2img_inpaint_tab") as modes["inpaint"]:
            fields.add("inpaint", gr.ImageEditor(
                label="Image for inpainting: paint the mask (the part to repaint) with the brush", type="pil",
                image_mode="RGBA", format="png", sources=["upload", "clipboard"], layers=False,
                brush=gr.Brush(default_size=12, colors=[MASK_COLOUR], default_color=MASK_COLOUR, color_mode="fixed"),
                elem_id="img2img_inpaint_editor", height=480))
        with gr.Tab(MODES["inpaint_upload"], id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as modes[
                "inpaint_upload"]:
            fields.add("inpaint_upload_image", gr.Image(label="Image for img2img", type="pil", image_mode="RGBA",
                                                        format="png", sources=["upload", "clipboard"],
                                                        elem_id="img_inpaint_base", height=400))
            fields.add("inpaint_upload_mask", gr.Image(label="Mask (white = repaint)", type="pil", image_mode=None,
                                                       format="png", sources=["upload", "clipboard"],
                                                       elem_id="img_inpaint_mask", height=400))
        with gr.Tab(MODES["batch"], id="batch", elem_id="img2img_batch_tab") as modes["batch"]:
            _batch_tab(fields, folders_note)
    return mode_tabs, modes


def _batch_tab(fields: NamedComponents, folders_note: str | None) -> None:
    fields.add("batch_files", gr.File(label="Images", file_count="multiple", file_types=["image"],
                                      elem_id="img2img_batch_upload"))
    gr.Markdown("Or process folders on the server's machine (only while the WebUI is not listening on the network "
                "or shared). Masks are matched to images by file name; with an output directory the results are "
                "saved there instead of outputs/img2img-images.")
    fields.add("batch_input_dir", gr.Textbox(label="Input directory", info=folders_note,
                                             elem_id="img2img_batch_input_dir"))
    fields.add("batch_output_dir", gr.Textbox(label="Output directory", info=folders_note,
                                              elem_id="img2img_batch_output_dir"))
    fields.add("batch_mask_dir", gr.Textbox(label="Inpaint batch mask directory (required for inpaint batch)",
                                            info=folders_note, elem_id="img2img_batch_inpaint_mask_dir"))
    with gr.Accordion("PNG info", open=False):
        fields.add("batch_use_infotext", gr.Checkbox(False, label="Append png info to prompts",
                                                     elem_id="img2img_batch_use_png_info"))
        fields.add("batch_infotext_fields", gr.CheckboxGroup(list(INFOTEXT_FIELDS), label="Parameters to take from "
                                                             "png info", elem_id="img2img_batch_png_info_props"))


def _inpaint_options(fields: NamedComponents, defaults: dict[str, Any]) -> gr.Column:
    with gr.Column(visible=False, elem_id="img2img_inpaint_controls") as column:
        with gr.Row():
            fields.add("mask_blur", gr.Slider(0, 64, value=defaults["mask_blur"], step=1, label="Mask blur",
                                              elem_id="img2img_mask_blur"))
            fields.add("mask_mode", gr.Radio(list(MASK_MODES), value=defaults["mask_mode"], label="Mask mode",
                                             elem_id="img2img_mask_mode"))
        fields.add("masked_content", gr.Radio(list(MASKED_CONTENT), value=defaults["masked_content"],
                                              label="Masked content", elem_id="img2img_inpainting_fill"))
        with gr.Row():
            fields.add("inpaint_area", gr.Radio(list(INPAINT_AREAS), value=defaults["inpaint_area"],
                                                label="Inpaint area", elem_id="img2img_inpaint_full_res"))
            fields.add("inpaint_padding", gr.Slider(0, 256, value=defaults["inpaint_padding"], step=4,
                                                    label="Only masked padding, pixels",
                                                    elem_id="img2img_inpaint_full_res_padding"))
    return column


def _size_tabs(fields: NamedComponents, defaults: dict[str, Any]) -> tuple[dict[str, gr.Tab], gr.Button, gr.HTML]:
    tabs: dict[str, gr.Tab] = {}
    with gr.Tabs(elem_id="img2img_tabs_resize"):
        with gr.Tab("Resize to", id="to", elem_id="img2img_tab_resize_to") as tabs["to"]:
            with gr.Row(equal_height=True):
                with gr.Column(scale=4):
                    generation.build_size_sliders(fields, PREFIX, defaults)
                from_image = gr.Button("📐", scale=0, min_width=40, elem_id="img2img_detect_image_size_btn")
        with gr.Tab("Resize by", id="by", elem_id="img2img_tab_resize_by") as tabs["by"]:
            fields.add("scale_by", gr.Slider(0.05, 4, value=defaults["scale_by"], step=0.05, label="Scale",
                                             elem_id="img2img_scale"))
            note = gr.HTML(resize_by_text(None, defaults["scale_by"]), elem_id="img2img_scale_resolution_preview")
    return tabs, from_image, note


def build_img2img(app: App) -> Img2ImgTab:
    fields = NamedComponents()
    defaults = default_img2img_values(native_size(app))
    fields.add("mode", gr.State(defaults["mode"]))
    fields.add("size_source", gr.State(defaults["size_source"]))
    prompt = generation.build_prompt_area(app, fields, PREFIX, defaults["steps"], extra_networks=True)
    networks = extra_networks.build_extra_networks(PREFIX)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            folders_note = None if server_folders_allowed(app.options) else FOLDERS_REFUSED
            mode_tabs, modes = _image_tabs(fields, folders_note)
            fields.add("resize_mode", gr.Radio(list(RESIZE_MODES), value=defaults["resize_mode"], label="Resize mode",
                                               elem_id="resize_mode"))
            inpaint_options = _inpaint_options(fields, defaults)
            generation.build_sampler_controls(fields, PREFIX, defaults)
            size_tabs, from_image, scale_note = _size_tabs(fields, defaults)
            with gr.Row():
                generation.build_batch_controls(fields, PREFIX, defaults)
            generation.build_cfg_scale(fields, PREFIX, defaults)
            fields.add("denoising_strength", gr.Slider(0, 1, value=defaults["denoising_strength"], step=0.01,
                                                       label="Denoising strength", elem_id="img2img_denoising_strength"))
            seeds = generation.build_seed_controls(fields, PREFIX, defaults)
            controlnet = controlnet_ui.build_controlnet_units(app, fields, PREFIX, img2img=True)
            scripts = script_ui.build_script_controls(app, PREFIX, fields)
        with gr.Column(scale=1):
            output = generation.build_output_panel(PREFIX, SEND_TARGETS)
    return Img2ImgTab(fields, prompt, seeds, mode_tabs, modes, size_tabs, from_image, scale_note, inpaint_options,
                      output, networks=networks, scripts=scripts, controlnet=controlnet)


# ------------------------------------------------------------------------------------------------ events


def wire_img2img(app: App, tab: Img2ImgTab, bar: TopBar) -> None:
    fields = tab.fields

    def submit(values: dict[str, Any]) -> Any:
        submitted = submit_img2img(app, values)
        if isinstance(submitted, BatchRun):
            generation.warn_all(submitted.warnings)
        return submitted

    def scale_note(data: dict[Any, Any]) -> str:
        values = fields.values(data)
        return resize_by_text(mode_image(values), float(values.get("scale_by") or 1))

    def detect_size(data: dict[Any, Any]) -> dict[Any, Any]:
        size = size_from_image(mode_image(fields.values(data)))
        if size is None:
            gr.Warning("No image to take the size from: upload one first")
            return {}
        return {fields["width"]: size[0], fields["height"]: size[1]}

    generation.wire_generate(tab.prompt, fields, tab.output, script_ui.scripted_submit(
        app, PREFIX, lambda values: request_from_img2img_form(
            values, noise_multiplier=app.settings.initial_noise_multiplier), submit))
    script_ui.wire_script_controls(tab.scripts)
    controlnet_ui.wire_controlnet_units(app, tab.controlnet, fallback_image=fields["init_image"])
    generation.wire_paste(tab.prompt, fields, tab.output, lambda text: paste_updates(app, tab, bar, text),
                          paste_outputs(tab, bar))
    generation.wire_generation_controls(app, fields, tab.prompt, tab.seeds, tab.output)
    extra_networks.wire_extra_networks(app, tab.networks, tab.prompt, fields, tab.output, bar)
    for mode, mode_tab in tab.modes.items():
        mode_tab.select(lambda mode=mode: mode_updates(tab, mode), outputs=[fields["mode"], tab.mode_tabs,
                        tab.inpaint_options], show_progress="hidden")
    for source, size_tab in tab.size_tabs.items():
        size_tab.select(lambda source=source: source, outputs=fields["size_source"], show_progress="hidden")
    image_inputs = {fields[name] for name in (*MODE_IMAGE_FIELDS.values(), "mode", "scale_by")}
    for trigger in (fields["scale_by"].change, tab.size_tabs["by"].select,
                    *(fields[name].upload for name in MODE_IMAGE_FIELDS.values())):
        trigger(scale_note, inputs=image_inputs, outputs=tab.scale_note, show_progress="hidden")
    tab.size_from_image.click(detect_size, inputs=image_inputs, outputs=[fields["width"], fields["height"]])


__all__ = ["Img2ImgTab", "build_img2img", "wire_img2img", "receive_updates", "receive_outputs"]
