"""Text encoder + UNet of the default model and their joint training (ε-prediction on SD's DDPM schedule).

Both are standard SD1 classes built from the SD1 family configs with small widths, so the app's loader reads
their sizes back from the weights. They train together on precomputed VAE latents: the text encoder has to
learn what the colour, shape and position words mean. Loss = min-SNR-γ weighted ε-MSE (Hang et al. 2023,
"Efficient Diffusion Training via Min-SNR Weighting Strategy"), which converges markedly faster than plain
ε-MSE. An exponential moving average of both models is what gets shipped.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel

from modules.training.dataset import ShapesDataset, caption_batch
from modules.training.vae import warmup_cosine

HEAD_WIDTH = 64  # CLIP text encoders use 64 channels per head; the loader infers heads the same way


def build_text_encoder(family_config: dict[str, Any], hidden: int, layers: int) -> CLIPTextModel:
    """A CLIP text encoder with the SD1 settings (quick_gelu, 77 positions, full 49,408-token vocabulary)."""
    config = {k: v for k, v in family_config.items() if k != "architectures"}
    config.update(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=max(1, hidden // HEAD_WIDTH), projection_dim=hidden)
    return CLIPTextModel(CLIPTextConfig(**config))


def build_unet(family_config: dict[str, Any], channels: tuple[int, ...], cross_attention_dim: int,
               sample_size: int) -> UNet2DConditionModel:
    """An SD1-layout UNet: cross-attention on every level but the last, one resnet per level, 8 heads."""
    config = {k: v for k, v in family_config.items() if not k.startswith("_")}
    levels = len(channels)
    config.update(
        block_out_channels=list(channels), layers_per_block=1, cross_attention_dim=cross_attention_dim,
        down_block_types=["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
        sample_size=sample_size,
    )
    return UNet2DConditionModel.from_config(config)


class ExponentialMovingAverage:
    """Shadow copy of parameters: θ̄ ← d·θ̄ + (1 − d)·θ, with d = min(decay, (1 + n)/(10 + n)) early on."""

    def __init__(self, modules: list[nn.Module], decay: float) -> None:
        self.parameters = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.parameters]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to_models(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters):
            param.copy_(shadow)


@dataclass
class DenoiserBatch:
    latents: Tensor  # [B, 4, h, w], already × scaling factor
    token_ids: Tensor  # [B, 77]


def latent_batch(means: Tensor, stds: Tensor, indices: Tensor, generator: torch.Generator) -> Tensor:
    """A sample of each image's latent posterior: z = μ + σ·ε."""
    mean, std = means[indices], stds[indices]
    return mean + std * torch.randn(mean.shape, generator=generator)


def denoising_loss(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, noise_schedule: DDPMScheduler,
                   batch: DenoiserBatch, generator: torch.Generator, snr_gamma: float) -> Tensor:
    """min-SNR-γ weighted ε-prediction loss: w(t) = min(SNR(t), γ) / SNR(t), SNR = ᾱ / (1 − ᾱ)."""
    latents = batch.latents
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(noise_schedule.config.num_train_timesteps, (len(latents),), generator=generator)
    alphas_cumprod = noise_schedule.alphas_cumprod[timesteps].to(device)
    timesteps = timesteps.to(device)
    noisy = noise_schedule.add_noise(latents, noise, timesteps)  # √ᾱ·x₀ + √(1 − ᾱ)·ε
    context = text_encoder(batch.token_ids).last_hidden_state
    predicted = unet(noisy, timesteps, context).sample
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    weight = torch.clamp(snr, max=snr_gamma) / snr
    per_sample = (predicted - noise).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


@dataclass(frozen=True)
class DenoiserTraining:
    steps: int
    batch_size: int
    learning_rate: float
    ema_decay: float
    caption_dropout: float  # share of empty prompts, for classifier-free guidance
    snr_gamma: float
    seed: int


def train_denoiser(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, noise_schedule: DDPMScheduler,
                   dataset: ShapesDataset, latents: tuple[Tensor, Tensor], options: DenoiserTraining,
                   device: torch.device | str = "cpu",
                   on_step: Callable[[int, float], None] | None = None) -> ExponentialMovingAverage:
    """Train both models in place; returns their EMA (call `copy_to_models()` to ship the averaged weights)."""
    generator = torch.Generator().manual_seed(options.seed)
    modules = [unet, text_encoder]
    parameters = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=0.01)
    warmup = min(200, options.steps // 10 + 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(options.steps, warmup))
    ema = ExponentialMovingAverage(modules, options.ema_decay)
    for module in modules:
        module.train()
    means, stds = latents
    for step in range(options.steps):
        indices = torch.randint(len(dataset), (options.batch_size,), generator=generator)
        batch = DenoiserBatch(latent_batch(means, stds, indices, generator).to(device),
                              caption_batch(dataset, indices, generator, options.caption_dropout).to(device))
        loss = denoising_loss(unet, text_encoder, noise_schedule, batch, generator, options.snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        ema.update()
        if on_step is not None:
            on_step(step, loss.item())
    for module in modules:
        module.eval()
    return ema
