"""Training data from the shapes world: rendered images plus several tokenized captions per scene.

Everything is drawn from one seed, so a dataset is reproducible bit for bit. Captions are tokenized once
(CLIP, 77 tokens, padded with the tokenizer's pad token) and a random one of each scene's captions is used
per step; a share of them is replaced by the empty prompt so the model also learns the unconditional
prediction classifier-free guidance needs.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import CLIPTokenizer

from modules.shapes.captions import caption
from modules.shapes.world import ShapeScene, is_held_out, render, sample_scene

CLIP_LENGTH = 77


@dataclass
class ShapesDataset:
    scenes: list[ShapeScene]
    images: Tensor  # uint8 [N, 3, size, size]
    captions: list[list[str]]  # [N][captions_per_scene]
    token_ids: Tensor  # int64 [N, captions_per_scene, 77]
    empty_ids: Tensor  # int64 [77]: the empty prompt ("" → BOS, EOS, pad…)

    def __len__(self) -> int:
        return len(self.scenes)


def tokenize(tokenizer: CLIPTokenizer, texts: list[str]) -> Tensor:
    """Token ids exactly as the app's prompt encoder builds one 77-token chunk (BOS, tokens, EOS, pad)."""
    return tokenizer(texts, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                     return_tensors="pt").input_ids


def build_dataset(count: int, size: int, seed: int, tokenizer: CLIPTokenizer,
                  captions_per_scene: int = 4) -> ShapesDataset:
    """`count` training scenes (held-out tuples excluded), rendered at `size` px, each with varied captions."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    images = np.stack([np.asarray(render(scene, size)) for scene in scenes])  # [N, H, W, 3]
    texts = [caption(scene, rng) for scene in scenes for _ in range(captions_per_scene)]
    token_ids = tokenize(tokenizer, texts).view(count, captions_per_scene, CLIP_LENGTH)
    return ShapesDataset(
        scenes=scenes,
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        captions=[texts[i:i + captions_per_scene] for i in range(0, len(texts), captions_per_scene)],
        token_ids=token_ids,
        empty_ids=tokenize(tokenizer, [""])[0],
    )


@dataclass
class ClassTwins:
    """For scenes that have one, the same scene with one shape's class changed (`class_twins`)."""
    indices: Tensor  # int64 [M]: dataset scenes with a twin
    images: Tensor  # uint8 [M, 3, size, size]: their twins, rendered


def class_twins(scenes: list[ShapeScene], size: int, seed: int) -> ClassTwins:
    """Each scene with its first shape's class swapped: circle ↔ square, a triangle becomes either. Twins that
    fall into the held-out split are skipped (never rendered for training)."""
    rng = random.Random(seed)
    indices, images = [], []
    for index, scene in enumerate(scenes):
        shape = scene.shapes[0]
        kind = {"circle": "square", "square": "circle"}.get(shape.kind) or rng.choice(("circle", "square"))
        twin = dataclasses.replace(scene, shapes=(dataclasses.replace(shape, kind=kind), *scene.shapes[1:]))
        if not is_held_out(twin):
            indices.append(index)
            images.append(np.asarray(render(twin, size)))
    return ClassTwins(torch.tensor(indices), torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] → float [-1, 1], the VAE's input range."""
    return images.float() / 127.5 - 1.0


def caption_batch(dataset: ShapesDataset, indices: Tensor, generator: torch.Generator,
                  dropout: float) -> Tensor:
    """One random caption per scene; with probability `dropout` the empty prompt instead ([B, 77])."""
    per_scene = dataset.token_ids.shape[1]
    choice = torch.randint(per_scene, (len(indices),), generator=generator)
    ids = dataset.token_ids[indices, choice]
    dropped = torch.rand(len(indices), generator=generator) < dropout
    ids[dropped] = dataset.empty_ids
    return ids
