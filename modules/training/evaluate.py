"""Prompt adherence of a shapes model, measured with the app's default sampler and settings.

Default = A1111 "DPM++ 2M" with schedule "Automatic" (Karras), 20 steps, CFG 7: diffusers
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)`` on SD's
scheduler config. Each image's noise comes from its own CPU generator seeded with its seed, as in the app.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from PIL import Image

from modules.shapes.captions import parse_prompt
from modules.shapes.scorer import Adherence, read_image, score

DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0


def default_scheduler(scheduler_config: dict[str, Any]) -> DPMSolverMultistepScheduler:
    """The app's default sampler: DPM++ 2M, Karras sigmas."""
    return DPMSolverMultistepScheduler.from_config(
        scheduler_config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)


def build_pipeline(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any,
                   scheduler_config: dict[str, Any]) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=default_scheduler(scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe: StableDiffusionPipeline, prompts: list[str], seeds: list[int], size: int, *,
             steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG, batch_size: int = 16) -> list[Image.Image]:
    """One image per (prompt, seed), empty negative prompt, in batches (fresh scheduler state per call)."""
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[chunk]]
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        result = pipe(prompts[chunk], negative_prompt=[""] * len(prompts[chunk]), height=size, width=size,
                      num_inference_steps=steps, guidance_scale=cfg_scale, generator=generators)
        images.extend(result.images)
    return images


@dataclass(frozen=True)
class AdherenceReport:
    count: int
    core: float  # colour + background + shape all right
    colour: float
    background: float
    kind: float
    position: float
    size: float
    results: tuple[Adherence, ...]

    def table_rows(self) -> list[tuple[str, float]]:
        return [("colour + background + shape", self.core), ("shape colour", self.colour),
                ("background colour", self.background), ("shape class", self.kind),
                ("position (3×3 cell)", self.position), ("size", self.size)]


def adherence(images: list[Image.Image], prompts: list[str]) -> AdherenceReport:
    """Score each image against its prompt and average every attribute."""
    results = tuple(score(read_image(image), parse_prompt(prompt)) for image, prompt in zip(images, prompts))

    def share(values: list[bool | None]) -> float:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else float("nan")

    return AdherenceReport(
        count=len(results), core=share([r.core for r in results]), colour=share([r.colour for r in results]),
        background=share([r.background for r in results]), kind=share([r.kind for r in results]),
        position=share([r.position for r in results]), size=share([r.size for r in results]), results=results)
