"""The Extras tab: upscale one image or a batch with one or two upscalers (A1111 layout).

`build_extras` lays it out, `wire_extras` connects the thin handlers (logic in extras_form), `send_target` lets
other tabs' send-to buttons put an image into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from modules.extras import MAX_FACTOR, MIN_FACTOR, RESIZE_BY, RESIZE_TO
from modules.ui.extras_form import BATCH, SINGLE, default_form_values, submit_extras, upscaler_choices
from modules.ui.forms import NamedComponents
from modules.ui.send_to import SendTarget
from modules.ui.topbar import APP_ERRORS

if TYPE_CHECKING:
    from modules.app import App

EXTRAS_TAB_ID = "extras"
SINGLE_TAB_ID = "single_image"
MAX_TARGET_SIDE = 8192


@dataclass
class ExtrasTab:
    fields: NamedComponents  # every value that goes into the request, by extras_form name
    image: gr.Image  # the single-image input: other tabs send images here
    source_tabs: gr.Tabs
    single_tab: gr.Tab
    batch_tab: gr.Tab
    scale_by_tab: gr.Tab
    scale_to_tab: gr.Tab
    refresh: gr.Button
    generate: gr.Button
    gallery: gr.Gallery
    info: gr.HTML


def build_extras(app: App) -> ExtrasTab:
    defaults = default_form_values()
    choices = upscaler_choices(app)
    fields = NamedComponents()
    fields.add("source", gr.State(defaults["source"]))
    fields.add("resize_mode", gr.State(defaults["resize_mode"]))
    with gr.Row(equal_height=False):
        with gr.Column():
            with gr.Tabs(elem_id="mode_extras") as source_tabs:
                with gr.Tab("Single Image", id=SINGLE_TAB_ID, elem_id="extras_single_tab") as single_tab:
                    # type=pil keeps the file's text chunks (its generation parameters are carried into the output)
                    image = fields.add("image", gr.Image(label="Source", type="pil", image_mode=None,
                                                         sources=["upload", "clipboard"], elem_id="extras_image",
                                                         height=400))
                with gr.Tab("Batch Process", id="batch_process", elem_id="extras_batch_process_tab") as batch_tab:
                    fields.add("batch_files", gr.File(label="Images", file_count="multiple", file_types=["image"],
                                                      type="filepath", elem_id="extras_image_batch"))
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", id="scale_by", elem_id="extras_scale_by_tab") as scale_by_tab:
                    fields.add("upscaling_resize", gr.Slider(MIN_FACTOR, MAX_FACTOR, step=0.05,
                                                             value=defaults["upscaling_resize"], label="Resize",
                                                             elem_id="extras_upscaling_resize"))
                with gr.Tab("Scale to", id="scale_to", elem_id="extras_scale_to_tab") as scale_to_tab:
                    with gr.Row():
                        fields.add("upscaling_resize_w", gr.Number(defaults["upscaling_resize_w"], label="Width",
                                                                   precision=0, minimum=1, maximum=MAX_TARGET_SIDE,
                                                                   elem_id="extras_upscaling_resize_w"))
                        fields.add("upscaling_resize_h", gr.Number(defaults["upscaling_resize_h"], label="Height",
                                                                   precision=0, minimum=1, maximum=MAX_TARGET_SIDE,
                                                                   elem_id="extras_upscaling_resize_h"))
                        fields.add("upscaling_crop", gr.Checkbox(defaults["upscaling_crop"], label="Crop to fit",
                                                                 elem_id="extras_upscaling_crop"))
            with gr.Row():
                fields.add("upscaler_1", gr.Dropdown(choices, value=defaults["upscaler_1"], label="Upscaler 1",
                                                     elem_id="extras_upscaler_1"))
                refresh = gr.Button("🔄", elem_id="extras_refresh_upscalers", scale=0, min_width=40)
            with gr.Row():
                fields.add("upscaler_2", gr.Dropdown(choices, value=defaults["upscaler_2"], label="Upscaler 2",
                                                     elem_id="extras_upscaler_2"))
                fields.add("upscaler_2_visibility", gr.Slider(0.0, 1.0, step=0.001,
                                                              value=defaults["upscaler_2_visibility"],
                                                              label="Upscaler 2 visibility",
                                                              elem_id="extras_upscaler_2_visibility"))
            generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            gallery = gr.Gallery(label="Result", format="png", columns=3, object_fit="contain", height=512,
                                 interactive=False, elem_id="extras_gallery")
            info = gr.HTML("", elem_id="html_info_extras")
    return ExtrasTab(fields, image, source_tabs, single_tab, batch_tab, scale_by_tab, scale_to_tab, refresh, generate,
                     gallery, info)


def wire_extras(app: App, tab: ExtrasTab) -> None:
    fields = tab.fields

    def generate(data: dict[Any, Any]) -> dict[Any, Any]:
        try:
            output = submit_extras(app, fields.values(data))
        except APP_ERRORS as error:
            raise gr.Error(str(error)) from None
        for note in output.notes:
            gr.Warning(note)
        return {tab.gallery: output.images, tab.info: output.html_info}

    def refresh() -> tuple[gr.Dropdown, gr.Dropdown]:
        try:
            names = [entry.name for entry in app.upscalers.refresh()]
        except OSError as error:
            gr.Warning(f"Could not rescan the upscaler folder: {error}")
            names = app.upscalers.names
        return gr.Dropdown(choices=names), gr.Dropdown(choices=names)

    tab.generate.click(generate, inputs=fields.inputs, outputs=[tab.gallery, tab.info],
                       concurrency_limit=None)  # the app's job worker orders the work
    tab.refresh.click(refresh, outputs=[fields["upscaler_1"], fields["upscaler_2"]], show_progress="hidden")
    tab.single_tab.select(lambda: SINGLE, outputs=fields["source"], show_progress="hidden")
    tab.batch_tab.select(lambda: BATCH, outputs=fields["source"], show_progress="hidden")
    tab.scale_by_tab.select(lambda: RESIZE_BY, outputs=fields["resize_mode"], show_progress="hidden")
    tab.scale_to_tab.select(lambda: RESIZE_TO, outputs=fields["resize_mode"], show_progress="hidden")


def send_target(tab: ExtrasTab, tabs: gr.Tabs) -> SendTarget:
    """Send-to: the image goes into Single Image, and the Extras tab is shown (the infotext is not needed)."""
    def receive(image: Image.Image | None, _infotext: str) -> dict[Any, Any]:
        return {tab.image: image, tab.source_tabs: gr.Tabs(selected=SINGLE_TAB_ID), tab.fields["source"]: SINGLE,
                tabs: gr.Tabs(selected=EXTRAS_TAB_ID)}

    return SendTarget(outputs=[tab.image, tab.source_tabs, tab.fields["source"], tabs], receive=receive)
