"""The Gradio web UI: `build_ui(app)` assembles the top bar and the tabs and connects what crosses tabs.

Each tab module has `build_*` (layout) and `wire_*` (events); handlers call the App, nothing else holds state.
Send-to (gallery / PNG Info → another tab's input) crosses tabs, so it is connected here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from modules.ui import extras, img2img, outpaint, pnginfo, send_to, settings_tab, topbar, txt2img
from modules.ui import models_tab
from modules.ui import extensions_tab
from modules.ui.generation import OutputPanel
from modules.ui.send_to import SEND_TOOLTIPS, SendTarget

if TYPE_CHECKING:
    from modules.app import App

TITLE = "Stable Diffusion"
TXT2IMG_TAB_ID = "txt2img"
IMG2IMG_TAB_ID = "img2img"

# A1111's shortcut: Ctrl+Enter (⌘+Enter) in a prompt box presses that tab's Generate. Runs once on page load.
KEYBOARD_SHORTCUTS_JS = """() => {
  document.addEventListener('keydown', (event) => {
    const box = event.target.closest && event.target.closest('[id$="_prompt"], [id$="_negative_prompt"]');
    if (box && event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      const prefix = box.id.replace(/_(negative_)?prompt$/, '');
      event.preventDefault();
      document.querySelector('#' + prefix + '_generate')?.click();
    }
  });
}"""

# Hover text for the send-to buttons (gradio buttons have no tooltip); set when the pointer first reaches one.
TOOLTIPS_JS = """() => {
  const tips = %s;
  document.addEventListener('mouseover', (event) => {
    const button = event.target.closest && event.target.closest('button[id*="_send_"]');
    if (button && !button.title) {
      const target = button.id.split('_send_').pop().replace(/^to_/, '');
      if (tips[target]) button.title = tips[target];
    }
  });
}""" % json.dumps(SEND_TOOLTIPS)


@dataclass
class BuiltTabs:
    tabs: gr.Tabs
    txt2img: txt2img.Txt2ImgTab
    img2img: img2img.Img2ImgTab
    outpaint: outpaint.OutpaintTab
    extras: extras.ExtrasTab
    pnginfo: pnginfo.PngInfoTab


def build_ui(app: App) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        bar = topbar.build_topbar(app)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id=TXT2IMG_TAB_ID, elem_id="tab_txt2img"):
                txt2img_tab = txt2img.build_txt2img(app)
            with gr.Tab("img2img", id=IMG2IMG_TAB_ID, elem_id="tab_img2img"):
                img2img_tab = img2img.build_img2img(app)
            with gr.Tab("Outpaint", id=outpaint.OUTPAINT_TAB_ID, elem_id="tab_outpaint"):
                outpaint_tab = outpaint.build_outpaint(app)
            with gr.Tab("Extras", id=extras.EXTRAS_TAB_ID, elem_id="tab_extras"):
                extras_tab = extras.build_extras(app)
            with gr.Tab("Models", id=models_tab.MODELS_TAB_ID, elem_id="tab_models"):
                models = models_tab.build_models_tab(app)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo_tab = pnginfo.build_pnginfo()
            extensions_tab.build_extension_tabs(app)  # tabs added by extensions (issue 7)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings = settings_tab.build_settings(app)
            with gr.Tab("Extensions", id=extensions_tab.EXTENSIONS_TAB_ID, elem_id="tab_extensions"):
                extensions = extensions_tab.build_extensions_tab(app)

        topbar.wire_topbar(app, bar)
        txt2img.wire_txt2img(app, txt2img_tab, bar)
        img2img.wire_img2img(app, img2img_tab, bar)
        outpaint.wire_outpaint(app, outpaint_tab)
        settings_tab.wire_settings(app, settings)
        extensions_tab.wire_extensions_tab(app, extensions)
        extras.wire_extras(app, extras_tab)
        models_tab.wire_models_tab(app, models, bar)
        pnginfo.wire_pnginfo(pnginfo_tab)
        wire_send_to(app, bar, BuiltTabs(tabs, txt2img_tab, img2img_tab, outpaint_tab, extras_tab, pnginfo_tab))

        def on_page_load() -> dict[Any, Any]:
            # the page may open long after start-up: show the model and settings as they are now
            return {**topbar.topbar_values(app, bar), **settings_tab.settings_values(app, settings.fields)}

        blocks.load(None, js=KEYBOARD_SHORTCUTS_JS)
        blocks.load(None, js=TOOLTIPS_JS)
        blocks.load(on_page_load, outputs=[bar.checkpoint, bar.vae, bar.clip_skip, bar.status,
                                           *settings.fields.outputs], show_progress="hidden")
    return blocks


# ---------------------------------------------------------------------------------------------------- send-to


def send_targets(app: App, bar: topbar.TopBar, built: BuiltTabs) -> dict[str, SendTarget]:
    """Every tab that can receive an image (and its infotext), by send-to target id."""
    tabs = built.tabs

    def to_txt2img(_image: Image.Image | None, infotext: str) -> dict[Any, Any]:
        if not infotext:
            gr.Warning("This image has no generation parameters to send")
            return {}
        return {**txt2img.paste_updates(app, built.txt2img, bar, infotext), tabs: gr.Tabs(selected=TXT2IMG_TAB_ID)}

    def to_img2img(mode: str) -> SendTarget:
        def receive(image: Image.Image | None, infotext: str) -> dict[Any, Any]:
            return {**img2img.receive_updates(app, built.img2img, bar, mode, image, infotext),
                    tabs: gr.Tabs(selected=IMG2IMG_TAB_ID)}
        return SendTarget([*img2img.receive_outputs(built.img2img, bar), tabs], receive)

    def to_outpaint(image: Image.Image | None, infotext: str) -> dict[Any, Any]:
        return {**outpaint.receive_updates(app, built.outpaint, image, infotext),
                tabs: gr.Tabs(selected=outpaint.OUTPAINT_TAB_ID)}

    return {
        "txt2img": SendTarget([*txt2img.paste_outputs(built.txt2img, bar), tabs], to_txt2img, needs_image=False),
        "img2img": to_img2img("img2img"),
        "inpaint": to_img2img("inpaint"),
        "outpaint": SendTarget([*outpaint.receive_outputs(built.outpaint), tabs], to_outpaint),
        "extras": extras.send_target(built.extras, tabs),
    }


def wire_send_to(app: App, bar: topbar.TopBar, built: BuiltTabs) -> None:
    """The buttons under each gallery send its selected image; PNG Info's send the image it shows."""
    targets = send_targets(app, bar, built)
    panels: list[OutputPanel] = [built.txt2img.output, built.img2img.output, built.outpaint.output]
    for panel in panels:
        send_to.wire_send_buttons(panel.send_buttons, [panel.gallery, panel.gallery_info], send_to.gallery_selection,
                                  targets)
    send_to.wire_send_buttons(built.pnginfo.send_buttons, built.pnginfo.send_inputs, pnginfo.pick_for_sending, targets)


__all__ = ["build_ui"]
