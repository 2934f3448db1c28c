"""Train the canny ControlNet of the default model and write it as an A1111/lllyasviel single file.

    python -m modules.training.train_controlnet --out models/ControlNet/shapes-canny-v3.safetensors

Stages (fixed seeds throughout): load shapes-v3 through the app's loader → render the scenes (shapes anywhere)
with captions and canny maps → encode every image once with the model's own VAE → train the ControlNet
(UNet, VAE and text encoder frozen; EMA of its weights) → export fp16 with ``control_model.*`` keys. Score it
with ``python benchmarks/shapes_controlnet.py``. A GPU is used when present (``--device auto``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import ControlNetModel, DDPMScheduler

from modules.models.loader import ModelComponents, load_checkpoint_file
from modules.paths import PROJECT_ROOT
from modules.training.controlnet import ControlNetTraining, FrozenModel, build_controlnet, train_controlnet
from modules.training.controlnet_data import ControlDataset, build_control_dataset
from modules.training.controlnet_export import controlnet_metadata, export_controlnet
from modules.training.train_default_model import progress, resolve_device
from modules.training.vae import posterior_moments

BASE_CHECKPOINT = PROJECT_ROOT / "models" / "Stable-diffusion" / "shapes-v3.safetensors"
DEFAULT_OUT = PROJECT_ROOT / "models" / "ControlNet" / "shapes-canny-v3.safetensors"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the shipped weights (stored in the file's metadata)."""

    seed: int = 0
    scenes: int = 2500
    captions_per_scene: int = 4
    steps: int = 2500
    batch: int = 16  # scenes per step; the guided loss runs each twice (with and without its caption)
    learning_rate: float = 1e-3
    ema_decay: float = 0.995
    caption_dropout: float = 0.3
    max_guidance: float = 8.0
    snr_gamma: float = 5.0
    hires_share: float = 0.5


def encode_latents(components: ModelComponents, dataset: ControlDataset,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image × the VAE's scaling factor: what the UNet sees."""
    vae = components.vae.to(device)
    means, stds = posterior_moments(vae, dataset.shapes.images, batch_size=64)
    scale = vae.config.scaling_factor
    return means * scale, stds * scale


def train(recipe: Recipe, out: Path, device: torch.device = torch.device("cpu"), base: Path = BASE_CHECKPOINT,
          log: Callable[[str], None] = print) -> Path:
    """Run every stage on `device`; returns the written ControlNet path."""
    started = time.time()
    torch.manual_seed(recipe.seed)
    components = load_checkpoint_file(base)  # float32 on the CPU
    size = components.native_size
    dataset = build_control_dataset(recipe.scenes, size, recipe.seed, components.tokenizer,
                                    recipe.captions_per_scene)
    log(f"dataset: {len(dataset)} scenes at {size} px with canny maps ({time.time() - started:.0f} s)")
    latents = encode_latents(components, dataset, device)
    log(f"latents: {tuple(latents[0].shape)}, std {float(latents[0].std()):.3f} ({time.time() - started:.0f} s)")

    controlnet = build_controlnet(components.unet, seed=recipe.seed).to(device)
    frozen = FrozenModel(components.unet.to(device), components.text_encoder.to(device),
                         DDPMScheduler.from_config(components.scheduler_config))
    options = ControlNetTraining(
        steps=recipe.steps, batch_size=recipe.batch, learning_rate=recipe.learning_rate,
        ema_decay=recipe.ema_decay, caption_dropout=recipe.caption_dropout,
        max_guidance=recipe.max_guidance, snr_gamma=recipe.snr_gamma,
        hires_share=recipe.hires_share, seed=recipe.seed + 1)
    bar, on_step = progress(recipe.steps, "ControlNet")
    ema = train_controlnet(controlnet, frozen, dataset, latents, options, device, on_step)
    bar.close()
    ema.copy_to_models()
    log(f"ControlNet trained ({time.time() - started:.0f} s)")
    path = save(out, controlnet, recipe, size)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {(time.time() - started) / 60:.1f} min")
    return path


def save(out: Path, controlnet: ControlNetModel, recipe: Recipe, native_size: int) -> Path:
    metadata = controlnet_metadata(
        controlnet, preprocessor="canny", native_size=native_size, title=out.stem,
        description="Canny-edge ControlNet for the default shapes-v3 model, trained in-repo on the shapes world: "
                    "the generated shape follows the outline of the control image.",
        recipe={**dataclasses.asdict(recipe), "base_model": BASE_CHECKPOINT.name})
    return export_controlnet(out, controlnet, metadata)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--base", type=Path, default=BASE_CHECKPOINT, help="the SD1 checkpoint to control")
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    parser.add_argument("--batch", type=int, default=Recipe.batch)
    parser.add_argument("--scenes", type=int, default=Recipe.scenes, help="training images to render")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (0 = torch's default). 1 by default: on a busy 2-core machine two threads "
                             "made a step 4× slower than one (OpenMP threads waiting for each other)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = dataclasses.replace(Recipe(), seed=args.seed, steps=args.steps, batch=args.batch, scenes=args.scenes)
    train(recipe, args.out, resolve_device(args.device), base=args.base)


if __name__ == "__main__":
    main()
