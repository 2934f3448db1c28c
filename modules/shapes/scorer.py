"""Read a shapes-world image back by simple image analysis: background colour, the shape's colour, class and place.

Background = the most common palette colour on the border. Shape = the largest connected region of pixels far
from the background colour. Its class comes from how much of its bounding box it fills (circle π/4 ≈ 0.785,
square 1, triangle 0.5), its position from the centroid's thirds, its size from its area.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from modules.shapes.captions import PromptSpec
from modules.shapes.world import COLOURS, PALETTE, position_of

PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # [8, 3]
DIFFERENCE_THRESHOLD = 45.0  # and at least this RGB distance from the background: blends count as background
MIN_SHAPE_FRACTION = 0.004  # smaller regions are noise, not a shape
# Fill ratio boundaries between triangle (0.5), circle (0.785) and square (1.0).
TRIANGLE_BELOW, SQUARE_ABOVE = 0.64, 0.9
# Area = k·r² (circle and square πr², triangle 1.3·(1.2r)² ≈ 1.87r²); r between small (≤ 0.14) and large (≥ 0.20).
AREA_PER_SQUARED_RADIUS = {"circle": np.pi, "square": np.pi, "triangle": 1.87}
LARGE_RADIUS = 0.17


@dataclass(frozen=True)
class ShapeReading:
    background: str
    colour: str | None  # None: no shape found
    kind: str | None
    position: str | None
    size: str | None
    fill_ratio: float


def nearest_colour_index(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette colour for each RGB pixel ([..., 3] → [...])."""
    distances = ((pixels[..., None, :] - PALETTE_RGB) ** 2).sum(-1)
    return distances.argmin(-1)


def _mode(indices: np.ndarray) -> int:
    return int(np.bincount(indices.ravel(), minlength=len(COLOURS)).argmax())


def read_image(image: Image.Image) -> ShapeReading:
    """Analyse one image (any size) and say what it shows."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background_index = _mode(nearest_colour_index(border))
    background_rgb = np.median(border[nearest_colour_index(border) == background_index], axis=0)
    # "Shape" = nearest to another palette colour and clearly away from the background's own colour.
    differs = nearest_colour_index(rgb) != background_index
    region = _largest_region(differs & (np.linalg.norm(rgb - background_rgb, axis=-1) > DIFFERENCE_THRESHOLD))
    area = int(region.sum())
    if area < MIN_SHAPE_FRACTION * height * width:
        return ShapeReading(COLOURS[background_index], None, None, None, None, 0.0)
    # The colour from the region's interior, away from edge pixels blended with the background.
    core = ndimage.binary_erosion(region)
    colour_pixels = rgb[core] if core.sum() >= 4 else rgb[region]
    ys, xs = np.nonzero(region)
    box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = area / box_area
    kind = "triangle" if fill < TRIANGLE_BELOW else "square" if fill > SQUARE_ABOVE else "circle"
    column = min(int(3 * xs.mean() / width), 2)
    row = min(int(3 * ys.mean() / height), 2)
    radius = np.sqrt(area / (height * width) / AREA_PER_SQUARED_RADIUS[kind])
    size = "large" if radius > LARGE_RADIUS else "small"
    return ShapeReading(
        COLOURS[background_index], COLOURS[_mode(nearest_colour_index(colour_pixels))], kind,
        position_of(column, row), size, float(fill),
    )


def _largest_region(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


@dataclass(frozen=True)
class Adherence:
    """Per-attribute agreement of one image with its prompt; `core` = colour + background + shape all right."""

    colour: bool
    background: bool
    kind: bool
    position: bool | None  # None: the prompt does not say
    size: bool | None

    @property
    def core(self) -> bool:
        return self.colour and self.background and self.kind


def score(reading: ShapeReading, spec: PromptSpec) -> Adherence:
    """Compare what the image shows with the (single-shape) prompt's request."""
    if len(spec.shapes) != 1:
        raise ValueError("the scorer reads single-shape prompts only")
    wanted = spec.shapes[0]
    return Adherence(
        colour=reading.colour == wanted.colour,
        background=reading.background == spec.background,
        kind=reading.kind == wanted.kind,
        position=None if wanted.position is None else reading.position == wanted.position,
        size=None if wanted.size is None else reading.size == wanted.size,
    )
