"""Does a generated shape follow the outline of the control image? The canny ControlNet of the default model.

    python benchmarks/shapes_controlnet.py [--controlnet models/ControlNet/shapes-canny-v3.safetensors]
                                           [--count 32] [--grid docs/shapes-controlnet-samples.png]

For each of `count` held-out (prompt, scene) pairs (`modules.shapes.captions.eval_prompts`: attribute tuples
never rendered for training, prompts naming size and place) it renders the scene at the model's native size,
takes its canny map the way the app's "canny" preprocessor does at that size (pixel perfect, thresholds
100/200), generates with the default settings (DPM++ 2M Karras, 20 steps, CFG 7, unit weight 1, seed = index)
and compares the shape masks of the generated image and the scene: mean IoU and the share with IoU ≥ 0.8.
Also checks that a unit of weight 0 gives the same image as no unit, and reports the VAE's own ceiling (IoU of
the scenes' reconstructions). Generation goes through a plain diffusers StableDiffusionControlNetPipeline built
from the components the app's loader gives.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    ControlNetModel, DPMSolverMultistepScheduler, StableDiffusionControlNetPipeline, StableDiffusionPipeline,
)
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from modules.models.loader import ModelComponents, load_checkpoint_file, read_checkpoint  # noqa: E402
from modules.shapes.captions import eval_prompts  # noqa: E402
from modules.shapes.scorer import DIFFERENCE_THRESHOLD  # noqa: E402
from modules.shapes.world import ShapeScene, render  # noqa: E402
from modules.training.controlnet_data import canny_detector, canny_map  # noqa: E402
from modules.training.controlnet_export import controlnet_from_ldm  # noqa: E402
from modules.training.evaluate import DEFAULT_CFG, DEFAULT_STEPS, default_scheduler  # noqa: E402
from modules.training.train_controlnet import BASE_CHECKPOINT, DEFAULT_OUT  # noqa: E402

GOOD_IOU = 0.8


@dataclass(frozen=True)
class Case:
    prompt: str
    scene: ShapeScene
    seed: int


def benchmark_cases(count: int = 32, seed: int = 7) -> list[Case]:
    """`count` held-out (prompt, scene) pairs; the generation seed is the pair's index."""
    return [Case(item.prompt, item.scene, index) for index, item in enumerate(eval_prompts(count, seed=seed))]


# ---------------------------------------------------------------- masks


def shape_mask(image: Image.Image) -> np.ndarray:
    """The shape's pixels: the largest connected region farther from the background colour than half-way to
    the shape's colour, holes filled.

    Background = median border colour; shape colour = median of the pixels clearly away from it (the scorer's
    45-unit RGB distance). The half-way threshold reads an anti-aliased edge pixel as shape when it is mostly
    shape, so a rendered scene gives its exact outline. Largest region, as the scorer reads "the shape": specks
    of the base model's textured backgrounds are not part of it (the scenes have one shape).
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(rgb - background, axis=-1)
    clear = distance > DIFFERENCE_THRESHOLD
    if not clear.any():
        return clear
    shape_colour = np.median(rgb[clear], axis=0)
    labels, count = ndimage.label(distance > 0.5 * np.linalg.norm(shape_colour - background))
    if count == 0:
        return labels > 0
    sizes = ndimage.sum_labels(labels > 0, labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def scene_ious(images: list[Image.Image], scenes: list[ShapeScene]) -> list[float]:
    """IoU of each image's shape mask with its scene's (rendered at the image's size)."""
    return [mask_iou(shape_mask(image), shape_mask(render(scene, image.width))) for image, scene in zip(images, scenes)]


# ---------------------------------------------------------------- generation (plain diffusers)


def control_images(scenes: list[ShapeScene], size: int) -> list[Image.Image]:
    """Canny maps of the rendered scenes at `size` px, as RGB images (what the preprocessor hands the model)."""
    detector = canny_detector()
    return [Image.fromarray(canny_map(detector, render(scene, size), size)).convert("RGB") for scene in scenes]


def load_controlnet(path: Path) -> ControlNetModel:
    """Our ControlNet file (lllyasviel keys; config from its metadata) as a diffusers ControlNetModel."""
    import json

    state_dict, metadata = read_checkpoint(path)
    return controlnet_from_ldm(state_dict, json.loads(metadata["controlnet.config"])).eval()


def controlnet_pipeline(components: ModelComponents, controlnet: ControlNetModel) -> StableDiffusionControlNetPipeline:
    pipe = StableDiffusionControlNetPipeline(
        **components.pipeline_kwargs(), controlnet=controlnet,
        scheduler=default_scheduler(components.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_controlled(pipe: StableDiffusionControlNetPipeline, cases: list[Case], controls: list[Image.Image],
                        size: int, weight: float = 1.0, batch_size: int = 16) -> list[Image.Image]:
    """One image per case with its control map at `weight` (default sampler, steps and CFG)."""
    images: list[Image.Image] = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        result = pipe([c.prompt for c in chunk], image=controls[start:start + batch_size], height=size, width=size,
                      negative_prompt=[""] * len(chunk), num_inference_steps=DEFAULT_STEPS,
                      guidance_scale=DEFAULT_CFG, controlnet_conditioning_scale=weight,
                      generator=[torch.Generator().manual_seed(c.seed) for c in chunk])
        images.extend(result.images)
    return images


@torch.no_grad()
def generate_plain(components: ModelComponents, cases: list[Case], size: int) -> list[Image.Image]:
    """The same cases without any ControlNet (same sampler, seeds and batching)."""
    pipe = StableDiffusionPipeline(**components.pipeline_kwargs(),
                                   scheduler=default_scheduler(components.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    result = pipe([c.prompt for c in cases], height=size, width=size, negative_prompt=[""] * len(cases),
                  num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_CFG,
                  generator=[torch.Generator().manual_seed(c.seed) for c in cases])
    return result.images


@torch.no_grad()
def vae_ceiling(components: ModelComponents, scenes: list[ShapeScene], size: int) -> list[float]:
    """IoU of the VAE's reconstructions of the scenes: the best any generation through this VAE can do."""
    images = torch.stack([torch.from_numpy(np.array(render(s, size))).permute(2, 0, 1) for s in scenes])
    latents = components.vae.encode(images.float() / 127.5 - 1).latent_dist.mean
    decoded = components.vae.decode(latents).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return scene_ious([Image.fromarray(p) for p in pixels], scenes)


@dataclass(frozen=True)
class ControlReport:
    ious: list[float]
    without_control: list[float]  # the base model alone on the same cases
    vae: list[float]
    weight_zero_same: bool
    seconds_per_image: float

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.ious))

    @property
    def share_good(self) -> float:
        return float(np.mean([iou >= GOOD_IOU for iou in self.ious]))


def run_benchmark(controlnet_file: Path, base: Path = BASE_CHECKPOINT, count: int = 32
                  ) -> tuple[ControlReport, list[Image.Image], list[Case]]:
    components = load_checkpoint_file(base)
    size = components.native_size
    cases = benchmark_cases(count)
    controls = control_images([c.scene for c in cases], size)
    pipe = controlnet_pipeline(components, load_controlnet(controlnet_file))
    started = time.time()
    images = generate_controlled(pipe, cases, controls, size)
    elapsed = time.time() - started
    plain = generate_plain(components, cases[:8], size)
    zero = generate_controlled(pipe, cases[:8], controls[:8], size, weight=0.0, batch_size=8)
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, zero))
    report = ControlReport(
        ious=scene_ious(images, [c.scene for c in cases]),
        without_control=scene_ious(plain, [c.scene for c in cases[:8]]),
        vae=vae_ceiling(components, [c.scene for c in cases], size),
        weight_zero_same=same, seconds_per_image=elapsed / len(cases))
    return report, images, cases


def save_grid(path: Path, cases: list[Case], images: list[Image.Image], size: int, scale: int = 2) -> None:
    """Rows of (scene, canny map, generated) triples, upscaled ×`scale` (nearest)."""
    controls = control_images([c.scene for c in cases], size)
    cell = size * scale
    columns = 4
    rows = (len(cases) + columns - 1) // columns
    grid = Image.new("RGB", (columns * 3 * cell + (columns - 1) * 8, rows * cell), "white")
    for index, (case, control, image) in enumerate(zip(cases, controls, images)):
        x, y = (index % columns) * (3 * cell + 8), (index // columns) * cell
        for offset, picture in enumerate((render(case.scene, size), control, image)):
            grid.paste(picture.resize((cell, cell), Image.Resampling.NEAREST), (x + offset * cell, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--controlnet", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--base", type=Path, default=BASE_CHECKPOINT)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--grid", type=Path, default=None, help="save scene / canny / generated triples here")
    args = parser.parse_args(argv)
    report, images, cases = run_benchmark(args.controlnet, args.base, args.count)
    print(f"ControlNet {args.controlnet} on {args.base.name}; {len(cases)} held-out scenes; canny 100/200 at native "
          f"size; DPM++ 2M Karras, 20 steps, CFG 7, weight 1; {report.seconds_per_image:.2f} s/image\n")
    print("| measure | value |\n|---|---|")
    print(f"| shape-mask IoU, mean | {report.mean_iou:.3f} |")
    print(f"| share with IoU ≥ {GOOD_IOU} | {100 * report.share_good:.1f} % |")
    print(f"| IoU without the ControlNet (first 8) | {np.mean(report.without_control):.3f} |")
    print(f"| IoU of the VAE's reconstructions (ceiling) | {np.mean(report.vae):.3f} |")
    print(f"| weight 0 = no unit (first 8, bit for bit) | {report.weight_zero_same} |")
    worst = sorted(zip(report.ious, (c.prompt for c in cases)))[:5]
    for iou, prompt in worst:
        print(f"  low: {iou:.2f} {prompt!r}")
    if args.grid:
        save_grid(args.grid, cases, images, images[0].width)
        print(f"grid saved to {args.grid}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
