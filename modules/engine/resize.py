"""A1111's img2img resize modes (images.resize_image): fit an init image or mask to the job's width × height.

0 "Just resize": stretch. 1 "Crop and resize": cover the target, centre-crop. 2 "Resize and fill": fit inside,
fill the bars by stretching the image's outermost row/column. 3 "Just resize (latent upscale)" is done on latents
by the img2img stage; for pixels (its mask, its composite) it stretches like 0.
"""
from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from modules.engine.request import RESIZE_MODES

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_RESIZE = range(len(RESIZE_MODES))

# (image, width, height) → image of exactly width × height; A1111's `upscaler_for_img2img` when enlarging.
Resizer = Callable[[Image.Image, int, int], Image.Image]


def lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.LANCZOS)


def resize_image(image: Image.Image, mode: int, width: int, height: int, *,
                 resizer: Resizer | None = None) -> Image.Image:
    """`image` fitted to width × height by resize `mode` (index into RESIZE_MODES).

    `resizer` enlarges colour images (an upscaler model, say); shrinking and masks ("L") use Lanczos, as A1111.
    """
    scale = _scaler(resizer) if resizer is not None and image.mode != "L" else lanczos
    if mode in (JUST_RESIZE, LATENT_RESIZE):
        return scale(image, width, height)
    if mode == CROP_AND_RESIZE:
        return _crop_and_resize(image, width, height, scale)
    if mode == RESIZE_AND_FILL:
        return _resize_and_fill(image, width, height, scale)
    raise ValueError(f"resize mode must be 0..{len(RESIZE_MODES) - 1} ({', '.join(RESIZE_MODES)}), got {mode}")


def _scaler(resizer: Resizer) -> Resizer:
    def scale(image: Image.Image, width: int, height: int) -> Image.Image:
        enlarges = max(width / image.width, height / image.height) > 1
        return resizer(image, width, height) if enlarges else lanczos(image, width, height)
    return scale


def _crop_and_resize(image: Image.Image, width: int, height: int, scale: Resizer) -> Image.Image:
    """Scale so the image covers width × height, then keep the centre."""
    wider_target = width / height > image.width / image.height
    scaled_w = width if wider_target else image.width * height // image.height
    scaled_h = height if not wider_target else image.height * width // image.width
    result = Image.new(image.mode, (width, height))
    result.paste(scale(image, scaled_w, scaled_h), (width // 2 - scaled_w // 2, height // 2 - scaled_h // 2))
    return result


def _resize_and_fill(image: Image.Image, width: int, height: int, scale: Resizer) -> Image.Image:
    """Scale so the image fits inside width × height, centre it, and stretch its edge rows/columns over the bars."""
    ratio, source_ratio = width / height, image.width / image.height
    scaled_w = width if ratio < source_ratio else image.width * height // image.height
    scaled_h = height if ratio >= source_ratio else image.height * width // image.width
    resized = scale(image, scaled_w, scaled_h)
    result = Image.new(image.mode, (width, height))
    result.paste(resized, (width // 2 - scaled_w // 2, height // 2 - scaled_h // 2))
    if ratio < source_ratio:  # bars above and below: stretch the top and bottom rows
        bar = height // 2 - scaled_h // 2
        if bar > 0:
            result.paste(resized.resize((width, bar), box=(0, 0, width, 0)), (0, 0))
            result.paste(resized.resize((width, bar), box=(0, resized.height, width, resized.height)),
                         (0, bar + scaled_h))
    elif ratio > source_ratio:  # bars left and right: stretch the first and last columns
        bar = width // 2 - scaled_w // 2
        if bar > 0:
            result.paste(resized.resize((bar, height), box=(0, 0, 0, height)), (0, 0))
            result.paste(resized.resize((bar, height), box=(resized.width, 0, resized.width, height)),
                         (bar + scaled_w, 0))
    return result


def latent_source_size(image: Image.Image, multiple: int = 8) -> tuple[int, int]:
    """Size an init image is encoded at for the latent resize mode: its own, rounded to the VAE's multiple."""
    return (max(multiple, round(image.width / multiple) * multiple),
            max(multiple, round(image.height / multiple) * multiple))
