"""The PNG Info tab: read the generation parameters (and other text chunks) of an image; send the image and its
parameters to txt2img, img2img, inpaint, outpaint or extras (the buttons are wired in modules/ui/__init__.py)."""
from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.engine.images import read_image_info
from modules.engine.infotext import parse_infotext
from modules.ui.send_to import PNGINFO_SEND_TARGETS


@dataclass
class PngInfoTab:
    image: gr.Image
    info: gr.HTML
    infotext: gr.State  # the raw parameters text of the image shown, "" when it has none
    send_buttons: dict[str, gr.Button]  # send-to target id → "Send to ..." button

    @property
    def send_inputs(self) -> list[Any]:
        """What a send button hands to `pick_for_sending`."""
        return [self.image, self.infotext]


def _section(title: str, body: str) -> str:
    return f'<div style="margin-bottom:1em"><p><b>{html.escape(title)}</b></p>{body}</div>'


def _table(rows: Mapping[str, Any]) -> str:
    cells = "".join(f'<tr><td style="padding-right:1em;vertical-align:top"><b>{html.escape(str(key))}</b></td>'
                    f'<td style="white-space:pre-wrap">{html.escape(str(value))}</td></tr>'
                    for key, value in rows.items())
    return f"<table>{cells}</table>"


def image_info_html(image: Image.Image | None) -> tuple[str, str]:
    """(HTML for the info panel, the infotext or ""): raw parameters, the parsed fields, then other text chunks."""
    if image is None:
        return "", ""
    infotext, items = read_image_info(image)
    parts = []
    if infotext:
        parts.append(_section("parameters", f'<p style="white-space:pre-wrap">{html.escape(infotext)}</p>'))
        parsed = parse_infotext(infotext, defaults=False)  # only what the image says, not A1111's fill-ins
        parts.append(_section("parsed", _table({k: v for k, v in parsed.items() if v not in ("", None)})))
    other = {key: value for key, value in items.items() if key != "parameters"}
    if other:
        parts.append(_section("other text", _table(other)))
    if not parts:
        parts.append("<p>No generation parameters or text found in this image.</p>")
    return "".join(parts), infotext or ""


def build_pnginfo() -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column():
            # type=pil hands over the opened file with its text chunks in .info; image_mode=None keeps its mode
            image = gr.Image(label="Source", type="pil", image_mode=None, sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=480)
        with gr.Column():
            info = gr.HTML("", elem_id="pnginfo_html")
            with gr.Row():
                buttons = {target: gr.Button(label, elem_id=f"pnginfo_send_{target}", min_width=100)
                           for target, label in PNGINFO_SEND_TARGETS.items()}
    return PngInfoTab(image, info, gr.State(""), buttons)


def pick_for_sending(image: Image.Image | None, infotext: str) -> tuple[Image.Image | None, str]:
    return image, infotext or ""


def wire_pnginfo(tab: PngInfoTab) -> None:
    def show(image: Image.Image | None) -> tuple[str, str]:
        try:
            return image_info_html(image)
        except (OSError, ValueError) as error:
            gr.Warning(f"Could not read the image's metadata: {error}")
            return "", ""

    tab.image.change(show, inputs=tab.image, outputs=[tab.info, tab.infotext], show_progress="hidden")
