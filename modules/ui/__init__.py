"""The Gradio web UI: `build_ui(app)` assembles the top bar and the tabs and connects what crosses tabs.

Each tab module has `build_*` (layout) and `wire_*` (events); handlers call the App, nothing else holds state.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.ui import pnginfo, settings_tab, topbar, txt2img

if TYPE_CHECKING:
    from modules.app import App

TITLE = "Stable Diffusion"
TXT2IMG_TAB_ID = "txt2img"

# A1111's shortcut: Ctrl+Enter (⌘+Enter) in a prompt box presses Generate. Runs once in the browser on page load.
KEYBOARD_SHORTCUTS_JS = """() => {
  document.addEventListener('keydown', (event) => {
    const inPrompt = event.target.closest && event.target.closest('#txt2img_prompt, #txt2img_negative_prompt');
    if (inPrompt && event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      document.querySelector('#txt2img_generate')?.click();
    }
  });
}"""


def build_ui(app: App) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        bar = topbar.build_topbar(app)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id=TXT2IMG_TAB_ID, elem_id="tab_txt2img"):
                txt2img_tab = txt2img.build_txt2img(app)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo_tab = pnginfo.build_pnginfo()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings = settings_tab.build_settings(app)

        topbar.wire_topbar(app, bar)
        txt2img.wire_txt2img(app, txt2img_tab, bar)
        settings_tab.wire_settings(app, settings)

        def send_to_txt2img(infotext: str) -> dict[Any, Any]:
            return {**txt2img.paste_updates(app, txt2img_tab, bar, infotext), tabs: gr.Tabs(selected=TXT2IMG_TAB_ID)}

        pnginfo.wire_pnginfo(pnginfo_tab, send_to_txt2img, [*txt2img.paste_outputs(txt2img_tab, bar), tabs])

        def on_page_load() -> dict[Any, Any]:
            # the page may open long after start-up: show the model and settings as they are now
            return {**topbar.topbar_values(app, bar), **settings_tab.settings_values(app, settings.fields)}

        blocks.load(None, js=KEYBOARD_SHORTCUTS_JS)
        blocks.load(on_page_load, outputs=[bar.checkpoint, bar.vae, bar.clip_skip, bar.status,
                                           *settings.fields.outputs], show_progress="hidden")
    return blocks


__all__ = ["build_ui"]
