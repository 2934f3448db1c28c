"""Foundation benchmark: engine overhead, warm switch, cold load and start-up, against bare diffusers in one run.

    python -m benchmarks.foundation [--size 256] [--steps 10] [--repeats 3] [--skip-startup]

Builds two SD1.5-size checkpoints with random weights (speed does not depend on weight values) as A1111 single
files in a temporary folder, then prints each measurement next to its bare-diffusers reference and the ratio.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from modules.engine.generate import EngineOptions, generate  # noqa: E402
from modules.engine.request import GenerationRequest  # noqa: E402
from modules.models.ldm_export import save_single_file, to_ldm_state_dict  # noqa: E402
from modules.models.manager import ModelManager  # noqa: E402
from modules.models.registry import HashCache  # noqa: E402
from modules.paths import CONFIGS_DIR, PROJECT_ROOT  # noqa: E402

SD15 = CONFIGS_DIR / "sd15"


def write_sd15_checkpoint(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15 / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15 / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15 / "text_encoder"))
    save_single_file(path, to_ldm_state_dict(unet, vae, text_encoder), {"modelspec.architecture": "stable-diffusion-v1"},
                     dtype=torch.float16)


def best_of(repeats: int, action) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def manager_for(folder: Path) -> ModelManager:
    return ModelManager(checkpoint_dirs=(folder,), vae_dir=folder / "VAE", hash_cache=HashCache(folder / "hashes.json"),
                        device=torch.device("cpu"), dtype=torch.float32, ram_limit=2)


def bench_cold_load(folder: Path, repeats: int) -> tuple[float, float]:
    path = folder / "a.safetensors"

    def ours() -> None:
        manager_for(folder).load("a.safetensors")

    def bare() -> None:
        StableDiffusionPipeline.from_single_file(str(path), config=str(SD15), local_files_only=True,
                                                 dtype=torch.float32, safety_checker=None, requires_safety_checker=False)

    ours(), bare()  # warm the page cache for both
    return best_of(repeats, ours), best_of(repeats, bare)


def bench_switch(manager: ModelManager, repeats: int) -> float:
    manager.load("a.safetensors"), manager.load("b.safetensors")  # both in RAM now
    times = []
    for index in range(repeats * 2):
        started = time.perf_counter()
        manager.load("a.safetensors" if index % 2 == 0 else "b.safetensors")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_generation(manager: ModelManager, size: int, steps: int, repeats: int) -> tuple[float, float]:
    manager.load("a.safetensors")
    model = manager.model
    prompt = "a photo of an astronaut riding a horse"
    request = GenerationRequest(prompt=prompt, steps=steps, width=size, height=size, seed=1, save_images=False)

    def ours() -> None:
        generate(model, request, options=EngineOptions())

    parts = model.components
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=DPMSolverMultistepScheduler.from_config(
                                       model.scheduler_config, use_karras_sigmas=True, timestep_spacing="linspace"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def bare() -> None:
        with torch.inference_mode():
            pipe(prompt, num_inference_steps=steps, width=size, height=size, guidance_scale=7.0,
                 generator=torch.Generator().manual_seed(1))

    ours(), bare()
    pairs = [(best_of(1, ours), best_of(1, bare)) for _ in range(repeats)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def bench_startup() -> float:
    """Seconds from `python launch.py` to the UI answering, with the project's checkpoints (default model) loaded."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="bench-start-"))
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "launch.py"), "--data-dir", str(data),
                                "--port", str(port), "--ckpt-dir", str(PROJECT_ROOT / "models" / "Stable-diffusion")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the UI did not answer within 120 s")
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu, fp32")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        for name, seed in (("a", 1), ("b", 2)):
            write_sd15_checkpoint(folder / f"{name}.safetensors", seed)
        ours, bare = bench_cold_load(folder, args.repeats)
        print(f"cold load     ours {ours:6.2f} s   bare from_single_file {bare:6.2f} s   ratio {ours / bare:.3f} (target <= 1.1)")
        manager = manager_for(folder)
        switch = bench_switch(manager, args.repeats)
        print(f"warm switch   {switch:6.3f} s (median, SD1.5 size, both in RAM; target <= 1 s on CPU)")
        ours, bare = bench_generation(manager, args.size, args.steps, args.repeats)
        print(f"generation    ours {ours:6.2f} s   bare pipeline {bare:6.2f} s   overhead {100 * (ours / bare - 1):+.1f} % "
              f"({args.size}x{args.size}, {args.steps} steps; target <= 3 %)")
    if not args.skip_startup:
        print(f"start-up      {bench_startup():6.2f} s to the UI answering (target <= 8 s)")


if __name__ == "__main__":
    main()
