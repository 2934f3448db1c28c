"""Seeds and initial noise, drawn exactly like A1111 with `randn_source = CPU` (infotext `RNG: CPU`).

Each image's noise comes from its own CPU `torch.Generator` seeded with that image's seed, so an image
does not depend on the batch it was generated in, nor on the GPU model (STYLE rule 10).
Ported from A1111 v1.10 `modules/rng.py` (`ImageRNG.first`, `slerp`) and `processing.py` (seed lists).
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
from torch import Tensor

MAX_SEED = 4294967294  # A1111: random.randrange(4294967294)
LATENT_FACTOR = 8  # A1111's seed-resize maths assumes 8 pixels per latent cell


def resolve_seed(seed: int | None, rng: random.Random | None = None) -> int:
    """-1 (any negative) or None → a random seed in [0, MAX_SEED); otherwise the seed itself."""
    if seed is None or seed < 0:
        return (rng or random.Random()).randrange(MAX_SEED)
    return int(seed)


def image_seeds(seed: int, count: int, subseed: int, subseed_strength: float) -> tuple[list[int], list[int]]:
    """Per-image (seeds, subseeds) of a job, from resolved seeds.

    A1111: image i gets seed + i; with a variation strength > 0 every image shares the seed and only
    the variation seed varies (subseed + i).
    """
    if seed < 0 or subseed < 0:
        raise ValueError(f"resolve seeds first (resolve_seed); got seed={seed}, subseed={subseed}")
    seeds = [seed + (i if subseed_strength == 0 else 0) for i in range(count)]
    subseeds = [subseed + i for i in range(count)]
    return seeds, subseeds


def slerp(t: float, low: Tensor, high: Tensor) -> Tensor:
    """A1111's spherical interpolation from `low` (t = 0) to `high` (t = 1).

    Norms are taken along dim 1 (the latent height for [C, H, W] noise), as A1111 does.
    res = sin((1-t)·Ω)/sin Ω · low + sin(t·Ω)/sin Ω · high, with cos Ω = <low/|low|, high/|high|>.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        # nearly parallel: A1111 falls back to a lerp with t and 1-t swapped; kept for identical seeds
        return low * t + high * (1 - t)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / sin_omega).unsqueeze(1) * low + \
        (torch.sin(t * omega) / sin_omega).unsqueeze(1) * high


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


def _paste_centered(noise: Tensor, canvas: Tensor) -> Tensor:
    """Paste `noise` [C, h, w] into `canvas` [C, H, W], centred; crop where it is bigger (A1111 seed resize)."""
    dx = (canvas.shape[2] - noise.shape[2]) // 2
    dy = (canvas.shape[1] - noise.shape[1]) // 2
    width = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    height = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    target_x, target_y = max(dx, 0), max(dy, 0)
    source_x, source_y = max(-dx, 0), max(-dy, 0)
    canvas[:, target_y:target_y + height, target_x:target_x + width] = \
        noise[:, source_y:source_y + height, source_x:source_x + width]
    return canvas


def _noise_shape(shape: tuple[int, int, int], seed_resize_from: tuple[int, int] | None) -> tuple[int, int, int]:
    """Latent shape the seed's noise is drawn at: the original size when resizing from (width, height)."""
    if seed_resize_from is None or seed_resize_from[0] <= 0 or seed_resize_from[1] <= 0:
        return shape
    width, height = seed_resize_from
    return shape[0], int(height) // LATENT_FACTOR, int(width) // LATENT_FACTOR


def _image_noise(shape: tuple[int, int, int], seed: int, subseed: int | None, subseed_strength: float,
                 seed_resize_from: tuple[int, int] | None) -> Tensor:
    noise_shape = _noise_shape(shape, seed_resize_from)
    generator = _generator(seed)
    noise = torch.randn(noise_shape, generator=generator, dtype=torch.float32)
    if subseed is not None:
        subnoise = torch.randn(noise_shape, generator=_generator(subseed), dtype=torch.float32)
        noise = slerp(subseed_strength, noise, subnoise)
    if noise_shape != shape:
        # A1111 draws the full-size canvas from the same generator, after the first draw
        canvas = torch.randn(shape, generator=generator, dtype=torch.float32)
        noise = _paste_centered(noise, canvas)
    return noise


def create_noise(shape: tuple[int, int, int], seeds: Sequence[int], *, subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None) -> Tensor:
    """Initial latent noise [B, C, H, W] (float32, CPU) for latent `shape` [C, H, W], one image per seed.

    Variation (subseed_strength > 0): slerp(strength, noise(seed), noise(subseed)); A1111 uses subseed 0
    for images beyond the subseed list. `seed_resize_from` = (width, height) in pixels: the seed's noise is
    drawn at that size and pasted centred into fresh noise of the target size, keeping the composition.
    """
    shape = tuple(int(size) for size in shape)
    images = []
    for index, seed in enumerate(seeds):
        subseed = None
        if subseeds is not None and subseed_strength != 0:
            subseed = subseeds[index] if index < len(subseeds) else 0
        images.append(_image_noise(shape, seed, subseed, subseed_strength, seed_resize_from))
    return torch.stack(images)
