"""Send-to: an image and its infotext from one tab (a gallery, PNG Info) into another tab's input.

A1111's buttons under each gallery (🖼️ img2img, 🎨 inpaint, 📐 extras) and PNG Info's "Send to ..." buttons.
Each receiving tab provides a `SendTarget`: the components it updates and a function that fills them.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.engine.image_codec import read_image_info
from modules.ui.results import GalleryInfo

# target id → button label (A1111's icons, with the target named so the button says what it does)
GALLERY_SEND_TARGETS = {"img2img": "🖼️ img2img", "inpaint": "🎨 inpaint", "outpaint": "↔️ outpaint",
                        "extras": "📐 extras"}
PNGINFO_SEND_TARGETS = {"txt2img": "Send to txt2img", "img2img": "Send to img2img", "inpaint": "Send to inpaint",
                        "outpaint": "Send to outpaint", "extras": "Send to extras"}
# hover text for the gallery buttons (set in the browser by elem_id suffix, see modules/ui/__init__.py)
SEND_TOOLTIPS = {
    "txt2img": "Send the generation parameters to the txt2img tab",
    "img2img": "Send the image and its generation parameters to the img2img tab",
    "inpaint": "Send the image and its generation parameters to img2img's Inpaint tab",
    "outpaint": "Send the image and its prompt to the Outpaint tab",
    "extras": "Send the image to the Extras tab (upscaling)",
}

Receive = Callable[[Image.Image | None, str], dict[Any, Any]]  # (image, infotext) → component updates


@dataclass
class SendTarget:
    outputs: list[Any]  # every component `receive` may update (the tab switch included)
    receive: Receive
    needs_image: bool = True  # False: the infotext alone is enough (txt2img)


def as_pil(value: Any) -> Image.Image | None:
    """A gallery/image component value (file path, numpy array or PIL image) → a loaded PIL image."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    with Image.open(Path(value)) as image:  # a cached PNG: its text chunks carry the infotext
        image.load()
        return image.copy()


def gallery_selection(gallery_value: Sequence[Any] | None, info: GalleryInfo | None) -> tuple[Image.Image | None, str]:
    """The selected gallery image (the first when none is selected, as A1111) and its infotext."""
    if not gallery_value:
        return None, ""
    index = info.selected if info is not None and 0 <= info.selected < len(gallery_value) else 0
    item = gallery_value[index]
    image = as_pil(item[0] if isinstance(item, (tuple, list)) else item)
    infotext = info.infotext(index) if info is not None else ""
    if not infotext and image is not None:
        infotext = read_image_info(image)[0] or ""
    return image, infotext


def wire_send_buttons(buttons: Mapping[str, gr.Button], inputs: list[Any],
                      pick: Callable[..., tuple[Image.Image | None, str]], targets: Mapping[str, SendTarget]) -> None:
    """Each button: `pick(*inputs)` → (image, infotext) → the target's updates. Targets not built are skipped."""
    for target_id, button in buttons.items():
        target = targets.get(target_id)
        if target is None:
            continue

        def send(*values: Any, target: SendTarget = target) -> dict[Any, Any]:
            image, infotext = pick(*values)
            if image is None and target.needs_image:
                gr.Warning("No image to send: generate or upload one first")
                return {}
            return target.receive(image, infotext)

        button.click(send, inputs=inputs, outputs=target.outputs, show_progress="hidden")
