"""The word probe: does the denoiser predict the noise better under the true prompt than with one word swapped?"""
import random

import pytest

from modules.models.loader import load_checkpoint_file
from modules.paths import PROJECT_ROOT
from modules.shapes.captions import eval_prompts, parse_prompt
from modules.shapes.world import POSITIONS, ShapeScene, make_shape
from modules.training.place_map import place_map
from modules.training.word_probe import placed_prompt, probe_cases, swapped_prompts, word_preference

CHECKPOINT = PROJECT_ROOT / "models" / "Stable-diffusion" / "shapes-v3.safetensors"


def scene(kind: str = "circle", colour: str = "red", background: str = "blue") -> ShapeScene:
    return ShapeScene(background, (make_shape(random.Random(0), kind, colour, "small", "top left"),))


def test_swapped_prompts_change_only_the_shape_word_or_the_shape_colour():
    prompt = "a blue background with a small red circle in the top left"
    assert swapped_prompts(scene(), prompt, "shape") == (
        "a blue background with a small red square in the top left",
        "a blue background with a small red triangle in the top left")
    colours = swapped_prompts(scene(), prompt, "colour")
    assert len(colours) == 6  # neither the shape's own colour nor the background's
    assert all(p.startswith("a blue background with a small ") and p.endswith(" circle in the top left")
               for p in colours)
    assert not any(" red circle" in p or " blue circle" in p for p in colours)


def test_swapped_prompts_reject_a_prompt_that_does_not_name_the_shape():
    with pytest.raises(ValueError, match="does not name 'red circle'"):
        swapped_prompts(scene(), "a red square on a blue background", "shape")
    with pytest.raises(ValueError, match="attribute must be"):
        swapped_prompts(scene(), "a red circle on a blue background", "size")


def test_place_cases_name_the_true_place_and_each_other_one_in_the_same_sentence():
    item = eval_prompts(1)[0]
    case, = probe_cases([item], "position")
    shape = item.scene.shapes[0]
    assert case.prompt == placed_prompt(item.scene, shape.position)
    assert case.prompt.startswith(f"a {shape.size} {shape.colour} {shape.kind} ")
    assert len(case.alternatives) == 8 and case.prompt not in case.alternatives
    # parsed back, every alternative asks for a different place and for nothing else different
    wanted = parse_prompt(case.prompt).shapes[0]
    places = {parse_prompt(text).shapes[0].position for text in case.alternatives}
    assert places == set(POSITIONS) - {shape.position} and wanted.position == shape.position
    assert all(parse_prompt(text).shapes[0].kind == shape.kind for text in case.alternatives)


@pytest.fixture(scope="module")
def shapes_components():
    return load_checkpoint_file(CHECKPOINT)


def test_default_model_listens_to_colour_and_tells_triangles_apart(shapes_components):
    prompts = eval_prompts(24)
    colour = word_preference(shapes_components, probe_cases(prompts, "colour"), timesteps=(150,), repeats=1)
    assert colour[150].shape == (24, 6)
    assert float(colour[150].mean()) >= 0.9
    shape_cases = probe_cases(prompts, "shape")
    shape = word_preference(shapes_components, shape_cases, timesteps=(150, 950), repeats=1)
    triangles = [i for i, case in enumerate(shape_cases) if case.scene.shapes[0].kind == "triangle"]
    assert triangles and float(shape[150][triangles].mean()) >= 0.85
    # At nearly pure noise the latent says little, so the preference falls towards chance.
    assert float(shape[950].mean()) < float(shape[150].mean())


def test_place_map_puts_each_place_word_of_the_default_model_in_its_cell(shapes_components):
    readings = place_map(shapes_components, 950, draws=16)
    assert [r.place for r in readings] == list(POSITIONS)
    assert all(r.right for r in readings), [(r.place, r.cell) for r in readings]
    # the map reads the prompt, not the place it was asked about: with no place words all nine are one reading
    unplaced = place_map(shapes_components, 950, draws=16, prompt="a small red circle on a blue background")
    assert len({(r.x, r.y) for r in unplaced}) == 1 and sum(r.right for r in unplaced) == 1
