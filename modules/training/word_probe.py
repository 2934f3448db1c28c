"""How strongly a shapes model's denoiser listens to one word of the prompt (a "diffusion classifier" probe).

For a rendered scene, noise its latent to timestep t and ask the UNet for ε twice with the same noise (a
v-prediction UNet's output converted to ε): once under the scene's true prompt, once with one attribute word
swapped ("red circle" → "red square"). A model that uses the word predicts the noise better under the true
prompt. The share of (scene, alternative, noise) comparisons the true prompt wins, per timestep, is the probe's
reading: 0.5 = the word is ignored, 1.0 = always decisive.
For the place, every case is the plain prompt "a {size} {colour} {shape} {place} on a {colour} background" and the
alternatives name each of the other eight places.

It reads the conditioning directly, without sampling or decoding, so it is far less noisy per second of CPU
than generating images and scoring them (`benchmarks/shapes_adherence.py`), and it says at which noise levels a
word is understood — shape class is decided in the middle of the schedule, colour already at high noise.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import Tensor

from modules.models.loader import ModelComponents
from modules.shapes.captions import EvalPrompt, with_article
from modules.shapes.world import COLOURS, POSITIONS, SHAPES, ShapeScene, render
from modules.training.dataset import tokenize, to_model_range
from modules.training.denoiser import epsilon_from_output

ATTRIBUTES = ("shape", "colour", "position")
PLACE_PHRASES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
DEFAULT_TIMESTEPS = (50, 150, 300, 450, 600, 800, 950)  # the place is decided at high noise


@dataclass(frozen=True)
class ProbeCase:
    scene: ShapeScene  # one shape
    prompt: str  # names the shape as "{colour} {kind}"
    alternatives: tuple[str, ...]  # the same prompt with one attribute word swapped


def swapped_prompts(scene: ShapeScene, prompt: str, attribute: str) -> tuple[str, ...]:
    """`prompt` with the shape's class (or colour) replaced by every other class (or shape colour)."""
    shape = scene.shapes[0]
    phrase = f"{shape.colour} {shape.kind}"
    if phrase not in prompt:
        raise ValueError(f"prompt {prompt!r} does not name {phrase!r}")
    if attribute == "shape":
        phrases = [f"{shape.colour} {kind}" for kind in SHAPES if kind != shape.kind]
    elif attribute == "colour":
        phrases = [f"{colour} {shape.kind}" for colour in COLOURS if colour not in (shape.colour, scene.background)]
    else:
        raise ValueError(f"attribute must be 'shape' or 'colour', not {attribute!r}")
    return tuple(prompt.replace(phrase, other, 1) for other in phrases)


def placed_prompt(scene: ShapeScene, position: str) -> str:
    """The scene's shape named in full, at `position`: "a small red circle on the left on a blue background"."""
    shape = scene.shapes[0]
    return (f"a {shape.size} {shape.colour} {shape.kind} {PLACE_PHRASES[position]} "
            f"on {with_article(scene.background)} background")


def probe_cases(prompts: Sequence[EvalPrompt], attribute: str) -> list[ProbeCase]:
    """One case per held-out evaluation prompt (its reference scene, its text, the swapped texts)."""
    if attribute == "position":
        return [ProbeCase(item.scene, placed_prompt(item.scene, item.scene.shapes[0].position),
                          tuple(placed_prompt(item.scene, other) for other in POSITIONS
                                if other != item.scene.shapes[0].position))
                for item in prompts]
    return [ProbeCase(item.scene, item.prompt, swapped_prompts(item.scene, item.prompt, attribute))
            for item in prompts]


@torch.no_grad()
def word_preference(model: ModelComponents, cases: Sequence[ProbeCase], timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
                    repeats: int = 2, seed: int = 0) -> dict[int, Tensor]:
    """Timestep → for each (case, alternative) [cases, alternatives], the share of noise draws in which the true
    prompt predicts the noise better than the swapped one (`model` in float32 on the CPU, as
    `load_checkpoint_file` returns it). Average it for the probe's reading."""
    unet, vae, text_encoder, tokenizer = model.unet.eval(), model.vae.eval(), model.text_encoder, model.tokenizer
    noise_schedule = DDPMScheduler.from_config(model.scheduler_config)
    size = model.native_size
    generator = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(np.stack([np.asarray(render(case.scene, size)) for case in cases]))
    latents = vae.encode(to_model_range(images.permute(0, 3, 1, 2))).latent_dist.mean * vae.config.scaling_factor
    true_context = text_encoder(tokenize(tokenizer, [case.prompt for case in cases])).last_hidden_state
    per_alternative = len(cases[0].alternatives)
    swapped = [alternative for case in cases for alternative in case.alternatives]
    swapped_context = text_encoder(tokenize(tokenizer, swapped)).last_hidden_state
    readings: dict[int, Tensor] = {}
    for timestep in timesteps:
        wins = torch.zeros(len(cases) * per_alternative)
        for _ in range(repeats):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.full((len(cases),), timestep)
            noisy = noise_schedule.add_noise(latents, noise, t)
            true_noise = epsilon_from_output(noise_schedule, unet(noisy, t, true_context).sample, noisy, t)
            true_error = (true_noise - noise).pow(2).mean(dim=(1, 2, 3))
            repeated = noisy.repeat_interleave(per_alternative, 0)
            t_repeated = t.repeat_interleave(per_alternative)
            swapped_noise = epsilon_from_output(noise_schedule, unet(repeated, t_repeated, swapped_context).sample,
                                                repeated, t_repeated)
            swapped_error = (swapped_noise - noise.repeat_interleave(per_alternative, 0)).pow(2).mean(dim=(1, 2, 3))
            wins += (true_error.repeat_interleave(per_alternative) < swapped_error).float()
        readings[timestep] = (wins / repeats).view(len(cases), per_alternative)
    return readings
