"""The shipped default model, loaded like any user checkpoint and run with the app's default request.

Default request = DPM++ 2M, schedule Automatic (Karras), 20 steps, CFG 7, empty negative prompt, at the model's
native size. Prompts are held-out ones (never a training caption); the scorer reads each image back.
"""
import numpy as np
import pytest

from benchmarks.shapes_adherence import load_engine_model
from modules.engine.generate import generate
from modules.engine.model import EngineModel
from modules.engine.request import GenerationRequest
from modules.models.registry import scan_checkpoints
from modules.paths import PROJECT_ROOT, Paths
from modules.shapes.captions import eval_prompts
from modules.shapes.scorer import read_image
from modules.training.evaluate import AdherenceReport, adherence
from tests.fixtures.shapes_checkpoint import check_shapes_checkpoint

CHECKPOINT = PROJECT_ROOT / "models" / "Stable-diffusion" / "shapes-v3.safetensors"
MAX_FILE_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def shapes_model() -> EngineModel:
    return load_engine_model(CHECKPOINT)


def run(model: EngineModel, prompt: str, seed: int, negative_prompt: str = ""):
    request = GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, seed=seed, width=model.native_size,
                                height=model.native_size, save_images=False, save_grid=False)
    return generate(model, request).images[0]


@pytest.fixture(scope="module")
def held_out_report(shapes_model) -> AdherenceReport:
    prompts = [item.prompt for item in eval_prompts(16, seed=7)]
    images = [run(shapes_model, prompt, seed) for seed, prompt in enumerate(prompts)]
    assert all(image.size == (64, 64) for image in images)
    return adherence(images, prompts)


def test_checkpoint_is_a_small_fp16_sd1_file_with_its_native_size():
    assert CHECKPOINT.stat().st_size <= MAX_FILE_BYTES
    check_shapes_checkpoint(CHECKPOINT)


def test_the_app_finds_it_in_the_default_models_folder():
    checkpoints = scan_checkpoints(Paths.from_args(None).ckpt_dirs)
    assert "shapes-v3.safetensors" in [entry.name for entry in checkpoints]


def test_default_request_paints_the_prompted_colours(held_out_report):
    """Shape colour and background colour of held-out prompts (measured 100 % and 100 % on 64 prompts)."""
    assert held_out_report.background >= 0.9
    assert held_out_report.colour >= 0.8


def test_default_request_follows_held_out_prompts(held_out_report):
    """Issue 3's default-run test: colour + background + shape on 16 held-out prompts (measured 16 of 16)."""
    assert held_out_report.core >= 0.9


def test_default_request_puts_the_shape_where_the_prompt_says(held_out_report):
    """The 3×3 cell of the place words (chance is 1/9; measured 16 of 16, and 100 % of the 64)."""
    assert held_out_report.position >= 0.75


def test_an_empty_prompt_still_draws_a_shape_on_a_plain_background(shapes_model):
    reading = read_image(run(shapes_model, "", 3))
    assert reading.colour is not None and reading.colour != reading.background


def test_same_request_same_image_and_seeds_change_the_composition(shapes_model):
    prompt = "a red circle on a blue background"
    first, again = run(shapes_model, prompt, 5), run(shapes_model, prompt, 5)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    others = [np.asarray(run(shapes_model, prompt, seed), dtype=np.float32) for seed in (6, 7, 8)]
    base = np.asarray(first, dtype=np.float32)
    differences = [np.abs(base - other).mean() for other in others]  # 0–255 scale
    assert sum(difference > 3.0 for difference in differences) >= 2, differences


# Prompt editing and the negative prompt are checked here rather than on a random-weight model: a random model's
# image hardly depends on the prompt (swapping one word moved no pixel by more than 3 of 255), so a pixel check
# there sits at the rounding limit, while this model draws the word it is given.
def test_prompt_editing_switches_the_word_at_its_step(shapes_model):
    prompt = "a large [red:green:{}] circle on a blue background"
    early, late = (read_image(run(shapes_model, prompt.format(when), 1)) for when in (0.1, 0.9))
    assert (early.colour, early.background) == ("green", "blue"), early
    assert (late.colour, late.background) == ("red", "blue"), late


def test_negative_prompt_steers_the_colour_away(shapes_model):
    prompt = "a large circle on a blue background"  # no colour named: the seed picks one
    drawn = read_image(run(shapes_model, prompt, 1)).colour
    assert drawn not in (None, "blue")
    steered = read_image(run(shapes_model, prompt, 1, negative_prompt=drawn))
    assert steered.colour not in (None, drawn) and steered.background == "blue", (drawn, steered)
