"""Train the embedded default model from scratch and write it as one A1111-style checkpoint.

    python -m modules.training.train_default_model --out models/Stable-diffusion/shapes-v3.safetensors

Stages (fixed seeds throughout): render the shapes dataset → train the VAE → encode every image once →
warm up the text encoder on caption attributes → train text encoder + UNet together with EMA (v-prediction,
min-SNR-γ weights with a floor at high noise levels, where the place words are learned) → refine the VAE
decoder on the frozen encoder's latents → fit the decoder to latents the finished model generates
(`decoder_samples`) → export the fp16 single file. Score it with ``python benchmarks/shapes_adherence.py`` (and
``benchmarks/shapes_word_probe.py``). Defaults reproduce the shipped file on a 2-core CPU in about an hour
(docs/default-model.md); a GPU is used when present (``--device auto``). Bit-exact equality of the weights needs
the same device, thread count and library versions.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import AutoencoderKL, DDPMScheduler
from tqdm import tqdm

from modules.models.architecture import family_config
from modules.models.loader import load_checkpoint_file
from modules.models.tokenizer import load_clip_tokenizer
from modules.training.dataset import ShapesDataset, build_dataset, class_twins
from modules.training.decoder_samples import SamplingOptions, sample_latents
from modules.training.denoiser import (
    DenoiserTraining, TimestepFocus, build_text_encoder, build_unet, train_denoiser,
)
from modules.training.export import export_checkpoint, model_metadata
from modules.training.text_pretrain import labels_for_captions, pretrain_text_encoder
from modules.training.vae import (
    ClassSeparation, build_vae, posterior_moments, refine_decoder, standardize_latents, standardized_moments, train_vae,
)

FAMILY = "sd15"


@dataclass(frozen=True)
class LaterStage:
    """A denoiser stage after the first: more UNet + text-encoder steps with their own schedule (warm-up, then
    cosine), fresh optimiser state and random numbers (recipe seed + `seed_offset`); `high_noise_share` of each
    batch is drawn from t ≥ `high_noise_from` only (`TimestepFocus`), the rest uniformly."""
    label: str
    steps: int
    seed_offset: int
    learning_rate: float = 3e-4
    ema_decay: float = 0.995
    warmup: int = 50
    high_noise_share: float = 0.0
    high_noise_from: int = 500

    def options(self, recipe: Recipe) -> DenoiserTraining:
        """The stage's training options, with the recipe's batch, caption dropout and min-SNR γ."""
        focus = TimestepFocus(self.high_noise_share, self.high_noise_from) if self.high_noise_share else None
        return DenoiserTraining(steps=self.steps, batch_size=recipe.unet_batch, learning_rate=self.learning_rate,
                                ema_decay=self.ema_decay, caption_dropout=recipe.caption_dropout,
                                snr_gamma=recipe.snr_gamma, seed=recipe.seed + self.seed_offset,
                                warmup=self.warmup, focus=focus, snr_floor=recipe.snr_floor)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the shipped weights (stored in the file's metadata)."""

    seed: int = 0
    image_size: int = 64
    scenes: int = 12000
    captions_per_scene: int = 4
    # GroupNorm has 32 groups in every SD1 model (the loader assumes it). The decoder's last norm (full
    # resolution, first width) and the encoder's (last width) need ≥ 3 channels per group to pass absolute
    # colours (see vae.start_as_linear_autoencoder); the levels between only sit inside residual branches.
    vae_channels: tuple[int, ...] = (96, 64, 64, 128)
    vae_steps: int = 1500
    vae_batch: int = 6
    vae_learning_rate: float = 2e-3
    vae_kl_weight: float = 1e-6
    # ClassSeparation (0 = off): each VAE batch is half scenes, half their class twins, and the encoder keeps
    # twins this far apart (relative to a typical latent's norm), so the class is a large feature of the latent
    vae_separation_weight: float = 0.0
    vae_separation_target: float = 0.15
    vae_separation_from: int = 0  # VAE step at which the term starts
    vae_separation_local: bool = False  # measured only where a pair differs; the rest of the pair kept equal
    decoder_steps: int = 400  # decoder-only refinement on the frozen encoder's latents
    decoder_learning_rate: float = 1e-3
    # Last stage: the decoder learns from latents the denoiser generated (see decoder_samples)
    sampled_latents: int = 2048
    sampling_first_step: tuple[int, int] = (5, 14)  # of 20: strength 0.75 … 0.3
    sampling_guidance: tuple[int, int] = (4, 9)
    sample_fit_steps: int = 400
    sample_fit_per_batch: int = 3  # of vae_batch; the rest are clean encoder latents
    sample_fit_learning_rate: float = 5e-4
    text_hidden: int = 64
    text_layers: int = 2
    text_warmup_steps: int = 300
    text_warmup_batch: int = 256
    text_warmup_learning_rate: float = 2e-3
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_steps: int = 3000
    unet_batch: int = 64
    unet_learning_rate: float = 1e-3
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    # The UNet predicts v and its x₀ error weighs max(min(SNR, γ), floor) (`denoiser.add_noise`). Plain
    # min-SNR-γ gives the high noise levels, where only the prompt can tell where the shape goes, almost no
    # weight: the place words then took 8,000 steps (shapes-v2). With the floor they take 3,000. The window is
    # narrow (docs/default-model.md): floor 0.1 left the place mostly wrong, 0.3 cost circle versus square, and
    # with ε-prediction no floor gave both.
    prediction_type: str = "v_prediction"
    snr_gamma: float = 5.0
    snr_floor: float = 0.2
    # The denoiser stages after the first, in order (see `LaterStage`); none in the shipped recipe. shapes-v2
    # trained on at a lower rate and then with half of each batch at high noise in three such stages (2 hours).
    later_stages: tuple[LaterStage, ...] = ()

    @property
    def denoiser_stages(self) -> int:
        """How many denoiser stages a complete `--denoiser-stage` cache has had: the first and the later ones."""
        return 1 + len(self.later_stages)


def progress(total: int, label: str) -> tuple[tqdm, Callable[[int, float], None]]:
    """A progress bar showing the running mean loss; returns (bar, on_step callback)."""
    bar = tqdm(total=total, desc=label, unit="step", file=sys.stdout, mininterval=2.0, dynamic_ncols=True)
    recent: list[float] = []

    def on_step(step: int, loss: float) -> None:
        recent.append(loss)
        del recent[:-50]
        bar.update(1)
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)

    return bar, on_step


def noise_schedule_config(recipe: Recipe) -> dict[str, object]:
    """SD's DDPM schedule with the recipe's prediction type: what training uses and the file declares."""
    return dict(family_config(FAMILY, "scheduler/scheduler_config.json"), prediction_type=recipe.prediction_type)


def resolve_device(name: str) -> torch.device:
    """"auto" = CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(recipe: Recipe, out: Path, device: torch.device = torch.device("cpu"),
          log: Callable[[str], None] = print, vae_file: Path | None = None, stop_after_vae: bool = False,
          denoiser_file: Path | None = None) -> Path:
    """Run every stage on `device`; returns the written checkpoint path.

    `vae_file`: where the trained VAE stage is kept; when it exists it is loaded instead of retrained (same
    recipe, same weights), so the denoiser can be iterated on without repeating the VAE stage. `denoiser_file`:
    the same for the denoiser stages (UNet + text encoder, fp32), so the decoder stages can be iterated on.
    """
    started = time.time()
    torch.manual_seed(recipe.seed)
    tokenizer = load_clip_tokenizer()
    dataset = build_dataset(recipe.scenes, recipe.image_size, recipe.seed, tokenizer, recipe.captions_per_scene)
    log(f"dataset: {len(dataset)} scenes at {recipe.image_size} px ({time.time() - started:.0f} s)")

    vae = build_vae(family_config(FAMILY, "vae/config.json"), recipe.vae_channels, 1, recipe.image_size)
    vae.to(device)
    if vae_file is not None and vae_file.is_file():
        vae.load_state_dict(torch.load(vae_file, map_location=device, weights_only=True))
        log(f"VAE stage read from {vae_file} (trained by this command with the same recipe)")
    else:
        separation = twins = None
        if recipe.vae_separation_weight:
            separation = ClassSeparation(recipe.vae_separation_weight, recipe.vae_separation_target,
                                         recipe.vae_separation_from, recipe.vae_separation_local)
            twins = class_twins(dataset.scenes, recipe.image_size, recipe.seed + 7)
            log(f"class twins: {len(twins.indices)} of {len(dataset)} scenes ({time.time() - started:.0f} s)")
        bar, on_step = progress(recipe.vae_steps, "VAE")
        train_vae(vae, dataset.images, steps=recipe.vae_steps, batch_size=recipe.vae_batch,
                  learning_rate=recipe.vae_learning_rate, kl_weight=recipe.vae_kl_weight, seed=recipe.seed + 1,
                  device=device, on_step=on_step, twins=twins, separation=separation)
        bar.close()
        if vae_file is not None:
            torch.save(vae.state_dict(), vae_file)
            log(f"VAE stage saved to {vae_file}")
    if stop_after_vae:
        return vae_file or out
    means, stds = posterior_moments(vae, dataset.images)
    means, stds = standardized_moments(means, stds, *standardize_latents(vae, means))
    scale = vae.config.scaling_factor
    latents = (means * scale, stds * scale)  # what the UNet sees: ~N(0, 1) per channel
    log(f"latents: {tuple(means.shape)}, scaled std {float(latents[0].std()):.3f} ({time.time() - started:.0f} s)")

    if denoiser_file is not None and denoiser_file.is_file():
        unet, text_encoder, stages_done = read_denoiser_stage(recipe, denoiser_file, device)
        log(f"UNet + text encoder after {stages_done} of {recipe.denoiser_stages} denoiser stages read from "
            f"{denoiser_file} (trained by this command with the same recipe)")
        trained = stages_done < recipe.denoiser_stages
    else:
        unet, text_encoder = train_text_and_unet(recipe, dataset, latents, device, log)
        stages_done, trained = 1, True
    if trained:
        for stage in recipe.later_stages[stages_done - 1:]:
            train_on(recipe, stage, dataset, latents, unet, text_encoder, device)
        log(f"denoiser trained ({time.time() - started:.0f} s)")
        if denoiser_file is not None:
            save_denoiser_stage(denoiser_file, unet, text_encoder, recipe.denoiser_stages)
            log(f"denoiser stages saved to {denoiser_file}")

    # The encoder stays frozen, so this changes nothing the UNet learned; it only sharpens what it decodes.
    bar, on_step = progress(recipe.decoder_steps, "VAE decoder refinement")
    refine_decoder(vae, dataset.images, (means, stds), steps=recipe.decoder_steps, batch_size=recipe.vae_batch,
                   learning_rate=recipe.decoder_learning_rate, seed=recipe.seed + 4, device=device, on_step=on_step)
    bar.close()
    fit_decoder_to_samples(recipe, dataset, vae, unet, text_encoder, (means, stds), device, log)
    return write_checkpoint(recipe, out, unet, vae, text_encoder, started, log)


def train_on(recipe: Recipe, stage: LaterStage, dataset: ShapesDataset,
             latents: tuple[torch.Tensor, torch.Tensor], unet: torch.nn.Module, text_encoder: torch.nn.Module,
             device: torch.device) -> None:
    """One later denoiser stage on trained models (`latents`: scaled posterior means and stds), with a progress
    bar; ends with its EMA weights in them."""
    noise_schedule = DDPMScheduler.from_config(noise_schedule_config(recipe))
    options = stage.options(recipe)
    bar, on_step = progress(options.steps, f"UNet + text encoder, {stage.label}")
    ema = train_denoiser(unet, text_encoder, noise_schedule, dataset, latents, options, device, on_step)
    bar.close()
    ema.copy_to_models()


def fit_decoder_to_samples(recipe: Recipe, dataset: ShapesDataset, vae: AutoencoderKL, unet: torch.nn.Module,
                           text_encoder: torch.nn.Module, moments: tuple[torch.Tensor, torch.Tensor],
                           device: torch.device, log: Callable[[str], None]) -> None:
    """The last stage: generate latents with the finished denoiser, then train the decoder on them and on
    clean latents (`moments`: standardised posterior means and stds of every dataset image, unscaled)."""
    started = time.time()
    options = SamplingOptions(count=recipe.sampled_latents, first_step=recipe.sampling_first_step,
                              guidance=recipe.sampling_guidance, batch_size=64, seed=recipe.seed + 5)
    sampled = sample_latents(unet, text_encoder, noise_schedule_config(recipe), dataset,
                             moments[0], vae.config.scaling_factor, options, device)
    log(f"sampled {len(sampled.latents)} latents for the decoder ({time.time() - started:.0f} s)")
    bar, on_step = progress(recipe.sample_fit_steps, "VAE decoder on the model's samples")
    refine_decoder(vae, dataset.images, moments, steps=recipe.sample_fit_steps, batch_size=recipe.vae_batch,
                   learning_rate=recipe.sample_fit_learning_rate, seed=recipe.seed + 6, device=device,
                   on_step=on_step, sampled=sampled, sampled_per_batch=recipe.sample_fit_per_batch)
    bar.close()


def recipe_fields(recipe: Recipe) -> dict[str, object]:
    """The recipe as the file's metadata stores it. With the class-separation term off its fields are left
    out, so the shipped recipe still writes the shipped file byte for byte."""
    fields = dataclasses.asdict(recipe)
    if not recipe.vae_separation_weight:
        for name in ("weight", "target", "from", "local"):
            del fields[f"vae_separation_{name}"]
    return fields


def write_checkpoint(recipe: Recipe, out: Path, unet: torch.nn.Module, vae: AutoencoderKL,
                     text_encoder: torch.nn.Module, started: float, log: Callable[[str], None]) -> Path:
    metadata = model_metadata(
        native_size=recipe.image_size, recipe=recipe_fields(recipe), title="shapes-v3",
        prediction_type=recipe.prediction_type,
        description="Tiny text-to-image model trained in-repo on the generated shapes world "
                    "(flat circles, squares and triangles on plain backgrounds).")
    path = export_checkpoint(out, unet, vae, text_encoder, metadata)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {(time.time() - started) / 60:.1f} min")
    return path


@dataclass
class StageInputs:
    """What a late stage needs, read back from a checkpoint this command wrote (the stage caches)."""
    dataset: ShapesDataset
    unet: torch.nn.Module
    vae: AutoencoderKL
    text_encoder: torch.nn.Module
    moments: tuple[torch.Tensor, torch.Tensor]  # standardised posterior means and stds, unscaled


def read_stage_inputs(recipe: Recipe, checkpoint: Path, device: torch.device,
                      log: Callable[[str], None]) -> StageInputs:
    started = time.time()
    torch.manual_seed(recipe.seed)
    dataset = build_dataset(recipe.scenes, recipe.image_size, recipe.seed, load_clip_tokenizer(),
                            recipe.captions_per_scene)
    components = load_checkpoint_file(checkpoint)
    unet, vae, text_encoder = (m.float().to(device).eval()
                               for m in (components.unet, components.vae, components.text_encoder))
    moments = posterior_moments(vae, dataset.images)  # already standardised: the file's VAE has it folded in
    log(f"dataset and latents from {checkpoint} ({time.time() - started:.0f} s)")
    return StageInputs(dataset, unet, vae, text_encoder, moments)


def refit_decoder(recipe: Recipe, checkpoint: Path, out: Path, device: torch.device = torch.device("cpu"),
                  log: Callable[[str], None] = print) -> Path:
    """Run only the decoder stage on a checkpoint this command's earlier stages wrote (the stage cache of
    `--refit-decoder`): same dataset, its UNet, text encoder and VAE; writes the result to `out`."""
    started = time.time()
    inputs = read_stage_inputs(recipe, checkpoint, device, log)
    fit_decoder_to_samples(recipe, inputs.dataset, inputs.vae, inputs.unet, inputs.text_encoder, inputs.moments,
                           device, log)
    return write_checkpoint(recipe, out, inputs.unet, inputs.vae, inputs.text_encoder, started, log)


# What `--continue-denoiser` trains when the recipe has no later stage of its own: more steps at a lower rate.
CONTINUED = LaterStage("continued", steps=1600, seed_offset=123)


def continue_from(recipe: Recipe, checkpoint: Path, out: Path, device: torch.device = torch.device("cpu"),
                  log: Callable[[str], None] = print) -> Path:
    """Run only one more denoiser stage (the first of `recipe.later_stages`, else `CONTINUED`) on a checkpoint
    (`--continue-denoiser`: more training for any checkpoint this command wrote; the decoder is not refitted);
    writes the result to `out`."""
    started = time.time()
    inputs = read_stage_inputs(recipe, checkpoint, device, log)
    scale = inputs.vae.config.scaling_factor
    latents = (inputs.moments[0] * scale, inputs.moments[1] * scale)
    stage = recipe.later_stages[0] if recipe.later_stages else CONTINUED
    train_on(recipe, stage, inputs.dataset, latents, inputs.unet, inputs.text_encoder, device)
    return write_checkpoint(recipe, out, inputs.unet, inputs.vae, inputs.text_encoder, started, log)


def train_text_and_unet(recipe: Recipe, dataset: ShapesDataset, latents: tuple[torch.Tensor, torch.Tensor],
                        device: torch.device, log: Callable[[str], None]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Text-encoder warm-up, then text encoder + UNet trained together; returns their EMA weights."""
    text_encoder = build_text_encoder(family_config(FAMILY, "text_encoder/config.json"), recipe.text_hidden,
                                      recipe.text_layers).to(device)
    bar, on_step = progress(recipe.text_warmup_steps, "text encoder warm-up")
    captions = [text for texts in dataset.captions for text in texts]
    accuracy = pretrain_text_encoder(
        text_encoder, dataset.token_ids.flatten(0, 1), labels_for_captions(captions),
        steps=recipe.text_warmup_steps, batch_size=recipe.text_warmup_batch,
        learning_rate=recipe.text_warmup_learning_rate, seed=recipe.seed + 3, device=device, on_step=on_step)
    bar.close()
    log(f"text encoder reads caption attributes with {100 * accuracy:.1f} % accuracy")
    unet = build_unet(family_config(FAMILY, "unet/config.json"), recipe.unet_channels, recipe.text_hidden,
                      recipe.image_size // 8).to(device)
    noise_schedule = DDPMScheduler.from_config(noise_schedule_config(recipe))
    options = DenoiserTraining(steps=recipe.unet_steps, batch_size=recipe.unet_batch,
                               learning_rate=recipe.unet_learning_rate, ema_decay=recipe.ema_decay,
                               caption_dropout=recipe.caption_dropout, snr_gamma=recipe.snr_gamma,
                               seed=recipe.seed + 2, snr_floor=recipe.snr_floor)
    bar, on_step = progress(recipe.unet_steps, "UNet + text encoder")
    ema = train_denoiser(unet, text_encoder, noise_schedule, dataset, latents, options, device, on_step)
    bar.close()
    ema.copy_to_models()
    return unet, text_encoder


def save_denoiser_stage(path: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module, stages: int) -> None:
    """The `--denoiser-stage` cache after `stages` denoiser stages, written whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    torch.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "stages": stages},
               partial)
    partial.replace(path)


def read_denoiser_stage(recipe: Recipe, path: Path,
                        device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """UNet, text encoder and how many denoiser stages they have had, as `train` saved them (the cache of
    `--denoiser-stage`; caches without a count hold the first two stages, from before the third existed). A cache
    with more stages than the recipe has is refused: it is not what this recipe trains."""
    saved = torch.load(path, map_location=device, weights_only=True)
    stages = int(saved.get("stages", 2))
    if stages > recipe.denoiser_stages:
        raise ValueError(f"{path} holds {stages} denoiser stages; this recipe has {recipe.denoiser_stages}")
    text_encoder = build_text_encoder(family_config(FAMILY, "text_encoder/config.json"), recipe.text_hidden,
                                      recipe.text_layers).to(device)
    unet = build_unet(family_config(FAMILY, "unet/config.json"), recipe.unet_channels, recipe.text_hidden,
                      recipe.image_size // 8).to(device)
    unet.load_state_dict(saved["unet"])
    text_encoder.load_state_dict(saved["text_encoder"])
    # The memory format training leaves the UNet in: convolutions round differently in the other one, so the
    # decoder stage's samples (and the shipped decoder) would differ from a run without the cache.
    unet.to(memory_format=torch.channels_last)
    return unet.eval(), text_encoder.eval(), stages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/Stable-diffusion/shapes-v3.safetensors"))
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--steps", type=int, default=Recipe.unet_steps, help="UNet + text encoder steps")
    parser.add_argument("--vae-steps", type=int, default=Recipe.vae_steps)
    parser.add_argument("--scenes", type=int, default=Recipe.scenes, help="training images to render")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--vae-stage", type=Path, default=None,
                        help="keep the trained VAE here and reuse it when present (stage cache)")
    parser.add_argument("--vae-only", action="store_true", help="stop after the VAE stage (needs --vae-stage)")
    parser.add_argument("--denoiser-stage", type=Path, default=None,
                        help="keep the trained UNet + text encoder (all denoiser stages) here and reuse them when "
                             "present (stage cache)")
    parser.add_argument("--refit-decoder", type=Path, default=None, metavar="CKPT",
                        help="run only the decoder stage (decoder on the model's samples) on this checkpoint")
    parser.add_argument("--continue-denoiser", type=Path, default=None, metavar="CKPT",
                        help="run only one more denoiser stage (more UNet + text encoder steps at a lower "
                             "rate) on this checkpoint")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.vae_only and args.vae_stage is None:
        raise SystemExit("--vae-only needs --vae-stage FILE: where to keep the trained VAE")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = dataclasses.replace(Recipe(), seed=args.seed, unet_steps=args.steps, vae_steps=args.vae_steps,
                                 scenes=args.scenes)
    if args.refit_decoder is not None:
        refit_decoder(recipe, args.refit_decoder, args.out, resolve_device(args.device))
        return
    if args.continue_denoiser is not None:
        continue_from(recipe, args.continue_denoiser, args.out, resolve_device(args.device))
        return
    train(recipe, args.out, resolve_device(args.device), vae_file=args.vae_stage, stop_after_vae=args.vae_only,
          denoiser_file=args.denoiser_stage)


if __name__ == "__main__":
    main()
