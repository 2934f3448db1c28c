"""Read a shapes-world image back by simple image analysis: background colour, the shape's colour, class and place.

Background = the most common palette colour on the border. Shape = the largest connected region of pixels far
from the background colour. Its class comes from two descriptors that survive soft edges and rounded corners
(a fill-ratio rule reads every slightly blurred square or triangle as a circle):
- top-heaviness: the share of its area in the upper half of its bounding box. Triangles point up: 1/4 for a
  triangle, 1/2 for circles and squares;
- corner reach: its extent along the diagonals over its extent along the axes, √2 for a square, 1 for a circle,
  with a small term for how much of its bounding box it fills (π/4 for a circle, 1 for a square).
Its position comes from the centroid's thirds, its size from its area.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from modules.shapes.captions import PromptSpec
from modules.shapes.world import COLOURS, PALETTE, RADIUS_RANGE, position_of

PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # [8, 3]
DIFFERENCE_THRESHOLD = 45.0  # and at least this RGB distance from the background: blends count as background
MIN_SHAPE_FRACTION = 0.004  # smaller regions are noise, not a shape
# Boundaries chosen on rendered scenes (100 % right) and on reconstructions by the default model's VAE.
TRIANGLE_TOP_SHARE_BELOW = 0.44  # triangle 0.25 (blurred ≤ 0.44), circle and square 0.5
SQUARE_CORNER_REACH_ABOVE = 0.17  # (diagonal/axis extent − 1) + 0.5·(fill − π/4): square 0.41, circle ~0.03
# Area = k·r² (circle and square πr², triangle 1.3·(1.2r)² ≈ 1.87r²);
AREA_PER_SQUARED_RADIUS = {"circle": np.pi, "square": np.pi, "triangle": 1.87}
LARGE_RADIUS = (RADIUS_RANGE["small"][1] + RADIUS_RANGE["large"][0]) / 2  # midway between the sizes' radii


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
    fill = area / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    kind = shape_class(ys, xs, fill)
    column = min(int(3 * xs.mean() / width), 2)
    row = min(int(3 * ys.mean() / height), 2)
    radius = np.sqrt(area / (height * width) / AREA_PER_SQUARED_RADIUS[kind])
    size = "large" if radius > LARGE_RADIUS else "small"
    return ShapeReading(
        COLOURS[background_index], COLOURS[_mode(nearest_colour_index(colour_pixels))], kind,
        position_of(column, row), size, float(fill),
    )


def shape_class(ys: np.ndarray, xs: np.ndarray, fill: float) -> str:
    """Triangle, square or circle from a region's pixel coordinates (see the module docstring)."""
    middle = (ys.min() + ys.max()) / 2
    top_share = ((ys < middle).sum() + 0.5 * (ys == middle).sum()) / len(ys)
    if top_share < TRIANGLE_TOP_SHARE_BELOW:
        return "triangle"
    # Pixel centres' extents, plus one pixel's own width (1 along an axis, √2 along a diagonal).
    along_axes = (ys.max() - ys.min() + xs.max() - xs.min()) / 2 + 1
    u, v = (xs + ys) / np.sqrt(2), (xs - ys) / np.sqrt(2)
    along_diagonals = (u.max() - u.min() + v.max() - v.min()) / 2 + np.sqrt(2)
    corner_reach = along_diagonals / along_axes - 1 + 0.5 * (fill - np.pi / 4)
    return "square" if corner_reach > SQUARE_CORNER_REACH_ABOVE else "circle"


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
