"""The Outpaint tab's form as named values (defaults, → GenerationRequest) and the helpers behind its buttons.

No gradio here. The canvas, its pre-fill and the mask come from modules/engine/outpaint.py; the request is an
inpaint request on that canvas, so the original pixels outside the overlap seam stay exact.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.engine.image_codec import read_image_info
from modules.engine.infotext import parse_infotext
from modules.engine.outpaint import (DEFAULT_OUTPAINT_DENOISING, OUTPAINT_DIRECTIONS, OUTPAINT_FILLS, OutpaintSpec,
                                     canvas_layout, outpaint_request, spec_for_aspect)
from modules.engine.request import GenerationRequest, RequestError
from modules.jobs import Job
from modules.ui.img2img_form import flatten
from modules.ui.txt2img_form import default_form_values, request_from_form

if TYPE_CHECKING:
    from modules.app import App

SIDE_STEP = 8  # the side sliders' step: the canvas grows in latent cells
MAX_SIDE_SLIDER = 512
# the txt2img fields the Outpaint tab has too (the size comes from the canvas, hires does not apply)
SHARED_FIELDS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "n_iter",
                 "batch_size", "seed", "show_extra", "subseed", "subseed_strength", "seed_resize_from_w",
                 "seed_resize_from_h")
_RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:[:/x×]\s*(\d+(?:\.\d+)?))?\s*$")


def default_outpaint_values() -> dict[str, Any]:
    spec = OutpaintSpec()
    shared = {name: value for name, value in default_form_values().items() if name in SHARED_FIELDS}
    return {**shared, "image": None, **{side: 0 for side in OUTPAINT_DIRECTIONS}, "aspect_ratio": "16:9",
            "fill": spec.fill, "overlap": spec.overlap, "mask_blur": spec.mask_blur,
            "denoising_strength": DEFAULT_OUTPAINT_DENOISING}


def spec_from_form(values: Mapping[str, Any]) -> OutpaintSpec:
    try:
        sides = {side: int(values.get(side) or 0) for side in OUTPAINT_DIRECTIONS}
        return OutpaintSpec(**sides, fill=str(values["fill"]), overlap=int(values["overlap"]),
                            mask_blur=int(values["mask_blur"]))
    except (TypeError, ValueError, KeyError) as error:
        raise RequestError(f"outpaint settings are not numbers: {error}") from None


def input_image(values: Mapping[str, Any]) -> Image.Image:
    image = values.get("image")
    if image is None:
        raise RequestError("Outpaint: upload an image first (or send one here from a gallery)")
    return flatten(image)


def request_from_outpaint_form(values: Mapping[str, Any], *, noise_multiplier: float = 1.0) -> GenerationRequest:
    """Form values → the inpaint request on the pre-filled, enlarged canvas (its size is the request size)."""
    image = input_image(values)
    # width/height are replaced by the canvas size; request_from_form only needs valid placeholders
    base = request_from_form({**values, "enable_hr": False, "width": image.width, "height": image.height})
    request = outpaint_request(base, image, spec_from_form(values),
                               denoising_strength=float(values["denoising_strength"]))
    request.img2img.initial_noise_multiplier = noise_multiplier
    return request


def parse_aspect_ratio(text: str) -> float:
    """'16:9', '16/9', '16x9' or '1.78' → width / height."""
    match = _RATIO_RE.match(text or "")
    if match is None:
        raise RequestError(f"aspect ratio must look like 16:9 or 1.78, got {text!r}")
    width, height = float(match.group(1)), float(match.group(2) or 1)
    if width <= 0 or height <= 0:
        raise RequestError(f"aspect ratio must be positive, got {text!r}")
    return width / height


def sides_for_aspect(image: Image.Image | None, text: str, values: Mapping[str, Any]) -> dict[str, int]:
    """The four side sliders that bring the image to the ratio, each rounded to the slider step."""
    if image is None:
        raise RequestError("Outpaint: upload an image first, then set the aspect ratio")
    spec = spec_for_aspect(image.width, image.height, parse_aspect_ratio(text), fill=str(values.get("fill", "edge")))
    # nearest multiple of 8: int(x / 8 + 0.5) · 8
    return {side: int(pixels / SIDE_STEP + 0.5) * SIDE_STEP for side, pixels in zip(OUTPAINT_DIRECTIONS, spec.sides)}


def canvas_text(values: Mapping[str, Any]) -> str:
    """'64x64 → 128x64' under the sliders, or why it cannot be done."""
    image = values.get("image")
    if image is None:
        return "no image selected"
    try:
        layout = canvas_layout(image.width, image.height, spec_from_form(values))
    except RequestError as error:
        return f"{image.width}x{image.height}: {error}"
    return f"canvas: from {image.width}x{image.height} to {layout.width}x{layout.height}"


def prompts_from_image(image: Image.Image | None) -> dict[str, str]:
    """The prompt and negative prompt of the image's infotext (an uploaded render), or nothing."""
    infotext = read_image_info(image)[0] if image is not None else None
    if not infotext:
        return {}
    parsed = parse_infotext(infotext, defaults=False)
    return {"prompt": parsed["Prompt"], "negative_prompt": parsed["Negative prompt"]}


def submit_outpaint(app: App, values: dict[str, Any]) -> Job:
    app.models.model  # noqa: B018 -- the property raises NoCheckpointError (with instructions) before queueing
    return app.submit(request_from_outpaint_form(values, noise_multiplier=app.settings.initial_noise_multiplier))


__all__ = ["OUTPAINT_FILLS", "default_outpaint_values", "request_from_outpaint_form", "sides_for_aspect",
           "canvas_text", "prompts_from_image", "submit_outpaint", "spec_from_form", "parse_aspect_ratio"]
