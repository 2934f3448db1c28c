"""The img2img form as named values (defaults, → GenerationRequest) for its modes: img2img, sketch, inpaint,
inpaint upload and batch. Also the mask an ImageEditor value paints, and the "Resize by" size.

No gradio here: the tab module builds components with these names, and tests call these functions directly.
An ImageEditor value is the dict gradio passes: {"background": image, "layers": [images], "composite": image}.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules import img2img_batch
from modules.engine.infotext import parse_infotext, request_fields_from_infotext
from modules.engine.masking import binary_mask
from modules.engine.request import (INPAINT_AREAS, MASK_MODES, MASKED_CONTENT, MAX_SIZE, MIN_SIZE, RESIZE_MODES,
                                    GenerationRequest, Img2ImgOptions, InpaintOptions, RequestError)
from modules.img2img_batch import BatchRun
from modules.jobs import Job
from modules.ui.paste import PastedInfotext
from modules.ui.txt2img_form import default_form_values, pasted_for_txt2img, request_from_form

if TYPE_CHECKING:
    from modules.app import App

# mode (sub-tab) id → label; the id is also Img2ImgOptions.source_label with "_" read as a space
MODES = {"img2img": "img2img", "sketch": "Sketch", "inpaint": "Inpaint", "inpaint_upload": "Inpaint upload",
         "batch": "Batch"}
INPAINT_MODES = ("inpaint", "inpaint_upload", "batch")  # the modes that show the inpaint options
EDITOR_MODES = ("sketch", "inpaint")  # their image field holds an ImageEditor value
# the field that holds each single-image mode's input image
MODE_IMAGE_FIELDS = {"img2img": "init_image", "sketch": "sketch", "inpaint": "inpaint",
                     "inpaint_upload": "inpaint_upload_image"}
# A painted pixel counts as mask from this alpha on: a translucent brush still masks, anti-aliasing specks do not.
MASK_ALPHA_THRESHOLD = 32

# the fields txt2img does not have: name → label, for messages
FIELD_LABELS: dict[str, str] = {
    "denoising_strength": "Denoising strength", "resize_mode": "Resize mode", "scale_by": "Scale",
    "mask_blur": "Mask blur", "mask_mode": "Mask mode", "masked_content": "Masked content",
    "inpaint_area": "Inpaint area", "inpaint_padding": "Only masked padding, pixels",
}
# txt2img fields that mean something else (hires) or nothing in img2img
_TXT2IMG_ONLY = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_scale", "hr_resize_x", "hr_resize_y",
                 "denoising_strength")
# img2img infotext keys (written by the engine) → form field
_INPAINT_INFOTEXT_KEYS = {"Mask blur": "mask_blur", "Masked content": "masked_content", "Inpaint area": "inpaint_area",
                          "Masked area padding": "inpaint_padding", "Mask mode": "mask_mode"}


def default_img2img_values(native_size: int) -> dict[str, Any]:
    """A1111's img2img UI defaults: denoising 0.75, mask blur 4, original content, whole picture, padding 32."""
    inpaint = InpaintOptions(mask=Image.new("L", (1, 1)))
    common = {k: v for k, v in default_form_values(native_size).items() if k not in _TXT2IMG_ONLY}
    return {
        **common, "mode": "img2img", "denoising_strength": 0.75, "resize_mode": RESIZE_MODES[0],
        "size_source": "to",  # the "Resize to" (width × height) or "Resize by" (scale) sub-tab
        "scale_by": 1.0, "init_image": None, "sketch": None, "inpaint": None,
        "inpaint_upload_image": None, "inpaint_upload_mask": None, "mask_blur": inpaint.mask_blur_x,
        "mask_mode": MASK_MODES[int(inpaint.invert)], "masked_content": inpaint.masked_content,
        "inpaint_area": INPAINT_AREAS[int(inpaint.full_res)], "inpaint_padding": inpaint.full_res_padding,
        **img2img_batch.default_batch_values(),
    }


# ------------------------------------------------------------------------------------------------ images


def flatten(image: Image.Image) -> Image.Image:
    """RGB for the engine; transparent parts become white (as gradio flattens uploads)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def editor_background(value: Mapping[str, Any] | None) -> Image.Image | None:
    return value.get("background") if value else None


def editor_mask(value: Mapping[str, Any] | None) -> Image.Image | None:
    """The painted layers' union as a white-on-black mask the size of the background; None when nothing is painted."""
    background = editor_background(value)
    if background is None:
        return None
    mask = Image.new("L", background.size, 0)
    for layer in value.get("layers") or ():
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != background.size:  # layers follow the canvas; the canvas follows the background
            alpha = alpha.resize(background.size, Image.NEAREST)
        painted = alpha.point(lambda level: 255 if level >= MASK_ALPHA_THRESHOLD else 0)
        mask.paste(255, mask=painted)
    return mask if mask.getbbox() else None


def editor_composite(value: Mapping[str, Any] | None) -> Image.Image | None:
    """The background with the strokes drawn on it (Sketch mode's input)."""
    if not value or value.get("background") is None:
        return None
    composite = value.get("composite")
    return composite if composite is not None else value["background"]


def mode_image(values: Mapping[str, Any]) -> Image.Image | None:
    """The selected mode's image as uploaded (no strokes); None when there is none, and in Batch."""
    mode = values.get("mode")
    value = values.get(MODE_IMAGE_FIELDS.get(mode, ""))
    return editor_background(value) if mode in EDITOR_MODES else value


def editor_value(image: Image.Image | None) -> dict[str, Any] | None:
    """An ImageEditor value showing `image` with nothing painted (for send-to)."""
    return None if image is None else {"background": image, "layers": [], "composite": image}


# ------------------------------------------------------------------------------------------------- sizes


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """"Resize by": each side × scale, floored to a multiple of 8 (as the hires fix sizes)."""
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


def resize_by_text(image: Image.Image | None, scale: float) -> str:
    """A1111's note under the scale slider: 'resize: from 512x512 to 768x768'."""
    if image is None:
        return "no image selected"
    width, height = scaled_size(*image.size, scale)
    return f"resize: from {image.width}x{image.height} to {width}x{height}"


def size_from_image(image: Image.Image | None) -> tuple[int, int] | None:
    """📐: the image's own size, floored to multiples of 8 and kept within the width/height sliders' range."""
    if image is None:
        return None
    width, height = scaled_size(*image.size, 1.0)
    return min(max(width, MIN_SIZE), MAX_SIZE), min(max(height, MIN_SIZE), MAX_SIZE)


def target_size(values: Mapping[str, Any], image: Image.Image) -> tuple[int, int]:
    if values.get("size_source") == "by":
        return scaled_size(*image.size, _number(values, "scale_by"))
    return int(values["width"]), int(values["height"])


# --------------------------------------------------------------------------------------------- → request


def _number(values: Mapping[str, Any], name: str) -> float:
    value = values.get(name)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{FIELD_LABELS.get(name, name)} must be a number, got {value!r}") from None


def _choice(values: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> int:
    value = values.get(name)
    if value not in choices:
        raise RequestError(f"{FIELD_LABELS[name]} must be one of {', '.join(choices)}, got {value!r}")
    return choices.index(value)


def inpaint_options(values: Mapping[str, Any], mask: Image.Image) -> InpaintOptions:
    blur = int(_number(values, "mask_blur"))
    return InpaintOptions(
        mask=mask, mask_blur_x=blur, mask_blur_y=blur,
        invert=_choice(values, "mask_mode", MASK_MODES) == 1,
        masked_content=MASKED_CONTENT[_choice(values, "masked_content", MASKED_CONTENT)],
        full_res=_choice(values, "inpaint_area", INPAINT_AREAS) == 1,
        full_res_padding=int(_number(values, "inpaint_padding")))


def mode_input(values: Mapping[str, Any]) -> tuple[Image.Image, Image.Image | None]:
    """(input image, mask or None) of the selected mode; a RequestError says what is missing."""
    mode = values.get("mode")
    label = MODES.get(mode, mode)
    if mode == "img2img":
        image, mask = values.get("init_image"), None
    elif mode == "sketch":
        image, mask = editor_composite(values.get("sketch")), None
    elif mode == "inpaint":
        image = editor_background(values.get("inpaint"))
        mask = editor_mask(values.get("inpaint"))
        if image is not None and mask is None:
            raise RequestError("Inpaint: paint over the part to repaint with the brush (the mask is empty)")
    elif mode == "inpaint_upload":
        image, mask = values.get("inpaint_upload_image"), values.get("inpaint_upload_mask")
        if image is not None and mask is None:
            raise RequestError("Inpaint upload: upload a mask too (white = repaint)")
        mask = binary_mask(mask) if mask is not None else None
        if image is not None and mask is not None and mask.size != image.size:
            raise RequestError(f"Inpaint upload: the mask is {mask.width}x{mask.height} but the image is "
                               f"{image.width}x{image.height}; upload a mask of the same size")
    else:
        raise RequestError(f"unknown img2img mode {mode!r}")
    if image is None:
        raise RequestError(f"{label}: upload an image first")
    return flatten(image), mask


def base_request(values: Mapping[str, Any], *, noise_multiplier: float = 1.0) -> GenerationRequest:
    """The fields img2img shares with txt2img (prompt, sampler, seed, batch...) and the img2img options but the
    image: `init_images` is empty until the caller sets the input (see `with_input`)."""
    request = request_from_form({**values, "enable_hr": False})
    options = Img2ImgOptions(init_images=[], denoising_strength=_number(values, "denoising_strength"),
                             resize_mode=_choice(values, "resize_mode", RESIZE_MODES),
                             initial_noise_multiplier=noise_multiplier,
                             source_label=str(values.get("mode", "img2img")).replace("_", " "))
    return request.replace(img2img=options, mode="img2img")


def with_input(request: GenerationRequest, values: Mapping[str, Any], image: Image.Image,
               mask: Image.Image | None) -> GenerationRequest:
    """`request` (from base_request) for one input image: its target size, the image, and the mask if any."""
    width, height = target_size(values, image)
    inpaint = inpaint_options(values, mask) if mask is not None else None
    options = dataclasses.replace(request.img2img, init_images=[image], inpaint=inpaint)
    return request.replace(width=width, height=height, img2img=options)


def request_from_img2img_form(values: Mapping[str, Any], *, noise_multiplier: float = 1.0) -> GenerationRequest:
    """Form values of a single-image mode (not batch) → GenerationRequest."""
    image, mask = mode_input(values)
    return with_input(base_request(values, noise_multiplier=noise_multiplier), values, image, mask)


# ----------------------------------------------------------------------------------- app calls for the tab


def submit_img2img(app: App, values: dict[str, Any]) -> Job | BatchRun:
    """Generate: one job, or for Batch the jobs of each image, submitted one after another as they finish."""
    app.models.model  # noqa: B018 -- the property raises NoCheckpointError (with instructions) before queueing
    noise = app.settings.initial_noise_multiplier
    if values.get("mode") != "batch":
        return app.submit(request_from_img2img_form(values, noise_multiplier=noise))
    plan = img2img_batch.plan_from_form(app.options, values)  # refuses server folders when listening
    base = base_request(values, noise_multiplier=noise)

    def make_request(image: Image.Image, mask: Image.Image | None) -> GenerationRequest:
        return with_input(base, values, flatten(image), binary_mask(mask) if mask is not None else None)

    return BatchRun(app, plan, make_request)


def pasted_for_img2img(app: App, text: str) -> PastedInfotext:
    """txt2img's paste without the hires fields, plus img2img's denoising strength and inpaint settings."""
    pasted = pasted_for_txt2img(app, text)
    form = {name: value for name, value in pasted.form.items() if name not in _TXT2IMG_ONLY}
    fields = request_fields_from_infotext(parse_infotext(text, defaults=False))
    if "denoising_strength" in fields:  # only there without a hires pass: the img2img strength
        form["denoising_strength"] = fields["denoising_strength"]
    form.update(_inpaint_values(parse_infotext(text, defaults=False), pasted.warnings))
    return PastedInfotext(form, pasted.checkpoint, pasted.vae, pasted.clip_skip, pasted.warnings)


def _inpaint_values(parsed: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Mask blur, masked content, inpaint area, padding and mask mode an inpaint infotext names."""
    choices = {"masked_content": MASKED_CONTENT, "inpaint_area": INPAINT_AREAS, "mask_mode": MASK_MODES}
    values: dict[str, Any] = {}
    for key, name in _INPAINT_INFOTEXT_KEYS.items():
        if key not in parsed:
            continue
        value = str(parsed[key]).strip()
        if name in choices and value in choices[name]:
            values[name] = value
        elif name not in choices and value.isdigit():
            values[name] = int(value)
        else:
            warnings.append(f"{key} {value!r} is not a valid value; kept the current one")
    return values
