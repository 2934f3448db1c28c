"""The "shapes" world: scenes of one or two flat shapes on a plain background, sampled and rendered deterministically.

A scene is pure data (`ShapeScene`); `sample_scene(rng)` draws one from a `random.Random`, `render(scene, size)`
draws it. Geometry is stored in fractions of the image side, so one scene renders at any size.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

# Flat colours, far apart in RGB so a scorer can name a pixel by its nearest palette entry.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (245, 130, 15),
    "purple": (135, 40, 180),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
COLUMNS: tuple[str, ...] = ("left", "center", "right")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
# The nine cells of a 3×3 grid, named the way people say them ("top left", "left", "center", ...).
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)

# Radius ranges (fraction of the side) and cell centres per size; large shapes sit nearer the middle so that
# no shape is clipped and every centroid stays inside its third of the image.
# A small shape spans about 2.6 latent cells (21 px at 64 px): at radius 0.12–0.14 (2 cells) an 8× VAE could not
# keep a small circle's and a small square's corners apart (docs/default-model.md, "Where the small shapes'
# class is lost"), which capped prompt adherence whatever the UNet learned. Large shapes cannot grow: a large
# triangle in the top row already reaches within a pixel of the border.
RADIUS_RANGE = {"small": (0.155, 0.175), "large": (0.205, 0.23)}
CELL_CENTRES = {"small": (0.24, 0.5, 0.76), "large": (0.3, 0.5, 0.7)}
JITTER = {"small": 0.015, "large": 0.015}
TRIANGLE_CIRCUMRADIUS = 1.2  # × radius: keeps a triangle's area close to the circle's
SQUARE_HALF_SIDE = 0.886  # × radius: a square of the same area as the circle (s² = πr²)
TWO_SHAPE_FRACTION = 0.2
HELD_OUT_PERCENT = 10  # share of single-shape attribute tuples never rendered for training
SUPERSAMPLE = 4  # draw at 4× and downsample: anti-aliased edges like a real image


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    colour: str  # one of COLOURS
    size: str  # one of SIZES
    position: str  # one of POSITIONS
    x: float  # centre, fraction of width (0 = left)
    y: float  # centre, fraction of height (0 = top)
    radius: float  # fraction of the side


@dataclass(frozen=True)
class ShapeScene:
    background: str
    shapes: tuple[Shape, ...]


def cell_of(position: str) -> tuple[int, int]:
    """(column, row) indices 0..2 of a named grid cell."""
    words = position.split()
    column = 0 if "left" in words else 2 if "right" in words else 1
    row = 0 if "top" in words else 2 if "bottom" in words else 1
    return column, row


def position_of(column: int, row: int) -> str:
    return POSITIONS[row * 3 + column]


def attribute_key(scene: ShapeScene) -> str:
    """What a single-shape scene depicts, as text; the held-out split is a hash of it."""
    shape = scene.shapes[0]
    return f"{shape.size} {shape.colour} {shape.kind} {shape.position} on {scene.background}"


def is_held_out(scene: ShapeScene) -> bool:
    """Single-shape scenes whose attribute tuple hashes into the evaluation split (~10 %); never trained on."""
    if len(scene.shapes) != 1:
        return False
    digest = hashlib.sha256(attribute_key(scene).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def make_shape(rng: random.Random, kind: str, colour: str, size: str, position: str) -> Shape:
    """Place a shape in its grid cell with a little jitter, radius drawn from its size range."""
    column, row = cell_of(position)
    centres, jitter = CELL_CENTRES[size], JITTER[size]
    return Shape(
        kind=kind,
        colour=colour,
        size=size,
        position=position,
        x=centres[column] + rng.uniform(-jitter, jitter),
        y=centres[row] + rng.uniform(-jitter, jitter),
        radius=rng.uniform(*RADIUS_RANGE[size]),
    )


def sample_scene(rng: random.Random, *, allow_held_out: bool = False) -> ShapeScene:
    """A random scene; held-out single-shape scenes are redrawn unless `allow_held_out`."""
    while True:
        scene = _draw_scene(rng)
        if allow_held_out or not is_held_out(scene):
            return scene


def _draw_scene(rng: random.Random) -> ShapeScene:
    background = rng.choice(COLOURS)
    others = [c for c in COLOURS if c != background]
    if rng.random() >= TWO_SHAPE_FRACTION:
        shape = make_shape(rng, rng.choice(SHAPES), rng.choice(others), rng.choice(SIZES), rng.choice(POSITIONS))
        return ShapeScene(background, (shape,))
    first, second = _two_cells(rng)
    shapes = tuple(
        make_shape(rng, rng.choice(SHAPES), rng.choice(others), "small", position) for position in (first, second)
    )
    return ShapeScene(background, shapes)


def _two_cells(rng: random.Random) -> tuple[str, str]:
    """Two cells on opposite sides (columns or rows differ by 2), so small shapes never touch."""
    while True:
        a, b = rng.sample(POSITIONS, 2)
        (ca, ra), (cb, rb) = cell_of(a), cell_of(b)
        if abs(ca - cb) == 2 or abs(ra - rb) == 2:
            # Reading order (top before bottom, left before right) is how people list them.
            return (a, b) if (ra, ca) < (rb, cb) else (b, a)


def shape_polygon(shape: Shape, side: float) -> list[tuple[float, float]]:
    """Corner points in pixels for squares and triangles (triangle: equilateral, pointing up, centroid = centre)."""
    cx, cy, r = shape.x * side, shape.y * side, shape.radius * side
    if shape.kind == "square":
        h = SQUARE_HALF_SIDE * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape.kind == "triangle":
        big = TRIANGLE_CIRCUMRADIUS * r
        # Vertices at -90°, 30°, 150°: (0, -R), (R·√3/2, R/2), (-R·√3/2, R/2).
        half_width = big * 3**0.5 / 2
        return [(cx, cy - big), (cx + half_width, cy + big / 2), (cx - half_width, cy + big / 2)]
    raise ValueError(f"no polygon for {shape.kind!r}")


def render(scene: ShapeScene, size: int = 64) -> Image.Image:
    """Draw the scene as an RGB image of `size`×`size` pixels (anti-aliased by supersampling)."""
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        fill = PALETTE[shape.colour]
        if shape.kind == "circle":
            cx, cy, r = shape.x * side, shape.y * side, shape.radius * side
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(shape_polygon(shape, side), fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)
