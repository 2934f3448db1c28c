"""The Extras tab as named values (→ ExtrasRequest) and the call behind its Generate button. No gradio here.

Field names follow A1111's extras API (`upscaling_resize`, `upscaler_1`, ...); `source` and `resize_mode` come from
the selected sub-tabs (Single image / Batch, Scale by / Scale to).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.engine.image_codec import DEFAULT_MAX_BYTES, ImageDecodeError, open_image_bytes
from modules.extras import RESIZE_BY, RESIZE_TO, ExtrasImage, ExtrasRequest, run_extras

if TYPE_CHECKING:
    from modules.app import App

SINGLE, BATCH = "single", "batch"
RESIZE_TABS = (RESIZE_BY, RESIZE_TO)  # sub-tab index → resize_mode


def default_form_values() -> dict[str, Any]:
    return {"source": SINGLE, "image": None, "batch_files": None, "resize_mode": RESIZE_BY, "upscaling_resize": 2.0,
            "upscaling_resize_w": 512, "upscaling_resize_h": 512, "upscaling_crop": True, "upscaler_1": "None",
            "upscaler_2": "None", "upscaler_2_visibility": 0.0}


@dataclass
class ExtrasOutput:
    images: list[Image.Image] = field(default_factory=list)
    html_info: str = ""
    notes: list[str] = field(default_factory=list)  # shown as warnings


def read_upload(path: str | Path) -> ExtrasImage:
    """An uploaded file → image, with the same limits as API images (size checked before decoding)."""
    path = Path(path)
    try:
        if path.stat().st_size > DEFAULT_MAX_BYTES:
            raise ImageDecodeError(f"file is larger than {DEFAULT_MAX_BYTES} bytes")
        return ExtrasImage(open_image_bytes(path.read_bytes()), path.name)
    except (ImageDecodeError, OSError) as error:
        raise ImageDecodeError(f"{path.name}: {error}") from None


def upload_paths(files: Iterable[Any] | None) -> list[str]:
    """gr.File values: paths (gradio ≥ 4) or objects with a `.name` path."""
    return [str(getattr(item, "name", item)) for item in files or () if item]


def images_from_form(values: Mapping[str, Any]) -> list[ExtrasImage]:
    if values.get("source", SINGLE) == BATCH:
        paths = upload_paths(values.get("batch_files"))
        if not paths:
            raise ValueError("Batch: upload one or more images first")
        return [read_upload(path) for path in paths]
    image = values.get("image")
    if image is None:
        raise ValueError("Upload an image first")
    return [ExtrasImage(image, "")]


def request_from_form(values: Mapping[str, Any], images: list[ExtrasImage]) -> ExtrasRequest:
    defaults = default_form_values()
    get = lambda name: defaults[name] if values.get(name) is None else values[name]  # noqa: E731
    return ExtrasRequest(
        images=images, resize_mode=int(get("resize_mode")), upscaling_resize=float(get("upscaling_resize")),
        upscaling_resize_w=int(get("upscaling_resize_w")), upscaling_resize_h=int(get("upscaling_resize_h")),
        upscaling_crop=bool(get("upscaling_crop")), upscaler_1=str(get("upscaler_1")),
        upscaler_2=str(get("upscaler_2")), upscaler_2_visibility=float(get("upscaler_2_visibility")), save=True)


def submit_extras(app: App, values: Mapping[str, Any]) -> ExtrasOutput:
    """The Generate button: form → request → the Extras job (saved to outputs/extras-images); ValueError if bad."""
    request = request_from_form(values, images_from_form(values))
    result = run_extras(app, request)
    notes = ["Upscaler 1 is None: the images are unchanged"] if request.upscaler_1 == "None" else []
    return ExtrasOutput(result.images, result.html_info, notes)


def upscaler_choices(app: App) -> list[str]:
    return app.upscalers.names
