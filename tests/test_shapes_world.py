"""The shapes world: deterministic scenes, captions that parse back, the held-out split, and the scorer."""
import random

import numpy as np
import pytest
from PIL import Image

from modules.shapes.captions import caption, eval_prompts, further_eval_prompts, held_out_scenes, parse_prompt
from modules.shapes.scorer import read_image, score
from modules.shapes.world import (
    CELL_CENTRES, COLOURS, JITTER, PALETTE, POSITIONS, RADIUS_RANGE, SHAPES, Shape, ShapeScene, cell_of,
    is_held_out, make_shape, render, sample_scene, shape_polygon,
)

LATENT_CELL = 1 / 8  # one cell of an 8× VAE's latent, as a fraction of the side


def scenes(seed: int, count: int) -> list[ShapeScene]:
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(count)]


def test_world_covers_required_vocabulary():
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert {"red", "green", "blue", "yellow", "white", "black", "orange", "purple"} <= set(COLOURS)
    assert {"left", "right", "top", "bottom", "center"} <= set(POSITIONS)


@pytest.mark.parametrize("size", ["small", "large"])
def test_no_shape_reaches_the_border_even_at_its_largest_and_most_shifted(size):
    radius, jitter = RADIUS_RANGE[size][1], JITTER[size]
    for kind in SHAPES:
        for position in POSITIONS:
            column, row = cell_of(position)
            for dx in (-jitter, jitter):
                for dy in (-jitter, jitter):
                    shape = Shape(kind, "red", size, position, CELL_CENTRES[size][column] + dx,
                                  CELL_CENTRES[size][row] + dy, radius)
                    if kind == "circle":
                        reach = [(shape.x - radius, shape.y - radius), (shape.x + radius, shape.y + radius)]
                    else:
                        reach = shape_polygon(shape, 1.0)
                    assert all(0 < x < 1 and 0 < y < 1 for x, y in reach), shape


def test_small_shapes_span_more_than_two_latent_cells_and_stay_clearly_smaller_than_large_ones():
    # At two cells an 8× VAE cannot keep a small circle's and a small square's corners apart (docs).
    smallest, largest_small = RADIUS_RANGE["small"]
    assert 2 * smallest >= 2.4 * LATENT_CELL
    assert RADIUS_RANGE["large"][0] - largest_small >= 0.03


def test_sampling_and_rendering_are_deterministic():
    assert scenes(7, 50) == scenes(7, 50)
    assert scenes(7, 50) != scenes(8, 50)
    scene = scenes(3, 1)[0]
    assert np.array_equal(np.asarray(render(scene, 64)), np.asarray(render(scene, 64)))


def test_render_draws_background_and_shape_colours():
    rng = random.Random(0)
    scene = ShapeScene("blue", (make_shape(rng, "square", "red", "large", "center"),))
    pixels = np.asarray(render(scene, 64))
    assert pixels.shape == (64, 64, 3)
    assert tuple(pixels[0, 0]) == PALETTE["blue"]
    assert tuple(pixels[32, 32]) == PALETTE["red"]


def test_scene_mix_has_one_and_two_shapes_and_every_attribute():
    sample = scenes(1, 2000)
    counts = {len(s.shapes) for s in sample}
    assert counts == {1, 2}
    shapes = [shape for s in sample for shape in s.shapes]
    assert {s.kind for s in shapes} == set(SHAPES)
    assert {s.colour for s in shapes} == set(COLOURS)
    assert {s.position for s in shapes} == set(POSITIONS)
    assert all(shape.colour != s.background for s in sample for shape in s.shapes)


@pytest.mark.parametrize(
    "prompt, background, colour, kind, size, position",
    [
        ("a red circle on a blue background", "blue", "red", "circle", None, None),
        ("a small red circle in the top left on a blue background", "blue", "red", "circle", "small", "top left"),
        ("a blue background with a large green triangle at the bottom", "blue", "green", "triangle", "large",
         "bottom"),
        ("In the upper-right corner, a yellow square on a black background", "black", "yellow", "square", None,
         "top right"),
        ("purple square in the middle, orange background", "orange", "purple", "square", None, "center"),
        ("an orange circle on a white background on the left", "white", "orange", "circle", None, "left"),
    ],
)
def test_parse_prompt_reads_common_forms(prompt, background, colour, kind, size, position):
    spec = parse_prompt(prompt)
    assert spec.background == background
    assert len(spec.shapes) == 1
    shape = spec.shapes[0]
    assert (shape.colour, shape.kind, shape.size, shape.position) == (colour, kind, size, position)


def test_every_caption_parses_back_to_its_scene():
    rng = random.Random(5)
    for scene in scenes(5, 1500):
        text = caption(scene, rng)
        spec = parse_prompt(text)
        assert spec.background == scene.background, text
        assert len(spec.shapes) == len(scene.shapes), text
        for wanted, actual in zip(spec.shapes, scene.shapes):
            assert (wanted.kind, wanted.colour) == (actual.kind, actual.colour), text
            assert wanted.position in (None, actual.position), text
            assert wanted.size in (None, actual.size), text


def test_captions_are_varied_and_use_both_orders():
    rng = random.Random(9)
    texts = [caption(scene, rng) for scene in scenes(9, 500)]
    assert len(set(texts)) > 450
    assert any(t.startswith(("a red", "a blue", "a green")) for t in texts)  # shape first
    assert any("background with" in t for t in texts)  # background first


def test_held_out_split_is_excluded_from_training_and_feeds_the_eval_prompts():
    training = scenes(0, 5000)
    assert not any(is_held_out(s) for s in training)
    held_out = held_out_scenes()
    assert 250 < len(held_out) < 360  # ~10 % of 8·7·3·2·9 = 3024 tuples
    prompts = eval_prompts()
    assert len(prompts) == 64 and len({p.prompt for p in prompts}) == 64
    assert all(is_held_out(p.scene) for p in prompts)
    rng = random.Random(0)
    training_captions = {caption(s, rng) for s in training}
    assert not training_captions & {p.prompt for p in prompts}
    for item in prompts:  # every eval prompt names size and position, so it pins a held-out tuple
        shape = parse_prompt(item.prompt).shapes[0]
        assert shape.size is not None and shape.position is not None


def test_further_eval_prompts_are_held_out_and_disjoint_from_the_benchmark_set():
    further = further_eval_prompts()
    assert len(further) == 128 and len({p.scene for p in further}) == 128
    assert all(is_held_out(p.scene) for p in further)
    assert not {p.scene for p in further} & {p.scene for p in eval_prompts()}
    with pytest.raises(ValueError, match="further held-out prompts"):
        further_eval_prompts(1000)


@pytest.mark.parametrize("size", [64, 128])
def test_scorer_reads_rendered_scenes_exactly(size):
    rng = random.Random(11)
    single = [s for s in scenes(11, 400) if len(s.shapes) == 1]
    for scene in single:
        reading = read_image(render(scene, size))
        shape = scene.shapes[0]
        assert (reading.background, reading.colour, reading.kind, reading.position, reading.size) == (
            scene.background, shape.colour, shape.kind, shape.position, shape.size), scene
        result = score(reading, parse_prompt(caption(scene, rng, mention_size=True, mention_position=True)))
        assert result.core and result.position and result.size


def test_scorer_flags_wrong_answers_and_empty_images():
    rng = random.Random(2)
    scene = ShapeScene("white", (make_shape(rng, "triangle", "green", "small", "bottom right"),))
    reading = read_image(render(scene, 64))
    assert not score(reading, parse_prompt("a green circle on a white background")).core
    assert not score(reading, parse_prompt("a red triangle on a white background")).core
    assert not score(reading, parse_prompt("a green triangle on a black background")).core
    assert score(reading, parse_prompt("a green triangle on a white background in the top left")).position is False
    blank = read_image(Image.new("RGB", (64, 64), PALETTE["purple"]))
    assert blank.background == "purple" and blank.colour is None and blank.kind is None
