"""Prompt adherence of the default shapes model on 64 held-out prompts, with the app's default sampler.

    python benchmarks/shapes_adherence.py [--ckpt models/Stable-diffusion/shapes-v3.safetensors]
                                          [--grid docs/shapes-samples.png] [--further]

Loads the checkpoint through the app's loader (`load_checkpoint_file`: read, detect the family, build) and generates
through the app's engine (`modules.engine.generate` with a default `GenerationRequest`: DPM++ 2M, schedule
Automatic = Karras, 20 steps, CFG 7, empty negative prompt) one image per prompt at the model's native size,
seed = prompt index. It reads each image
with `modules.shapes.scorer` and prints a Markdown table. Also checks that the same request gives the same
image and that different seeds give different compositions.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from modules.engine.generate import generate as engine_generate  # noqa: E402
from modules.engine.model import EngineModel  # noqa: E402
from modules.engine.request import GenerationRequest  # noqa: E402
from modules.models.loader import load_checkpoint_file  # noqa: E402
from modules.shapes.captions import eval_prompts, further_eval_prompts  # noqa: E402
from modules.shapes.scorer import read_image  # noqa: E402
from modules.training.evaluate import adherence  # noqa: E402

DEFAULT_CHECKPOINT = Path("models/Stable-diffusion/shapes-v3.safetensors")
# Prompts without size or position: the seed alone decides where the shape goes and how big it is.
OPEN_PROMPTS = ("a red circle on a blue background", "a white square on a black background",
                "a yellow triangle on a purple background", "a green circle on an orange background")


def load_engine_model(checkpoint: Path) -> EngineModel:
    """The checkpoint as the app loads it (same loader, same engine model)."""
    components = load_checkpoint_file(checkpoint)
    return EngineModel(components, {"model_name": checkpoint.stem}, native_size=components.native_size)


def generate(model: EngineModel, prompts: list[str], seeds: list[int], size: int) -> list[Image.Image]:
    """One default-settings request per (prompt, seed), as the UI's Generate button sends it."""
    images = []
    for prompt, seed in zip(prompts, seeds):
        request = GenerationRequest(prompt=prompt, seed=seed, width=size, height=size, save_images=False,
                                    save_grid=False)
        images.extend(engine_generate(model, request).images)
    return images


def seed_diversity(model: EngineModel, size: int, seeds: int = 8) -> tuple[float, float]:
    """Mean number of distinct (position, size) readings per open prompt over `seeds` seeds, and mean pixel
    difference (0–255) between images of the same prompt."""
    distinct, differences = [], []
    for prompt in OPEN_PROMPTS:
        images = generate(model, [prompt] * seeds, list(range(100, 100 + seeds)), size)
        readings = {(r.position, r.size) for r in map(read_image, images)}
        distinct.append(len(readings))
        arrays = [np.asarray(image, dtype=np.float32) for image in images]
        differences.extend(np.abs(a - b).mean() for i, a in enumerate(arrays) for b in arrays[i + 1:])
    return float(np.mean(distinct)), float(np.mean(differences))


def save_grid(path: Path, images: list[Image.Image], prompts: list[str], columns: int = 8, scale: int = 2) -> None:
    """Samples upscaled ×`scale` (nearest), each with its prompt underneath."""
    cell = images[0].width * scale
    label_height = 56
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, rows * (cell + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, prompt) in enumerate(zip(images, prompts)):
        x, y = (index % columns) * cell, (index // columns) * (cell + label_height)
        grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text((x + 2, y + cell + 1), "\n".join(textwrap.wrap(prompt, 24)[:4]), fill="black",
                            font_size=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--grid", type=Path, default=None, help="save a picture grid of the samples here")
    parser.add_argument("--count", type=int, default=None, help="prompts to score (default 64; 128 with --further)")
    parser.add_argument("--further", action="store_true",
                        help="score the 128 further held-out prompts (`further_eval_prompts`) instead: a cross-check")
    args = parser.parse_args(argv)
    model = load_engine_model(args.ckpt)
    size, family = model.native_size, model.family
    items = further_eval_prompts(args.count or 128) if args.further else eval_prompts(args.count or 64)
    prompts = [item.prompt for item in items]
    seeds = list(range(len(prompts)))
    started = time.time()
    images = generate(model, prompts, seeds, size)
    elapsed = time.time() - started
    report = adherence(images, prompts)
    repeat = generate(model, prompts[:4], seeds[:4], size)
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images[:4], repeat))
    distinct, difference = seed_diversity(model, size)
    print(f"checkpoint {args.ckpt} ({family}, {size}×{size}); {report.count} held-out prompts; "
          f"DPM++ 2M Karras, 20 steps, CFG 7; {elapsed:.1f} s ({elapsed / report.count:.2f} s/image)\n")
    print("| attribute | adherence |\n|---|---|")
    for name, value in report.table_rows():
        print(f"| {name} | {100 * value:.1f} % |")
    print(f"\nsame request → same image: {same}")
    print(f"different seeds (open prompts, 8 seeds): {distinct:.1f} distinct (position, size) readings, "
          f"mean pixel difference {difference:.1f}/255")
    for prompt, result in zip(prompts, report.results):
        if not result.core:
            print(f"  miss: {prompt!r}: {result}")
    if args.grid:
        save_grid(args.grid, images[:32], prompts[:32])
        print(f"grid saved to {args.grid}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
