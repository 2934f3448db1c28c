"""Image upscaling: plain resamplers and super-resolution models, tiled so large images fit in memory.

Pure: an upscaler is handed in (a `Resampler`, or a `ModelUpscaler` wrapping a callable network); nothing here
knows where model files live. Used by the Extras job, hires fix (pixel upscalers) and img2img resizing.

A1111 behaviour kept: a model is applied repeatedly (at most `MAX_MODEL_PASSES` times) until the image reaches the
requested size, then one Lanczos resize gives the exact target. Deviation: the target is round(size × scale), not
A1111's floor to a multiple of 8.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

MAX_MODEL_PASSES = 3  # A1111 Upscaler.upscale tries at most three passes
MAX_MODEL_OUTPUT_PIXELS = 8192 * 8192  # one pass's output is held as float32 (3 × 4 bytes a pixel ≈ 800 MB)
RESAMPLERS = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS,
              "Nearest": Image.Resampling.NEAREST}

ImageNetwork = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, h, w) in [0, 1] → (1, 3, h·s, w·s) in [0, 1]


@dataclass(frozen=True)
class Resampler:
    """A PIL filter ("None" resizes with Lanczos, as A1111's UpscalerNone ends up doing)."""

    name: str
    resample: Image.Resampling = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class ModelUpscaler:
    """A super-resolution network with a fixed integer scale, run tile by tile."""

    name: str
    scale: int
    network: ImageNetwork
    tile: int = 192  # input pixels per tile side; 0 = whole image in one call
    overlap: int = 8  # input pixels shared by neighbouring tiles
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32


Upscaler = Resampler | ModelUpscaler


def resampler(name: str) -> Resampler:
    return Resampler(name, RESAMPLERS[name])


# ---------------------------------------------------------------------------------------------------- sizes


def target_size(width: int, height: int, *, scale: float | None = None, size: tuple[int, int] | None = None,
                crop: bool = True) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to upscale to, final size). They differ only for `size` with `crop`: the image is upscaled to cover
    the target (factor = max(W/w, H/h), aspect kept), then centre-cropped. `size` without crop stretches."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    if size is None:
        if not scale or scale <= 0:
            raise ValueError(f"upscale factor must be positive, got {scale}")
        final = (max(1, round(width * scale)), max(1, round(height * scale)))
        return final, final
    final = (int(size[0]), int(size[1]))
    if final[0] < 1 or final[1] < 1:
        raise ValueError(f"target size must be positive, got {final[0]}x{final[1]}")
    if not crop:
        return final, final
    factor = max(final[0] / width, final[1] / height)
    cover = (max(final[0], round(width * factor)), max(final[1], round(height * factor)))
    return cover, final


def center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


# ---------------------------------------------------------------------------------------------------- public


def upscale_image(image: Image.Image, upscaler: Upscaler, *, scale: float | None = None,
                  size: tuple[int, int] | None = None, crop: bool = True) -> Image.Image:
    """Upscale by `scale`, or to `size` (crop: cover then centre-crop; no crop: stretch). Exact output size.

    Alpha is kept: colour goes through the upscaler, the alpha channel through Lanczos.
    """
    cover, final = target_size(image.width, image.height, scale=scale, size=size, crop=crop)
    image = _normalised_mode(image)
    if image.mode == "RGBA":
        rgb = _resize_rgb(image.convert("RGB"), upscaler, cover)
        alpha = image.getchannel("A").resize(cover, Image.Resampling.LANCZOS)
        rgb.putalpha(alpha)
        return center_crop(rgb, final)
    return center_crop(_resize_rgb(image, upscaler, cover), final)


def upscale_blend(image: Image.Image, first: Upscaler, second: Upscaler | None, visibility: float, *,
                  scale: float | None = None, size: tuple[int, int] | None = None, crop: bool = True) -> Image.Image:
    """A1111's two-upscaler blend: result = (1 − visibility) · first + visibility · second."""
    result = upscale_image(image, first, scale=scale, size=size, crop=crop)
    if second is None or visibility <= 0:
        return result
    other = upscale_image(image, second, scale=scale, size=size, crop=crop)
    return Image.blend(result, other.convert(result.mode), min(float(visibility), 1.0))


# ---------------------------------------------------------------------------------------------------- resizing


def _normalised_mode(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has transparency (palette, LA, ...); other modes become RGB."""
    if image.mode in ("RGB", "RGBA"):
        return image
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _resize_rgb(image: Image.Image, upscaler: Upscaler, size: tuple[int, int]) -> Image.Image:
    if isinstance(upscaler, Resampler):
        return image.resize(size, upscaler.resample) if image.size != size else image.copy()
    for _ in range(MAX_MODEL_PASSES):
        if (image.width >= size[0] and image.height >= size[1]) or upscaler.scale <= 1:
            break
        image = run_model(image, upscaler)
    return image.resize(size, Image.Resampling.LANCZOS) if image.size != size else image.copy()


def run_model(image: Image.Image, upscaler: ModelUpscaler) -> Image.Image:
    """One pass of the network over an RGB image (tiled when `upscaler.tile` is smaller than the image)."""
    scale = upscaler.scale
    if image.width * scale * image.height * scale > MAX_MODEL_OUTPUT_PIXELS:
        raise ValueError(f"upscaling {image.width}x{image.height} with {upscaler.name} ({scale}x) would make "
                         f"{image.width * scale}x{image.height * scale} pixels; the limit is "
                         f"{MAX_MODEL_OUTPUT_PIXELS} pixels")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    with torch.inference_mode():
        output = tiled_inference(pixels, upscaler)
        array = output.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


# ---------------------------------------------------------------------------------------------------- tiling


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride tile − overlap, the last tile flush with the end."""
    if tile <= 0 or length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def edge_weights(length: int, overlap: int, *, left: bool, right: bool) -> torch.Tensor:
    """Per-pixel blend weight across one tile side (output pixels), for interior edges only.

    The outer quarter of the overlap (margin m) gets weight 0: the network saw no context there. Across the rest
    the weight ramps linearly, w(d) = clamp((d − m) / (O − 2m), 0, 1) with d the distance from the tile edge,
    so two neighbours overlapping by exactly O sum to 1 (d₁ + d₂ = O). Wider overlaps are normalised later.
    """
    weights = torch.ones(length)
    if overlap <= 0:
        return weights
    margin = overlap // 4
    distance = torch.arange(length, dtype=torch.float32) + 0.5
    ramp = overlap - 2 * margin
    if left:
        weights = torch.minimum(weights, ((distance - margin) / ramp).clamp(0, 1))
    if right:
        weights = torch.minimum(weights, ((length - distance - margin) / ramp).clamp(0, 1))
    return weights


def tiled_inference(pixels: torch.Tensor, upscaler: ModelUpscaler) -> torch.Tensor:
    """(3, h, w) in [0, 1] → (3, h·s, w·s). Tiles form a grid, so the weight normaliser is separable:
    Σ_tiles wx(x)·wy(y) = (Σ_a wx_a(x)) · (Σ_b wy_b(y)), and no per-pixel weight image is needed."""
    _, height, width = pixels.shape
    scale = upscaler.scale
    tile = upscaler.tile if 0 < upscaler.tile < max(height, width) else 0
    overlap = max(0, min(upscaler.overlap, tile // 2)) if tile else 0
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    output = torch.zeros(3, height * scale, width * scale)
    norm_x, norm_y = torch.zeros(width * scale), torch.zeros(height * scale)
    for row, y in enumerate(ys):
        tile_h = min(tile or height, height - y)
        wy = edge_weights(tile_h * scale, overlap * scale, left=row > 0, right=row < len(ys) - 1)
        for col, x in enumerate(xs):
            tile_w = min(tile or width, width - x)
            wx = edge_weights(tile_w * scale, overlap * scale, left=col > 0, right=col < len(xs) - 1)
            piece = pixels[:, y:y + tile_h, x:x + tile_w].unsqueeze(0).to(upscaler.device, upscaler.dtype)
            result = upscaler.network(piece)[0].float().cpu()
            expected = (3, tile_h * scale, tile_w * scale)
            if tuple(result.shape) != expected:
                raise RuntimeError(f"{upscaler.name}: network returned {tuple(result.shape)}, expected {expected}")
            output[:, y * scale:(y + tile_h) * scale, x * scale:(x + tile_w) * scale] += result * wy[:, None] * wx
            if row == 0:
                norm_x[x * scale:(x + tile_w) * scale] += wx
        norm_y[y * scale:(y + tile_h) * scale] += wy
    return output.div_(norm_y[:, None]).div_(norm_x)
