"""Where a shapes model's denoiser puts the shape for each place word, read without sampling (a "place map").

For each of the nine places, the prompt "a small red circle {place} on a blue background" goes to the UNet with
`draws` pure-noise latents at one high-noise timestep. The classifier-free-guided estimate of x₀ (guidance 7, the
app's default) is averaged over the draws. The background covers most of the image, so the estimate's
per-channel median is the background; where the estimate departs from it is where the model puts the shape. The
centroid of that departure names a 3×3 cell.
- A model that follows the place words puts all nine centroids in their cells, at every high noise level.
- One that ignores them puts all nine in one spot.
It takes seconds on a 2-core CPU. It agreed with the placement in generated images for every model measured
(docs/default-model.md), so it can follow the place words through a training run where scoring images cannot.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from modules.models.loader import ModelComponents
from modules.shapes.world import POSITIONS, position_of
from modules.training.dataset import tokenize
from modules.training.denoiser import epsilon_from_output
from modules.training.word_probe import PLACE_PHRASES

PLACE_PROMPT = "a small red circle {place} on a blue background"


@dataclass(frozen=True)
class PlaceReading:
    place: str  # the place the prompt names
    x: float  # centroid of the shape in the x₀ estimate, fraction of the width (0 = left)
    y: float  # fraction of the height (0 = top)

    @property
    def cell(self) -> str:
        """The 3×3 cell the centroid falls in."""
        return position_of(min(int(3 * self.x), 2), min(int(3 * self.y), 2))

    @property
    def right(self) -> bool:
        return self.cell == self.place


@torch.no_grad()
def place_map(model: ModelComponents, timestep: int, draws: int = 32, guidance: float = 7.0, seed: int = 0,
              prompt: str = PLACE_PROMPT) -> list[PlaceReading]:
    """One reading per place in POSITIONS (`model` in float32 on the CPU, as `load_checkpoint_file` returns it).
    `prompt` is a template with a {place} field (PLACE_PHRASES)."""
    unet, text_encoder, tokenizer = model.unet.eval(), model.text_encoder.eval(), model.tokenizer
    schedule = DDPMScheduler.from_config(model.scheduler_config)
    alpha = schedule.alphas_cumprod[timestep]
    side = model.native_size // 8
    noise = torch.randn(draws, 4, side, side, generator=torch.Generator().manual_seed(seed))
    noisy = (1 - alpha).sqrt() * noise  # x_t of the mean latent (0: the latents are standardised)
    t = torch.full((draws,), timestep)

    def context(text: str) -> torch.Tensor:  # encoded once, the same for every draw
        return text_encoder(tokenize(tokenizer, [text])).last_hidden_state.expand(draws, -1, -1)

    def predicted_noise(text: str) -> torch.Tensor:
        return epsilon_from_output(schedule, unet(noisy, t, context(text)).sample, noisy, t)

    unconditional = predicted_noise("")
    centre = (torch.arange(side) + 0.5) / side
    readings = []
    for place in POSITIONS:
        conditional = predicted_noise(prompt.format(place=PLACE_PHRASES[place]))
        epsilon = unconditional + guidance * (conditional - unconditional)
        estimate = ((noisy - (1 - alpha).sqrt() * epsilon) / alpha.sqrt()).mean(0)  # x̂₀ [4, h, w]
        background = estimate.flatten(1).median(dim=1).values.view(-1, 1, 1)
        departure = (estimate - background).norm(dim=0)
        weight = (departure - departure.median()).clamp(min=0) ** 2  # [h, w]: the shape, not the background
        total = weight.sum().clamp(min=1e-12)
        readings.append(PlaceReading(place, float((weight.sum(0) * centre).sum() / total),
                                     float((weight.sum(1) * centre).sum() / total)))
    return readings
