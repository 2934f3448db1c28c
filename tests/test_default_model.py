"""The shipped default model, loaded like any user checkpoint and run with the app's default request.

Default request = DPM++ 2M, schedule Automatic (Karras), 20 steps, CFG 7, empty negative prompt, at the model's
native size. Prompts are held-out ones (never a training caption); the scorer reads each image back.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.engine.generate import generate
from modules.engine.model import EngineModel
from modules.engine.request import GenerationRequest
from modules.models.detect import detect_family
from modules.models.loader import load_components, read_checkpoint
from modules.paths import PROJECT_ROOT
from modules.shapes.captions import eval_prompts
from modules.training.evaluate import adherence

CHECKPOINT = PROJECT_ROOT / "models" / "Stable-diffusion" / "shapes-v1.safetensors"
MAX_FILE_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def shapes_model() -> EngineModel:
    state_dict, metadata = read_checkpoint(CHECKPOINT)
    components = load_components(state_dict, detect_family(state_dict, metadata), metadata=metadata)
    return EngineModel(components, {"model_name": CHECKPOINT.stem}, native_size=components.native_size)


def run(model: EngineModel, prompt: str, seed: int):
    request = GenerationRequest(prompt=prompt, seed=seed, width=model.native_size, height=model.native_size,
                                save_images=False, save_grid=False)
    return generate(model, request).images[0]


def test_checkpoint_is_a_small_fp16_sd1_file_with_its_native_size():
    assert CHECKPOINT.stat().st_size <= MAX_FILE_BYTES
    state_dict, metadata = read_checkpoint(CHECKPOINT)
    assert all(t.dtype == torch.float16 for t in state_dict.values() if t.is_floating_point())
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1"
    assert metadata["modelspec.prediction_type"] == "epsilon"
    assert metadata["sd_native_size"] == "64"
    info = detect_family(state_dict, metadata)
    assert (info.family, info.prediction_type) == ("sd15", "epsilon")


def test_default_request_follows_held_out_prompts(shapes_model):
    prompts = [item.prompt for item in eval_prompts(16, seed=7)]
    images = [run(shapes_model, prompt, seed) for seed, prompt in enumerate(prompts)]
    assert all(image.size == (64, 64) for image in images)
    report = adherence(images, prompts)
    assert report.core >= 0.9, [(p, r) for p, r in zip(prompts, report.results) if not r.core]


def test_same_request_same_image_and_seeds_change_the_composition(shapes_model):
    prompt = "a red circle on a blue background"
    first, again = run(shapes_model, prompt, 5), run(shapes_model, prompt, 5)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    others = [np.asarray(run(shapes_model, prompt, seed), dtype=np.float32) for seed in (6, 7, 8)]
    base = np.asarray(first, dtype=np.float32)
    differences = [np.abs(base - other).mean() for other in others]  # 0–255 scale
    assert sum(difference > 3.0 for difference in differences) >= 2, differences
