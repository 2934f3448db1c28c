"""LoRA benchmark: apply + remove cost against one generation, and RSS over 100 checkpoint switches with LoRAs.

    python -m benchmarks.lora [--size 512] [--rank 32] [--repeats 3] [--switches 100] [--skip-sd15]

1. An SD1.5-size UNet + text encoder + VAE with random weights (speed does not depend on values), fp32 on the CPU,
   and a kohya-format LoRA of rank `--rank` on every attention, feed-forward and proj layer of the UNet and every
   q/k/v/out/fc layer of the text encoder (fp16 file). Measured: the first use (read + parse), then apply + remove
   with the parsed network cached (what every later job pays) — next to the bare-diffusers reference measured in
   the same run: `load_lora_weights` + `fuse_lora` + `unfuse_lora` + `unload_lora_weights` of the same file.
   The target compares apply + remove with one 20-step generation at `--size` (default 512×512). A 20-step
   CPU run takes minutes, so the generation is timed at 2 and 4 steps through our engine and extrapolated:
   per step = (t4 − t2) / 2, t20 = t4 + 16 · per step (the fixed part — prompt encoding, VAE decode — is in t4);
   on a busy machine the difference is noisy, so the ratio to the measured 4-step run (a strict upper bound for
   the 20-step ratio) is printed too. `--size 256` keeps the CPU run short; 512×512 steps cost ~4× more.
2. 100 jobs through the real job path (run_job), switching between two mid-size SD1 checkpoints (≈ 1/20 of
   SD1.5; RAM limit 1, so every switch reads the file again) before each job as the checkpoint menu does, each
   prompt with one of two LoRAs; RSS after gc.collect() is sampled after 5 warm-up jobs and at the end (target:
   growth < 200 MB).

On a shared CPU run it with OMP_NUM_THREADS=1: small convolutions on 2 busy cores are ~5× slower with 2 threads.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from modules.app import create_app  # noqa: E402
from modules.engine.generate import EngineOptions, generate  # noqa: E402
from modules.engine.model import EngineModel  # noqa: E402
from modules.engine.request import GenerationRequest  # noqa: E402
from modules.models.detect import ModelFamilyInfo  # noqa: E402
from modules.models.ldm_export import save_single_file, to_ldm_state_dict  # noqa: E402
from modules.models.loader import ModelComponents, scheduler_config_for  # noqa: E402
from modules.models.lora import applied_loras  # noqa: E402
from modules.models.lora_files import LoraRegistry  # noqa: E402
from modules.models.tokenizer import load_clip_tokenizer  # noqa: E402
from modules.options import parse_options  # noqa: E402
from modules.paths import CONFIGS_DIR  # noqa: E402
from tests.fixtures.loras import kohya_state_dict, random_specs, write_lora  # noqa: E402

SD15 = CONFIGS_DIR / "sd15"
SD1_INFO = ModelFamilyInfo(family="sd15", prediction_type="epsilon")


def sd15_components(seed: int, *, unet_overrides: dict | None = None, text_overrides: dict | None = None,
                    native_size: int = 512) -> ModelComponents:
    torch.manual_seed(seed)
    unet_config = {**UNet2DConditionModel.load_config(SD15 / "unet"), **(unet_overrides or {})}
    unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15 / "vae"))
    text_config = CLIPTextConfig.from_pretrained(SD15 / "text_encoder")
    for key, value in (text_overrides or {}).items():
        setattr(text_config, key, value)
    text_encoder = CLIPTextModel(text_config)
    return ModelComponents(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
                           tokenizer=load_clip_tokenizer(), text_encoder_2=None, tokenizer_2=None,
                           scheduler_config=scheduler_config_for(SD1_INFO), info=SD1_INFO, native_size=native_size)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_apply(folder: Path, size: int, rank: int, repeats: int) -> None:
    components = sd15_components(1)
    model = EngineModel(components, {"model_name": "bench"}, native_size=size)
    lora_dir = folder / "Lora"
    state = kohya_state_dict(random_specs(components, rank=rank, alpha=rank / 2, strength=0.01), components,
                             dtype=torch.float16)
    path = write_lora(lora_dir / "bench.safetensors", state)
    layers = len(state) // 3
    print(f"LoRA: rank {rank}, {layers} layers, {path.stat().st_size / 2**20:.1f} MiB (fp16)")
    registry = LoraRegistry((lora_dir,))

    def apply_and_remove() -> None:
        with applied_loras(registry, model, "a photo <lora:bench:0.8>"):
            pass

    first = timed(apply_and_remove)  # reads and parses the file, hashes it for the infotext
    warm = statistics.median(timed(apply_and_remove) for _ in range(repeats))
    print(f"apply+remove  first use (read + parse + hash) {first:6.2f} s   cached {warm:6.2f} s (median of {repeats})")

    pipe = StableDiffusionPipeline(**components.pipeline_kwargs(), scheduler=EulerDiscreteScheduler.from_config(
        components.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    transformers.logging.set_verbosity_error()

    def bare() -> None:
        pipe.load_lora_weights(str(path), adapter_name="bench")
        pipe.fuse_lora(lora_scale=0.8)
        pipe.unfuse_lora()
        pipe.unload_lora_weights()

    bare_time = statistics.median(timed(bare) for _ in range(repeats))
    print(f"              bare diffusers load+fuse+unfuse+unload {bare_time:6.2f} s   ratio ours/bare "
          f"{warm / bare_time:.2f}")
    del pipe
    gc.collect()

    def generation(steps: int) -> float:
        request = GenerationRequest(prompt="a photo of an astronaut", steps=steps, width=size, height=size, seed=1,
                                    sampler_name="Euler", save_images=False)
        return timed(lambda: generate(model, request, options=EngineOptions()))

    generation(1)  # warm-up
    t2, t4 = generation(2), generation(4)
    per_step = max((t4 - t2) / 2, 1e-6)
    t20 = t4 + 16 * per_step
    print(f"generation    {size}x{size}: 2 steps {t2:6.1f} s, 4 steps {t4:6.1f} s → {per_step:.2f} s/step, "
          f"20 steps ≈ {t20:6.1f} s")
    print(f"ratio         apply+remove (cached) / 20-step generation = {100 * warm / t20:.2f} % (target < 10 %); "
          f"first use {100 * first / t20:.2f} %; bound without extrapolation: / measured 4-step run "
          f"{100 * warm / t4:.2f} %")


MID_UNET = {"block_out_channels": [64, 128, 256, 256], "attention_head_dim": 4, "cross_attention_dim": 256}
MID_TEXT = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
            "projection_dim": 256}


def bench_switches(folder: Path, switches: int) -> None:
    data = folder / "switch-data"
    ckpts, lora_dir = data / "models" / "Stable-diffusion", data / "models" / "Lora"
    for name, seed in (("mid_a", 1), ("mid_b", 2)):
        components = sd15_components(seed, unet_overrides=MID_UNET, text_overrides=MID_TEXT, native_size=64)
        save_single_file(ckpts / f"{name}.safetensors",
                         to_ldm_state_dict(components.unet, components.vae, components.text_encoder),
                         {"modelspec.architecture": "stable-diffusion-v1", "sd_native_size": "64"})
        state = kohya_state_dict(random_specs(components, rank=16, alpha=8, seed=seed, strength=0.05), components,
                                 dtype=torch.float16)
        write_lora(lora_dir / f"style_{seed}.safetensors", state)
        del components
    app = create_app(parse_options(["--data-dir", str(data), "--ckpt", "mid_a.safetensors"]))
    app.update_settings({"sd_checkpoints_limit": 1})
    process = psutil.Process(os.getpid())
    samples: list[int] = []
    started = time.perf_counter()
    try:
        for index in range(switches):
            checkpoint = ("mid_a", "mid_b")[index % 2]
            lora = ("style_1", "style_2")[(index // 2) % 2]
            app.update_settings({"sd_model_checkpoint": f"{checkpoint}.safetensors"})  # the top bar's switch
            request = GenerationRequest(prompt=f"a red circle <lora:{lora}:0.8>", width=64, height=64, steps=2,
                                        seed=index, sampler_name="Euler", save_images=False)
            result = app.jobs.run(request, timeout=600)
            assert "Lora hashes" in result.infotexts[0]
            if index == 4 or index % 10 == 9 or index == switches - 1:
                gc.collect()
                samples.append(process.memory_info().rss)
    finally:
        app.jobs.shutdown()
    elapsed = time.perf_counter() - started
    growth = (samples[-1] - samples[0]) / 2**20
    print(f"switches      {switches} jobs, checkpoint switched before each (RAM limit 1), a LoRA in each: "
          f"{elapsed:.0f} s, RSS {samples[0] / 2**20:.0f} → {samples[-1] / 2**20:.0f} MiB, growth {growth:+.1f} MiB "
          f"after warm-up (target < 200 MB); LoRA reads from disk {app.loras.disk_reads}")
    print(f"              RSS samples (MiB): {' '.join(str(sample // 2**20) for sample in samples)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--switches", type=int, default=100)
    parser.add_argument("--skip-sd15", action="store_true", help="only the switch run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu, fp32")
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        if not args.skip_sd15:
            bench_apply(Path(tmp), args.size, args.rank, args.repeats)
            gc.collect()
        bench_switches(Path(tmp), args.switches)


if __name__ == "__main__":
    main()
