"""The default model's VAE: a small SD-layout ``AutoencoderKL`` (4 levels = ×8, 4 latent channels).

Trained on whole images (GroupNorm's statistics span the picture, so crops would teach other statistics),
starting as a linear autoencoder (`start_as_linear_autoencoder`), with L1 + L2 + edge reconstruction terms and a
small KL term towards N(0, 1), sampling the posterior so the decoder tolerates the small latent errors a
diffusion model makes; `refine_decoder` later sharpens the decoder alone on the frozen encoder's latents
(and, last, on latents the denoiser generated: `decoder_samples`).
After training, `standardize_latents` folds a per-channel affine map into ``quant_conv``/``post_quant_conv``
so that ``scaling_factor · z`` has zero mean and unit variance with SD's own factor 0.18215: any SD1 loader
then scales our latents correctly.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import Tensor

from modules.training.dataset import ClassTwins, to_model_range
from modules.training.optimise import Optimisation, optimise

if TYPE_CHECKING:
    from modules.training.decoder_samples import SampledLatents

SD_SCALING_FACTOR = 0.18215
INITIAL_LOG_VARIANCE = -8.0  # σ ≈ 0.02 at the start: the decoder sees clean latents from the first step


def build_vae(family_config: dict[str, Any], channels: tuple[int, ...], layers_per_block: int,
              sample_size: int) -> AutoencoderKL:
    """An AutoencoderKL with the SD1 family's settings and our (small) widths."""
    config = {k: v for k, v in family_config.items() if not k.startswith("_")}
    config.update(
        block_out_channels=list(channels), layers_per_block=layers_per_block, sample_size=sample_size,
        down_block_types=["DownEncoderBlock2D"] * len(channels), up_block_types=["UpDecoderBlock2D"] * len(channels),
        scaling_factor=SD_SCALING_FACTOR,
    )
    return AutoencoderKL.from_config(config)


CARRIER = 8.0  # amplitude of the constant pattern that makes the output GroupNorms near-identity at the start


@torch.no_grad()
def start_as_linear_autoencoder(vae: AutoencoderKL) -> None:
    """Initialise so that training starts from a (nearly) linear autoencoder and only has to learn refinements.

    1. Every residual branch (resnet conv2, mid-block attention output) starts at zero, so each block is the
       identity (the "zero-init residual" trick): the encoder is conv_in → strided convs, the decoder
       conv_in → upsampling convs, a linear map the optimiser fits in a few hundred steps.
    2. The two GroupNorms outside residual branches (encoder and decoder `conv_norm_out`) normalise each group
       over the whole image, which erases absolute levels: a flat colour and its brightness would be lost. A
       large constant pattern v (sum 0 over each group) is added before each, and the norm's affine undoes it:
       with |h| ≪ |v| the group's mean stays 0 and its σ ≈ rms(v) up to second order in h, so
       γ·(v + h − μ)/σ + β = h when γ = rms(v), β = −v. Needs ≥ 3 channels per group (96+ channels at 32
       groups): with 2 the signal cannot be orthogonal to both the mean and the pattern.
    """
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv2d):
            # Variance-preserving (PyTorch's default keeps a third of the variance per layer: after the ~8
            # linear layers of the path the image signal would be 1/50 of the biases).
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            torch.nn.init.normal_(module.weight, std=1.0 / math.sqrt(fan_in))
            torch.nn.init.zeros_(module.bias)
    for block in list(vae.encoder.modules()) + list(vae.decoder.modules()):
        if isinstance(block, ResnetBlock2D):
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        elif isinstance(block, Attention):
            block.to_out[0].weight.zero_()
            block.to_out[0].bias.zero_()
    _add_carrier(vae.encoder.mid_block.resnets[-1].conv2, vae.encoder.conv_norm_out)
    _add_carrier(vae.decoder.up_blocks[-1].resnets[-1].conv2, vae.decoder.conv_norm_out)


def _add_carrier(last_conv: torch.nn.Conv2d, norm: torch.nn.GroupNorm) -> None:
    channels, groups = norm.num_channels, norm.num_groups
    per_group = channels // groups
    if per_group < 3:
        return  # no room for the pattern; the norm trains as it is
    phase = 2 * math.pi * torch.arange(per_group) / per_group
    pattern = (CARRIER * torch.cos(phase)).repeat(groups)
    last_conv.bias += pattern
    norm.weight.fill_(float(pattern[:per_group].pow(2).mean().sqrt()))
    norm.bias.copy_(-pattern)


@torch.no_grad()
def start_with_narrow_posterior(vae: AutoencoderKL) -> None:
    """Bias quant_conv's log σ² outputs low. A fresh encoder's σ ≈ 1 would drown its small means in noise
    and the decoder would learn nothing until the encoder had grown them; the KL term widens σ where allowed."""
    channels = vae.config.latent_channels
    vae.quant_conv.bias[channels:] = INITIAL_LOG_VARIANCE


SHAPE_PIXEL_WEIGHT = 4.0  # shapes cover ~5–15 % of an image; weighting them keeps the VAE from ignoring them


def pixel_weights(batch: Tensor, background: Tensor) -> Tensor:
    """1 on background pixels, SHAPE_PIXEL_WEIGHT elsewhere; `background` [B, 3, 1, 1] = each full image's
    corner colour (shapes never reach the corners)."""
    differs = (batch - background).abs().sum(dim=1, keepdim=True) > 0.1
    return 1.0 + (SHAPE_PIXEL_WEIGHT - 1.0) * differs.float()


def image_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical finite differences: x[..., i+1] − x[..., i]."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def vae_loss(vae: AutoencoderKL, batch: Tensor, background: Tensor, generator: torch.Generator,
             kl_weight: float, separation: ClassSeparation | None = None, step: int = 0) -> Tensor:
    """`reconstruction_loss` of a posterior sample + β·KL(q(z|x) ‖ N(0, 1)) (+ the `separation` term when the
    batch's second half holds the first half's class twins)."""
    posterior = vae.encode(batch).latent_dist
    # z = μ + σ·ε with ε drawn on the CPU generator
    epsilon = torch.randn(posterior.mean.shape, generator=generator).to(batch.device)
    reconstruction = vae.decode(posterior.mean + posterior.std * epsilon).sample
    # KL of a diagonal Gaussian: ½ (μ² + σ² − 1 − log σ²)
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    loss = reconstruction_loss(reconstruction, batch, background) + kl_weight * kl
    if separation is not None:
        loss = loss + separation.loss(posterior.mean, step, batch)
    return loss


@dataclass(frozen=True)
class ClassSeparation:
    """Asks the encoder to keep a shape's class a large feature of the latent, not a faint one.

    Reconstruction alone makes small circle vs square differ by ~5 % of the latent's norm (the few corner pixels
    are all the decoder loses by ignoring it), so a UNet trained with an MSE loss in that latent has little
    reason to learn the class. For each scene and its class twin (same scene, other class) the distance of
    their posterior means, relative to the latent's spread over the batch, is pushed up to `target`:
    weight · relu(log target − log ratio)². Scale-free, so `standardize_latents` keeps it. The spread is taken
    as given (no gradient): through it the encoder would raise the ratio most cheaply by shrinking everything
    else, the colours first (a trial did: 15.8 dB where the plain VAE reaches 24.5). `from_step`: the term is
    off (weight 0) for the first steps (tried so the reconstruction settles first; it came out worse than
    having the term from the start, docs/default-model.md).

    `local`: the distance counts only the latent cells near where the two images differ (the shape, one cell
    around it), and the pair's difference everywhere else is pushed to 0 ((distance there / target)²). Over the
    whole latent the cheapest way to move a pair apart is a shift of every cell, the background's too, which
    the decoder then has to undo (the global trials lost most of the colours).
    """
    weight: float
    target: float
    from_step: int = 0
    local: bool = False

    def loss(self, means: Tensor, step: int = 0, images: Tensor | None = None) -> Tensor:
        if step < self.from_step:
            return means.new_zeros(())
        pairs = len(means) // 2
        centred = means - means.mean(dim=(0, 2, 3), keepdim=True)
        spread = centred.std().detach() * math.sqrt(means[0].numel())  # the norm of a typical latent
        difference = means[:pairs] - means[pairs:2 * pairs]
        kept_equal = means.new_zeros(())
        if self.local:
            if images is None:
                raise ValueError("the local separation term needs the pairs' images")
            inside = differing_cells(images[:pairs], images[pairs:2 * pairs], means.shape[-1])
            kept_equal = ((difference * (1.0 - inside)).flatten(1).norm(dim=1) / spread / self.target).pow(2)
            difference = difference * inside
        ratio = difference.flatten(1).norm(dim=1) / spread
        apart = torch.relu(math.log(self.target) - torch.log(ratio + 1e-8)).pow(2)
        return self.weight * (apart + kept_equal).mean()


def differing_cells(first: Tensor, second: Tensor, latent_size: int) -> Tensor:
    """[B, 1, h, w] mask of the latent cells whose pixels differ between two image batches, grown by one cell."""
    differs = (first - second).abs().amax(dim=1, keepdim=True)
    cells = torch.nn.functional.adaptive_max_pool2d(differs, latent_size) > 0.02
    return torch.nn.functional.max_pool2d(cells.float(), 3, stride=1, padding=1)


def reconstruction_loss(reconstruction: Tensor, batch: Tensor, background: Tensor) -> Tensor:
    """w·(|x − x̂| + (x − x̂)²) + |∇x − ∇x̂|: w weights shape pixels up; the gradient term asks for edges and
    corners as sharp as the target's."""
    error = reconstruction - batch
    edges = sum((made - wanted).abs().mean()
                for made, wanted in zip(image_gradients(reconstruction), image_gradients(batch)))
    return (pixel_weights(batch, background) * (error.abs() + error.pow(2))).mean() + edges


def train_vae(vae: AutoencoderKL, images: Tensor, *, steps: int, batch_size: int, learning_rate: float,
              kl_weight: float, seed: int, device: torch.device | str = "cpu",
              on_step: Callable[[int, float], None] | None = None,
              twins: ClassTwins | None = None, separation: ClassSeparation | None = None) -> None:
    """Optimise the VAE in place (AdamW, linear warm-up then cosine decay); random numbers come from a CPU
    generator, so the data order is the same on every device.

    Whole images, never crops: GroupNorm's statistics are taken over the whole picture, so a VAE trained on
    crops sees other statistics than at use and gets colours wrong. With `twins` and `separation`, each batch
    is half scenes and half their class twins, and the `separation` term applies to the pairs.
    """
    if (twins is None) != (separation is None):
        raise ValueError("class twins and the separation term go together: pass both or neither")
    generator = torch.Generator().manual_seed(seed)
    start_as_linear_autoencoder(vae)
    start_with_narrow_posterior(vae)
    steps_done = 0

    def step_loss() -> Tensor:
        nonlocal steps_done
        steps_done += 1
        if twins is None or separation is None:
            indices = torch.randint(len(images), (batch_size,), generator=generator)
            batch, background = _image_batch(images, indices, device)
            return vae_loss(vae, batch, background, generator, kl_weight)
        picked = torch.randint(len(twins.indices), (batch_size // 2,), generator=generator)
        batch, background = _image_batch(torch.cat([images[twins.indices[picked]], twins.images[picked]]),
                                         torch.arange(2 * len(picked)), device)
        return vae_loss(vae, batch, background, generator, kl_weight, separation, steps_done - 1)

    _optimise_vae(vae, list(vae.parameters()), step_loss, steps=steps, learning_rate=learning_rate,
              warmup=min(100, steps // 10 + 1), on_step=on_step)


def refine_decoder(vae: AutoencoderKL, images: Tensor, latents: tuple[Tensor, Tensor], *, steps: int,
                   batch_size: int, learning_rate: float, seed: int, device: torch.device | str = "cpu",
                   on_step: Callable[[int, float], None] | None = None,
                   sampled: SampledLatents | None = None, sampled_per_batch: int = 0) -> None:
    """Train only the decoder further, on the encoder's (already computed) posterior samples.

    The encoder and therefore the latent space stay exactly as the UNet sees them, and a step costs the decoder
    alone (no encoder pass), so the sharpness of edges and corners improves at about half the price of a step
    of `train_vae`. `latents`: per-image posterior means and stds as `decode` takes them (unscaled).
    `sampled`: latents the denoiser generated from dataset images (see `decoder_samples`); each batch then
    holds `sampled_per_batch` of them, each with its source image as the target, and clean latents for the rest.
    """
    generator = torch.Generator().manual_seed(seed)
    means, stds = latents
    clean = batch_size - (sampled_per_batch if sampled is not None else 0)

    def step_loss() -> Tensor:
        indices = torch.randint(len(images), (clean,), generator=generator)
        z = means[indices] + stds[indices] * torch.randn(means[indices].shape, generator=generator)
        if sampled is not None:
            picked = torch.randint(len(sampled.latents), (sampled_per_batch,), generator=generator)
            z = torch.cat([z, sampled.latents[picked]])
            indices = torch.cat([indices, sampled.indices[picked]])
        batch, background = _image_batch(images, indices, device)
        return reconstruction_loss(vae.decode(z.to(device)).sample, batch, background)

    _optimise_vae(vae, [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()], step_loss, steps=steps,
              learning_rate=learning_rate, warmup=min(50, steps // 10 + 1), on_step=on_step)


def _image_batch(images: Tensor, indices: Tensor, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """The chosen images in the VAE's range (channels-last) and each one's corner (= background) colour."""
    batch = to_model_range(images[indices]).to(device).contiguous(memory_format=torch.channels_last)
    return batch, to_model_range(images[indices, :, :1, :1]).to(device)


def _optimise_vae(vae: AutoencoderKL, parameters: list[torch.nn.Parameter], step_loss: Callable[[], Tensor], *,
                  steps: int, learning_rate: float, warmup: int,
                  on_step: Callable[[int, float], None] | None) -> None:
    """`optimise` with the VAE in channels-last (~20 % faster on CPUs)."""
    vae.to(memory_format=torch.channels_last)
    optimise([vae], parameters, step_loss, Optimisation(steps, learning_rate, warmup), on_step)


@torch.no_grad()
def posterior_moments(vae: AutoencoderKL, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Posterior mean and std of every image's latent ([N, 4, h, w] each, on the CPU)."""
    device = next(vae.parameters()).device
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(to_model_range(images[start:start + batch_size]).to(device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def standardize_latents(vae: AutoencoderKL, latent_means: Tensor) -> tuple[Tensor, Tensor]:
    """Fold z' = a·(z − m) into the VAE so that 0.18215·z' has per-channel mean 0 and overall std 1.

    One scale a for all channels (as SD's single scaling factor): a channel the VAE barely uses stays small
    instead of having its posterior noise blown up. m is the per-channel mean.
    quant_conv yields [μ, log σ²]: μ' = a(μ − m), log σ'² = log σ² + 2 log a.
    post_quant_conv receives z = z'/a + m: W' = W / a, b' = b + W m.
    Returns (a, m) per channel, to map already-computed moments: μ' = a(μ − m), σ' = a·σ.
    """
    device = vae.quant_conv.weight.device
    mean = latent_means.mean(dim=(0, 2, 3)).to(device)
    centred_std = (latent_means - latent_means.mean(dim=(0, 2, 3), keepdim=True)).std().to(device)
    scale = torch.full_like(mean, 1.0 / float(centred_std * SD_SCALING_FACTOR))
    channels = len(mean)
    quant = vae.quant_conv
    quant.bias[:channels] = scale * (quant.bias[:channels] - mean)
    quant.weight[:channels] *= scale.view(-1, 1, 1, 1)
    quant.bias[channels:] += 2.0 * torch.log(scale)
    post = vae.post_quant_conv
    post.bias += (post.weight[:, :, 0, 0] @ mean)
    post.weight /= scale.view(1, -1, 1, 1)
    return scale.cpu(), mean.cpu()


def standardized_moments(means: Tensor, stds: Tensor, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Moments after `standardize_latents`, without encoding again: μ' = a(μ − m), σ' = a·σ."""
    a, m = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
    return a * (means - m), a * stds
