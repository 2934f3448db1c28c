"""End-to-end engine behaviour on tiny random-weight checkpoints: determinism, seeds, samplers, switching, memory."""
from __future__ import annotations

import gc
import os
import threading

import numpy as np
import psutil
import pytest
import torch

from modules.app import create_app
from modules.engine.request import GenerationRequest, HiresOptions
from modules.engine.samplers import SAMPLERS
from modules.options import parse_options
from tests.fixtures.observers import CountingObserver
from tests.fixtures.tiny_models import (write_tiny_sd15_diffusers_folder, write_tiny_sd15_single_file,
                                        write_tiny_sdxl_single_file)

SMALL = dict(width=64, height=64, steps=4, cfg_scale=5.0)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    ckpts = data / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    write_tiny_sd15_single_file(ckpts / "alpha.safetensors", seed=1)
    write_tiny_sd15_single_file(ckpts / "beta.safetensors", seed=2)
    write_tiny_sd15_diffusers_folder(ckpts / "gamma", seed=3)
    write_tiny_sdxl_single_file(ckpts / "xl.safetensors", seed=4)
    application = create_app(parse_options(["--data-dir", str(data), "--ckpt", "alpha.safetensors"]))
    yield application
    application.jobs.shutdown()


def run(app, **fields):
    return app.jobs.run(GenerationRequest(**{**SMALL, "seed": 42, "save_images": False, **fields}), timeout=300)


def pixels(result):
    return [np.asarray(image) for image in result.images]


def test_same_request_gives_identical_pixels_and_seed_plus_one_differs(app):
    first, second = run(app), run(app)
    assert np.array_equal(pixels(first)[0], pixels(second)[0])
    other = run(app, seed=43)
    assert not np.array_equal(pixels(first)[0], pixels(other)[0])


def test_batch_items_use_consecutive_seeds_independent_of_batch_size(app):
    batch = run(app, batch_size=2, seed=100)
    assert batch.seeds == [100, 101]
    single = run(app, seed=101)
    assert np.abs(pixels(batch)[1].astype(int) - pixels(single)[0].astype(int)).max() <= 1


@pytest.mark.parametrize("sampler", ["Euler a", "DPM2 a", "DPM++ 2M SDE", "DPM++ SDE"])
def test_stochastic_samplers_repeat_the_same_image_whatever_ran_before(app, sampler):
    first = run(app, sampler_name=sampler, batch_size=2)
    torch.randn(1000)  # what another job, an extension or a library may draw from the process-wide generator
    again = run(app, sampler_name=sampler, batch_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(first), pixels(again)))
    single = run(app, sampler_name=sampler, seed=43)  # each image's step noise comes from its own seed
    assert np.abs(pixels(first)[1].astype(int) - pixels(single)[0].astype(int)).max() <= 1


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_sampler_runs(app, sampler):
    result = run(app, sampler_name=sampler, steps=3, cfg_scale=1.5 if sampler == "LCM" else 5.0)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert f"Sampler: {sampler}," in result.infotexts[0]


def test_weight_one_equals_plain_word(app):
    assert np.array_equal(pixels(run(app, prompt="(red:1.0) circle"))[0], pixels(run(app, prompt="red circle"))[0])


def test_infotext_names_everything(app):
    result = run(app, prompt="a cat", negative_prompt="dog", clip_skip=2, subseed=7, subseed_strength=0.3)
    text = result.infotexts[0]
    assert text.startswith("a cat\nNegative prompt: dog\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.0, Seed: 42, Size: 64x64, Model hash: ")
    for part in ("Model: alpha", "Variation seed: 7", "Variation seed strength: 0.3", "Clip skip: 2", "RNG: CPU", "Version: "):
        assert part in text


def test_hires_fix_makes_the_larger_image(app):
    for upscaler in ("Latent", "Lanczos"):
        result = run(app, hires=HiresOptions(scale=1.5, upscaler=upscaler, steps=2, denoising_strength=0.5))
        assert result.images[0].size == (96, 96)
        assert "Hires upscale: 1.5" in result.infotexts[0] and f"Hires upscaler: {upscaler}" in result.infotexts[0]


def test_switch_a_b_a_gives_the_same_images_again(app):
    a1 = pixels(run(app, checkpoint="alpha.safetensors"))[0]
    b = pixels(run(app, checkpoint="beta.safetensors"))[0]
    gamma = pixels(run(app, checkpoint="gamma"))[0]
    xl = run(app, checkpoint="xl.safetensors")
    a2 = pixels(run(app, checkpoint="alpha.safetensors"))[0]
    assert np.array_equal(a1, a2)
    assert not np.array_equal(a1, b) and not np.array_equal(a1, gamma)
    assert xl.images[0].size == (64, 64) and "Model: xl" in xl.infotexts[0]


def test_switch_by_settings_is_persisted(app):
    app.update_settings({"sd_model_checkpoint": "beta.safetensors"})
    assert app.models.current.name == "beta.safetensors"
    assert "beta.safetensors" in app.paths.config_file.read_text()
    app.update_settings({"sd_model_checkpoint": "alpha.safetensors"})
    with pytest.raises(ValueError, match="no model matches"):
        app.update_settings({"sd_model_checkpoint": "missing"})
    assert app.models.current.name == "alpha.safetensors"


def test_rss_stays_flat_over_twenty_switches_with_limit_one(app):
    app.update_settings({"sd_checkpoints_limit": 1})
    names = ["alpha.safetensors", "beta.safetensors", "gamma"]
    process = psutil.Process(os.getpid())
    samples = []
    for index in range(21):
        app.jobs.run_exclusive(lambda: app.models.load(names[index % 3]))
        gc.collect()
        samples.append(process.memory_info().rss)
        assert len(app.models.memory_stats()["ram_cached"]) <= 1
    growth = samples[-1] - samples[3]
    assert growth < 60 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 18 switches"
    app.update_settings({"sd_checkpoints_limit": 2, "sd_model_checkpoint": "alpha.safetensors"})


def test_interrupt_stops_within_a_step_and_keeps_the_image(app):
    steps_seen = []
    job = app.submit(GenerationRequest(**{**SMALL, "steps": 150, "width": 256, "height": 256, "save_images": False}))
    while job.snapshot().step < 2 and not job.done:
        threading.Event().wait(0.02)
    job.interrupt()
    result = job.wait(120)
    steps_seen.append(job.snapshot().step)
    assert result.interrupted and len(result.images) == 1
    assert steps_seen[0] < 150


def test_outputs_are_saved_with_infotext(app):
    from PIL import Image
    result = run(app, save_images=True, batch_size=2)
    images = [p for p in result.saved_paths if "grids" not in str(p)]
    assert len(images) == 2 and all(p.name.endswith(f"-{s}.png") for p, s in zip(images, result.seeds))
    assert images[0].parent.parent.name == "txt2img-images"
    assert Image.open(images[0]).info["parameters"] == result.infotexts[0]
    assert any("txt2img-grids" in str(p) for p in result.saved_paths)


@pytest.mark.parametrize(("hires_steps", "strength"), [(1, 0.75), (3, 0.5), (5, 0.33), (2, 1.0)])
def test_hires_runs_exactly_the_requested_steps(app, hires_steps, strength):
    from modules.engine.generate import EngineOptions, generate
    observer = CountingObserver()
    request = GenerationRequest(**SMALL, seed=1, save_images=False,
                                hires=HiresOptions(scale=1.5, steps=hires_steps, denoising_strength=strength))
    generate(app.models.model, request, observer=observer, options=EngineOptions())
    assert observer.passes == [[4, 4], [hires_steps, hires_steps]]


def test_hires_with_zero_denoising_only_upscales(app):
    for upscaler in ("Latent", "Lanczos"):
        result = run(app, hires=HiresOptions(scale=2, upscaler=upscaler, denoising_strength=0.0))
        assert result.images[0].size == (128, 128)


def test_schedule_type_is_written_as_a1111_does(app):
    assert "Schedule type: Automatic," in run(app, sampler_name="Euler a").infotexts[0]
    assert "Schedule type: Uniform," in run(app, sampler_name="Euler a", scheduler="Uniform").infotexts[0]
    assert "Schedule type: Karras," in run(app, sampler_name="DPM++ 2M").infotexts[0]
    assert "Schedule type" not in run(app, sampler_name="DDIM").infotexts[0]
