"""Training data for the canny ControlNet of the default model: shapes anywhere, their captions and canny maps.

The default model ignores position words, so the ControlNet has to supply the place and size of a shape from
its outline. Scenes therefore put most shapes at a continuous random centre and radius (not only the nine
grid cells of `modules.shapes.world`); each shape is still labelled with its grid cell and size class, so its
captions (`modules.shapes.captions.caption`) stay true. A fifth of the scenes come from the world's own
sampler (two-shape scenes included). Held-out attribute tuples are never drawn.

Control maps are made the way the app's "canny" preprocessor makes them (controlnet_aux's CannyDetector =
cv2.Canny, thresholds 100/200, as the A1111 extension), in two forms a user's request can produce:
- native: canny of the 64 px image at 64 px ("pixel perfect"): one-pixel binary edges;
- hires: canny of a 256 px rendering of the same scene at 256 px (a control image and processor resolution
  above the generation size), area-resized to 64 px: soft grey edges. Thresholding it gives the binary form a
  high-quality resize produces. (256, not the default 512: rendering at 512 px cost minutes of the budget.)
A training batch mixes the three (see `control_batch`), so the model follows an outline whichever path made it.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers import CLIPTokenizer

from modules.shapes.captions import caption
from modules.shapes.scorer import LARGE_RADIUS  # above: captioned "large"
from modules.shapes.world import (
    COLOURS, SHAPES, TRIANGLE_CIRCUMRADIUS, Shape, ShapeScene, is_held_out, position_of, render, sample_scene,
)
from modules.training.dataset import CLIP_LENGTH, ShapesDataset, tokenize

CANNY_THRESHOLDS = (100, 200)  # the A1111 extension's canny defaults (low, high)
HIRES_RESOLUTION = 256  # control image and processor resolution of the "hires" maps
RADIUS_RANGE = (0.10, 0.24)  # fraction of the side; the world's small and large shapes lie inside it
EDGE_MARGIN = 0.03  # keep every shape this far (fraction of the side) from the border
WORLD_SCENE_SHARE = 0.2  # scenes drawn by the world's own sampler (grid cells, two-shape scenes)
BINARY_LEVEL = 16  # a soft hires edge pixel at or above this grey counts as edge in the binary form


@dataclass
class ControlDataset:
    shapes: ShapesDataset  # scenes, images, captions, token ids
    native_maps: Tensor  # uint8 [N, size, size]: canny at the image's own size
    hires_maps: Tensor  # uint8 [N, size, size]: canny at HIRES_RESOLUTION, area-resized to size

    def __len__(self) -> int:
        return len(self.shapes)


def free_shape(rng: random.Random, kind: str, colour: str) -> Shape:
    """A shape with a continuous centre and radius, labelled with its grid cell and size class."""
    radius = rng.uniform(*RADIUS_RANGE)
    reach = radius * (TRIANGLE_CIRCUMRADIUS if kind == "triangle" else 1.0) + EDGE_MARGIN
    x, y = rng.uniform(reach, 1 - reach), rng.uniform(reach, 1 - reach)
    position = position_of(min(int(3 * x), 2), min(int(3 * y), 2))  # the cell its centroid falls in
    size = "large" if radius > LARGE_RADIUS else "small"
    return Shape(kind=kind, colour=colour, size=size, position=position, x=x, y=y, radius=radius)


def sample_control_scene(rng: random.Random) -> ShapeScene:
    """A training scene: mostly one shape anywhere, sometimes one of the world's own scenes; never held out."""
    if rng.random() < WORLD_SCENE_SHARE:
        return sample_scene(rng)
    while True:
        background = rng.choice(COLOURS)
        colour = rng.choice([c for c in COLOURS if c != background])
        scene = ShapeScene(background, (free_shape(rng, rng.choice(SHAPES), colour),))
        if not is_held_out(scene):
            return scene


def canny_detector() -> Callable[..., np.ndarray]:
    """controlnet_aux's CannyDetector (imported here: the package takes seconds to import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.canny import CannyDetector
    return CannyDetector()


def canny_map(detector: Callable[..., np.ndarray], image: Image.Image, resolution: int) -> np.ndarray:
    """Canny edges (uint8 [H, W], 0 or 255) of `image` at `resolution` px, as the app's preprocessor runs it."""
    low, high = CANNY_THRESHOLDS
    edges = detector(np.asarray(image.convert("RGB")), low, high, detect_resolution=resolution,
                     image_resolution=resolution, output_type="np")
    return edges[..., 0]


def scene_control_maps(detector: Callable[..., np.ndarray], scene: ShapeScene, size: int) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """(native, hires) canny maps of a scene at `size` px (see the module docstring)."""
    native = canny_map(detector, render(scene, size), size)
    hires = canny_map(detector, render(scene, HIRES_RESOLUTION), HIRES_RESOLUTION)
    return native, cv2.resize(hires, (size, size), interpolation=cv2.INTER_AREA)


def build_control_dataset(count: int, size: int, seed: int, tokenizer: CLIPTokenizer,
                          captions_per_scene: int = 4) -> ControlDataset:
    """`count` scenes with images, captions and both control maps; bit-reproducible from `seed`."""
    rng = random.Random(seed)
    scenes = [sample_control_scene(rng) for _ in range(count)]
    images = np.stack([np.asarray(render(scene, size)) for scene in scenes])
    texts = [caption(scene, rng) for scene in scenes for _ in range(captions_per_scene)]
    detector = canny_detector()
    natives, hires = zip(*(scene_control_maps(detector, scene, size) for scene in scenes))
    shapes = ShapesDataset(
        scenes=scenes,
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        captions=[texts[i:i + captions_per_scene] for i in range(0, len(texts), captions_per_scene)],
        token_ids=tokenize(tokenizer, texts).view(count, captions_per_scene, CLIP_LENGTH),
        empty_ids=tokenize(tokenizer, [""])[0],
    )
    return ControlDataset(shapes, torch.from_numpy(np.stack(natives)), torch.from_numpy(np.stack(hires)))


def control_batch(dataset: ControlDataset, indices: Tensor, generator: torch.Generator,
                  hires_share: float = 0.5) -> Tensor:
    """Control images [B, 3, H, W] in [0, 1] (the pipeline's range): native maps, or with probability
    `hires_share` the hires map, half of those soft and half thresholded to binary edges."""
    native = dataset.native_maps[indices].float() / 255.0
    soft = dataset.hires_maps[indices].float() / 255.0
    binary = (dataset.hires_maps[indices] >= BINARY_LEVEL).float()
    draw = torch.rand(len(indices), generator=generator)
    form = torch.where(draw < hires_share / 2, 1, torch.where(draw < hires_share, 2, 0))
    chosen = torch.where((form == 0)[:, None, None], native, torch.where((form == 1)[:, None, None], soft, binary))
    return chosen[:, None].expand(-1, 3, -1, -1).contiguous()
