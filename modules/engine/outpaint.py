"""Outpainting: extend the canvas, pre-fill the new area, and inpaint it (plus an overlap seam) with the inpaint path.

Pure image work and request building; the engine's inpaint path does the sampling and the compositing, so the
original pixels outside the overlap (and its blur) stay untouched.

Canvas layout: the image sits at (left, up) in a canvas of (width + left + right) × (height + up + down); both sides
are rounded UP to multiples of 8, the extra pixels going to the extended sides (split as evenly as the request).
The mask is white over the new area and `overlap` pixels into the original on each extended side, so the seam
is repainted; the engine blurs it by `mask_blur`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from modules.engine.request import (
    MASKED_CONTENT,
    MAX_SIZE,
    GenerationRequest,
    Img2ImgOptions,
    InpaintOptions,
    RequestError,
)
from modules.engine.seeds import resolve_seed

OUTPAINT_FILLS = ("edge", "blur", "noise")
OUTPAINT_DIRECTIONS = ("left", "right", "up", "down")
MAX_EXTEND = 1024  # pixels one side may grow by
MAX_OVERLAP = 256
MAX_MASK_BLUR = 64  # the engine's mask blur bound
DEFAULT_OUTPAINT_DENOISING = 0.8  # enough freedom to invent content over the pre-fill, low enough to keep its colours
EDGE_SMOOTHING_RADIUS = 3  # "edge": a light blur across the stretched rows so they aren't streaky
BLUR_FILL_RADIUS = 24  # "blur": heavy blur of the stretched edge colours (A1111 "fill"-like)
NOISE_SIGMA = 24.0  # "noise": std of the seeded noise around the edge colours' mean, in 0..255 units
CANVAS_MULTIPLE = 8  # latent cell size
A1111_IMG2IMG_DENOISING = 0.75


@dataclass(frozen=True)
class OutpaintSpec:
    """Pixels to add on each side, how to pre-fill them, and how far the repainted seam reaches into the original."""

    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0
    fill: str = "edge"  # one of OUTPAINT_FILLS
    overlap: int = 16  # the mask reaches this far into the original so the seam is repainted
    mask_blur: int = 8

    @property
    def sides(self) -> tuple[int, int, int, int]:
        return self.left, self.right, self.up, self.down


@dataclass(frozen=True)
class CanvasLayout:
    """Where the original sits in the canvas: the actual padding per side after rounding to multiples of 8."""

    left: int
    right: int
    up: int
    down: int
    width: int  # canvas size
    height: int

    @property
    def offset(self) -> tuple[int, int]:
        return self.left, self.up


def validate_spec(spec: OutpaintSpec) -> None:
    """RequestError naming the field for a spec that cannot be run."""
    for name, value in zip(OUTPAINT_DIRECTIONS, spec.sides):
        if not 0 <= value <= MAX_EXTEND:
            raise RequestError(f"outpaint {name} must be between 0 and {MAX_EXTEND} pixels, got {value}")
    if not any(spec.sides):
        raise RequestError("outpaint needs at least one side (left, right, up, down) to extend by more than 0 pixels")
    if spec.fill not in OUTPAINT_FILLS:
        raise RequestError(f"outpaint fill must be one of {', '.join(OUTPAINT_FILLS)}, got {spec.fill!r}")
    if not 0 <= spec.overlap <= MAX_OVERLAP:
        raise RequestError(f"outpaint overlap must be between 0 and {MAX_OVERLAP} pixels, got {spec.overlap}")
    if not 0 <= spec.mask_blur <= MAX_MASK_BLUR:
        raise RequestError(f"outpaint mask blur must be between 0 and {MAX_MASK_BLUR} pixels, got {spec.mask_blur}")


def spec_for_aspect(width: int, height: int, target_ratio: float, **kw) -> OutpaintSpec:
    """Extend the short dimension until width / height = target_ratio, split evenly on both sides.

    kw: the other OutpaintSpec fields (fill, overlap, mask_blur).
    """
    if not target_ratio > 0 or target_ratio == float("inf"):
        raise RequestError(f"target aspect ratio must be a positive number, got {target_ratio}")
    new_width, new_height = width, height
    if width / height < target_ratio:
        new_width = round(height * target_ratio)  # w' = h · r
    else:
        new_height = round(width / target_ratio)  # h' = w / r
    add_x, add_y = new_width - width, new_height - height
    if add_x <= 0 and add_y <= 0:
        raise RequestError(f"the image ({width}x{height}) already has the aspect ratio {target_ratio:g}; "
                           "nothing to outpaint")
    return OutpaintSpec(left=add_x // 2, right=add_x - add_x // 2, up=add_y // 2, down=add_y - add_y // 2, **kw)


def canvas_layout(width: int, height: int, spec: OutpaintSpec) -> CanvasLayout:
    """Padding per side with the canvas rounded up to multiples of 8; raises RequestError when it is too large."""
    validate_spec(spec)
    left, right = _round_axis(width, spec.left, spec.right)
    up, down = _round_axis(height, spec.up, spec.down)
    layout = CanvasLayout(left, right, up, down, width + left + right, height + up + down)
    if layout.width > MAX_SIZE or layout.height > MAX_SIZE:
        raise RequestError(f"outpainted canvas {layout.width}x{layout.height} is larger than {MAX_SIZE}x{MAX_SIZE}")
    return layout


def _round_axis(size: int, before: int, after: int) -> tuple[int, int]:
    """Grow (before, after) so size + before + after is a multiple of 8; the extra goes to the extended sides.

    An axis that is not extended but not a multiple of 8 grows on its far side (right / down).
    """
    extra = -(size + before + after) % CANVAS_MULTIPLE
    if before and after:
        half = extra // 2
        return before + half, after + extra - half
    if before:
        return before + extra, after
    return before, after + extra


def prepare_canvas(image: Image.Image, spec: OutpaintSpec, seed: int) -> tuple[Image.Image, Image.Image]:
    """(pre-filled RGB canvas, mask "L" white = repaint) for the spec; the original pixels sit at the offset."""
    rgb = image.convert("RGB")
    layout = canvas_layout(rgb.width, rgb.height, spec)
    canvas = prefill(rgb, layout, spec.fill, seed)
    return canvas, outpaint_mask(rgb.size, layout, spec.overlap)


def outpaint_mask(image_size: tuple[int, int], layout: CanvasLayout, overlap: int) -> Image.Image:
    """White over the new area and `overlap` pixels into the original on each extended side; black elsewhere."""
    width, height = image_size
    mask = np.full((layout.height, layout.width), 255, dtype=np.uint8)
    # The kept box: the original, shrunk by the overlap on the sides that grew.
    x0 = layout.left + (overlap if layout.left else 0)
    x1 = layout.left + width - (overlap if layout.right else 0)
    y0 = layout.up + (overlap if layout.up else 0)
    y1 = layout.up + height - (overlap if layout.down else 0)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = 0
    return Image.fromarray(mask, mode="L")


def prefill(image: Image.Image, layout: CanvasLayout, fill: str, seed: int) -> Image.Image:
    """The canvas with the original pasted at the offset and the new area pre-filled by `fill`."""
    pixels = np.asarray(image)
    padded = np.pad(pixels, ((layout.up, layout.down), (layout.left, layout.right), (0, 0)), mode="edge")
    if fill == "edge":
        new_area = Image.fromarray(padded).filter(ImageFilter.GaussianBlur(EDGE_SMOOTHING_RADIUS))
    elif fill == "blur":
        new_area = Image.fromarray(padded).filter(ImageFilter.GaussianBlur(BLUR_FILL_RADIUS))
    elif fill == "noise":
        new_area = Image.fromarray(_edge_noise(pixels, layout, seed))
    else:
        raise RequestError(f"outpaint fill must be one of {', '.join(OUTPAINT_FILLS)}, got {fill!r}")
    new_area.paste(image, layout.offset)  # the original stays exact
    return new_area


def _edge_noise(pixels: np.ndarray, layout: CanvasLayout, seed: int) -> np.ndarray:
    """Seeded Gaussian noise around the mean colour of the original's border rows/columns on the extended sides."""
    border = [strip for strip, grew in ((pixels[:, :1], layout.left), (pixels[:, -1:], layout.right),
                                        (pixels[:1, :], layout.up), (pixels[-1:, :], layout.down)) if grew]
    mean = np.concatenate([strip.reshape(-1, 3) for strip in border]).astype(np.float64).mean(axis=0)
    rng = np.random.default_rng(seed % 2**32)  # -1 (random seed) still gives a valid, fixed generator
    noise = rng.normal(0.0, NOISE_SIGMA, size=(layout.height, layout.width, 3))
    return np.clip(mean + noise, 0, 255).round().astype(np.uint8)


def outpaint_request(base: GenerationRequest, image: Image.Image, spec: OutpaintSpec, *,
                     denoising_strength: float = DEFAULT_OUTPAINT_DENOISING,
                     masked_content: str = "original") -> GenerationRequest:
    """An inpaint request on the pre-filled canvas (width/height = canvas size, whole-picture inpaint).

    A random seed (-1) is resolved here so the pre-fill noise and the job use the same, reported seed.
    """
    seed = resolve_seed(base.seed)
    canvas, mask = prepare_canvas(image, spec, seed)
    base_options = base.img2img
    inpaint = InpaintOptions(mask=mask, mask_blur_x=spec.mask_blur, mask_blur_y=spec.mask_blur,
                             masked_content=masked_content, full_res=False)
    options = Img2ImgOptions(
        init_images=[canvas], denoising_strength=denoising_strength, resize_mode=0, inpaint=inpaint,
        initial_noise_multiplier=base_options.initial_noise_multiplier if base_options else 1.0,
        source_label="outpaint")
    return base.replace(seed=seed, width=canvas.width, height=canvas.height, hires=None, img2img=options,
                        mode="img2img")


def poor_mans_outpainting_request(base: GenerationRequest, image: Image.Image, pixels: int, mask_blur: int,
                                  inpainting_fill: int, directions: list[str]) -> GenerationRequest:
    """A1111's "Poor man's outpainting" script (args: pixels, mask_blur, inpainting_fill, direction list).

    A1111 semantics kept: the mask reaches mask_blur·2 into the original and is blurred by mask_blur·2; masked
    content is the script's choice (index into MASKED_CONTENT; "fill" is done by the engine); one image
    (batch 1 × 1); the base request's denoising strength. Differences: one inpaint pass over the whole canvas
    instead of A1111's tiles of width × height, a canvas rounded to multiples of 8 (A1111: 64), and the new
    area pre-filled by edge extension instead of black.
    """
    unknown = [name for name in directions if name not in OUTPAINT_DIRECTIONS]
    if unknown or not directions:
        raise RequestError(f"Poor man's outpainting directions must be a non-empty list of "
                           f"{', '.join(OUTPAINT_DIRECTIONS)}; got {list(directions)!r}")
    if not 0 <= mask_blur <= MAX_MASK_BLUR // 2:
        raise RequestError(f"Poor man's outpainting mask blur must be between 0 and {MAX_MASK_BLUR // 2} "
                           f"(it is doubled), got {mask_blur}")
    if inpainting_fill not in range(len(MASKED_CONTENT)):
        raise RequestError(f"Poor man's outpainting masked content must be 0..{len(MASKED_CONTENT) - 1} "
                           f"({', '.join(MASKED_CONTENT)}), got {inpainting_fill}")
    extend = {name: pixels if name in directions else 0 for name in OUTPAINT_DIRECTIONS}
    spec = OutpaintSpec(**extend, fill="edge", overlap=mask_blur * 2, mask_blur=mask_blur * 2)
    strength = base.img2img.denoising_strength if base.img2img else A1111_IMG2IMG_DENOISING
    return outpaint_request(base.replace(batch_size=1, n_iter=1), image, spec, denoising_strength=strength,
                            masked_content=MASKED_CONTENT[inpainting_fill])
