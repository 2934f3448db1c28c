"""Inpainting masks and the pixel operations around them, as A1111 does them (modules/masking.py, processing.py).

Pure PIL/numpy: no model, no torch. Masks are "L" images, 255 = repaint, 0 = keep. A box is (x1, y1, x2, y2) with
x2/y2 exclusive, like PIL's crop boxes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage

Box = tuple[int, int, int, int]

MASK_THRESHOLD = 128  # A1111 create_binary_mask(round=True): a pixel repaints when its value is > 128
# A1111 masking.fill: (blur radius, times composited), coarse to fine; later passes overwrite earlier ones.
FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def binary_mask(mask: Image.Image, *, invert: bool = False) -> Image.Image:
    """The mask as 0/255 "L": from its alpha channel when it has a non-trivial one, else from its luminance.

    A1111 create_binary_mask(round=True) + ImageOps.invert for "Inpaint not masked".
    """
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        grey = mask.getchannel("A")
    else:
        grey = mask.convert("L")
    binary = grey.point(lambda value: 255 if value > MASK_THRESHOLD else 0)
    return ImageOps.invert(binary) if invert else binary


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """Separate Gaussian blurs along x and y (A1111: cv2.GaussianBlur with kernels (k, 1) then (1, k)).

    cv2's kernel for sigma σ spans k = 2·int(2.5σ + 0.5) + 1 taps and mirrors the border without repeating the edge
    pixel (BORDER_REFLECT_101 = scipy's "mirror").
    """
    pixels = np.asarray(mask.convert("L"), dtype=np.float32)
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        if sigma > 0:
            pixels = ndimage.gaussian_filter1d(pixels, sigma, axis=axis, mode="mirror", radius=int(2.5 * sigma + 0.5))
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="L")


def mask_box(mask: Image.Image, padding: int = 0) -> Box | None:
    """Bounding box of the mask's non-zero pixels grown by `padding` and clamped to the image; None when blank.

    A1111 masking.get_crop_region_v2.
    """
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_box_to_ratio(box: Box, width: int, height: int, image_width: int, image_height: int) -> Box:
    """Grow the short side of `box` so it has the aspect ratio width:height, shifted back inside the image.

    A1111 masking.expand_crop_region: e.g. a 128×32 box for a 512×512 job becomes 128×128. When the image is too
    small in that direction the box is clamped to the image (and its ratio then differs).
    """
    x1, y1, x2, y2 = box
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow_span(y1, y2, (x2 - x1) * height / width, image_height)
    else:
        x1, x2 = _grow_span(x1, x2, (y2 - y1) * width / height, image_width)
    return x1, y1, x2, y2


def _grow_span(start: int, end: int, desired: float, limit: int) -> tuple[int, int]:
    """Widen [start, end) to `desired` length, centred, then shift inside [0, limit) and clamp."""
    grow = int(desired - (end - start))
    start, end = start - grow // 2, end + grow - grow // 2
    if end >= limit:
        start, end = start - (end - limit), limit
    if start < 0:
        start, end = 0, end - start
    return start, min(end, limit)


def overlay_mask_whole_picture(mask: Image.Image) -> Image.Image:
    """A1111's composite mask for "Whole picture": the blurred mask doubled (clipped), so every pixel the sampler
    repainted (latent mask = round(mask) ⇒ mask ≥ 0.5) comes fully from the generated image."""
    return mask.point(lambda value: min(2 * value, 255))


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the masked area painted with colours of its surroundings (A1111 masking.fill).

    The unmasked pixels, as premultiplied RGBA, are blurred at decreasing radii and stacked by alpha compositing, so
    each masked pixel takes the colour of the nearest unmasked pixels at the finest scale that reaches it.
    Unmasked pixels come out as they went in.
    """
    filled = Image.new("RGBA", image.size)
    known = Image.new("RGBa", image.size)
    known.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in FILL_PASSES:
        blurred = known.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


def composite(source: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """result = source·(1 − m) + generated·m, m = mask / 255; exactly the source pixel wherever m = 0.

    The outpaint and UI code can use it to paste any result back through a (blurred) mask.
    """
    if source.size != generated.size or source.size != mask.size:
        raise ValueError(f"composite needs equal sizes, got source {source.size}, generated {generated.size}, "
                         f"mask {mask.size}")
    return Image.composite(generated.convert("RGB"), source.convert("RGB"), mask.convert("L"))


def latent_mask(mask: Image.Image, latent_width: int, latent_height: int) -> np.ndarray:
    """[h, w] float32 of 0/1: which latent cells are repainted. A1111: the blurred mask resized (bicubic) to the
    latent size, then rounded."""
    small = mask.convert("L").resize((latent_width, latent_height), Image.Resampling.BICUBIC)
    return np.round(np.asarray(small, dtype=np.float32) / 255.0)


def paste_box(base: Image.Image, patch: Image.Image, box: Box) -> Image.Image:
    """A copy of `base` with `patch` (already box-sized) pasted at the box."""
    result = base.convert("RGB").copy()
    result.paste(patch.convert("RGB"), box[:2])
    return result
