"""The PNG Info tab: read the generation parameters (and other text chunks) of an image; send them to txt2img."""
from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.engine.images import read_image_info
from modules.engine.infotext import parse_infotext


@dataclass
class PngInfoTab:
    image: gr.Image
    info: gr.HTML
    infotext: gr.State  # the raw parameters text of the image shown, "" when it has none
    send_to_txt2img: gr.Button


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
            send = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
    return PngInfoTab(image, info, gr.State(""), send)


def wire_pnginfo(tab: PngInfoTab, send: Callable[[str], dict[Any, Any]], send_outputs: list[Any]) -> None:
    """`send(infotext)` returns the updates that fill txt2img (and switch to it); `send_outputs` are their targets."""
    def show(image: Image.Image | None) -> tuple[str, str]:
        try:
            return image_info_html(image)
        except (OSError, ValueError) as error:
            gr.Warning(f"Could not read the image's metadata: {error}")
            return "", ""

    def send_to_txt2img(infotext: str) -> dict[Any, Any]:
        if not infotext:
            gr.Warning("This image has no generation parameters to send")
            return {}
        return send(infotext)

    tab.image.change(show, inputs=tab.image, outputs=[tab.info, tab.infotext], show_progress="hidden")
    tab.send_to_txt2img.click(send_to_txt2img, inputs=tab.infotext, outputs=send_outputs)
