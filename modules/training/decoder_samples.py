"""Fit the VAE decoder to the denoiser's own samples: the last stage of the default model's recipe.

A small denoiser's samples sit a little off the encoder's latent manifold: the shape's code is right in the
large but soft in the small, and a decoder that has only seen encoder latents renders that as a blob with
rounded corners and textured edges. Here the decoder also learns from latents the model itself produced.
Each source image's latent is noised to a random strength and sampled back (SDEdit, Meng et al. 2022) with the
app's default sampler and classifier-free guidance under one of the image's captions; the decoder learns to
turn that generated latent into the source image. The encoder, the UNet and the text encoder are untouched, so
the latent space and everything trained on it (ControlNets, LoRAs) stay valid, and every batch also holds
clean encoder latents so that encode → decode round trips (img2img, inpainting) stay accurate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel

from modules.training.dataset import ShapesDataset, caption_batch
from modules.training.evaluate import DEFAULT_STEPS, default_scheduler


@dataclass(frozen=True)
class SampledLatents:
    latents: Tensor  # [N, 4, h, w], unscaled: what `vae.decode` takes
    indices: Tensor  # [N]: the dataset image each one was sampled from (the decoder's target)


@dataclass(frozen=True)
class SamplingOptions:
    count: int  # latents to generate
    first_step: tuple[int, int]  # sampling starts at one of these steps of DEFAULT_STEPS (inclusive range)
    guidance: tuple[int, int]  # CFG scale per batch, an integer in this inclusive range
    batch_size: int
    seed: int


@torch.no_grad()
def sample_latents(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, scheduler_config: dict,
                   dataset: ShapesDataset, means: Tensor, scaling_factor: float, options: SamplingOptions,
                   device: torch.device | str = "cpu") -> SampledLatents:
    """SDEdit samples of random dataset images; `means`: every image's posterior mean ([N, 4, h, w], unscaled).

    Starting at step k of 20 is strength (20 − k)/20: the source fixes where the shape is, while the model
    draws the shape itself, so the pair's target (the source image) is what the sample depicts.
    """
    generator = torch.Generator().manual_seed(options.seed)
    empty = text_encoder(dataset.empty_ids[None].to(device)).last_hidden_state
    latents, indices = [], []
    for start in range(0, options.count, options.batch_size):
        count = min(options.batch_size, options.count - start)
        chosen = torch.randint(len(dataset), (count,), generator=generator)
        captions = caption_batch(dataset, chosen, generator, dropout=0.0).to(device)
        context = torch.cat([empty.expand(count, -1, -1), text_encoder(captions).last_hidden_state])
        first = int(torch.randint(options.first_step[0], options.first_step[1] + 1, (1,), generator=generator))
        guidance = float(torch.randint(options.guidance[0], options.guidance[1] + 1, (1,), generator=generator))
        scheduler = default_scheduler(scheduler_config)
        scheduler.set_timesteps(DEFAULT_STEPS)
        timesteps = scheduler.timesteps[first:]
        source = means[chosen] * scaling_factor
        noise = torch.randn(source.shape, generator=generator)
        z = scheduler.add_noise(source, noise, timesteps[:1].repeat(count)).to(device)
        scheduler.set_begin_index(first)
        for t in timesteps:
            unconditional, conditional = unet(torch.cat([z, z]), t, context).sample.chunk(2)
            z = scheduler.step(unconditional + guidance * (conditional - unconditional), t, z).prev_sample
        latents.append(z.cpu() / scaling_factor)
        indices.append(chosen)
    return SampledLatents(torch.cat(latents), torch.cat(indices))
