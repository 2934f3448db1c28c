"""ControlNet preprocessors: every one that needs no weights on a shapes-world render, the control-map geometry
(A1111 extension formulas), and a weight-needing detector (HED, PiDiNet) loaded from a folder of random weights —
offline: the Hub download function is made to fail, and local files are all it reads."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from modules.engine.preprocessors import (CROP_AND_RESIZE, JUST_RESIZE, PREPROCESSORS, RESIZE_AND_FILL,
                                          PreprocessorError, find_preprocessor, fit_control_map,
                                          pixel_perfect_resolution, resize_with_pad, to_array)
from modules.models.annotators import Annotators
from modules.shapes.world import PALETTE, ShapeScene, make_shape, render

NO_WEIGHTS = ("none", "invert", "canny", "shuffle", "lineart_standard")


@pytest.fixture(scope="module")
def scene_image() -> np.ndarray:
    """A red square on blue, 96 × 64 (not square, not a multiple of 64 on both sides)."""
    scene = ShapeScene("blue", (make_shape(random.Random(3), "square", "red", "large", "center"),))
    return to_array(render(scene, 96).crop((0, 16, 96, 80)))


@pytest.fixture()
def annotators(tmp_path) -> Annotators:
    return Annotators((tmp_path / "annotators",), device=torch.device("cpu"))


def shape_mask(image: np.ndarray) -> np.ndarray:
    return np.abs(image.astype(int) - np.array(PALETTE["red"])).sum(axis=2) < 120


def boundary(mask: np.ndarray) -> np.ndarray:
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    edge = mask.copy()
    edge[1:-1, 1:-1] &= ~inner
    return edge


def near(points: np.ndarray, target: np.ndarray, distance: int) -> float:
    """Share of `points` within `distance` pixels of a `target` pixel."""
    grown = target.copy()
    for _ in range(distance):
        grown[1:] |= grown[:-1].copy()
        grown[:-1] |= grown[1:].copy()
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
    return float((points & grown).sum() / max(points.sum(), 1))


def test_every_no_weight_preprocessor_is_available_without_files(annotators):
    available = {spec.name for spec in annotators.available()}
    assert available == set(NO_WEIGHTS)
    assert all(not find_preprocessor(name).files for name in NO_WEIGHTS)


@pytest.mark.parametrize("module", NO_WEIGHTS)
def test_no_weight_preprocessor_keeps_the_image_size(annotators, scene_image, module):
    detected = annotators.run(module, scene_image, resolution=128, seed=1)
    assert detected.dtype == np.uint8 and detected.ndim == 3 and detected.shape[2] == 3
    expected = scene_image.shape[:2] if module in ("none", "invert") else (128, 192)  # short side → resolution
    assert detected.shape[:2] == expected


def test_none_and_invert(annotators, scene_image):
    assert np.array_equal(annotators.run("none", scene_image, resolution=512), scene_image)
    inverted = annotators.run("invert (from white bg & black line)", scene_image, resolution=512)
    assert np.array_equal(inverted, 255 - scene_image)


def test_canny_draws_the_outline_of_the_shape(annotators, scene_image):
    edges = annotators.run("canny", scene_image, resolution=64, threshold_a=100, threshold_b=200)[:, :, 0] > 127
    assert set(np.unique(annotators.run("canny", scene_image, resolution=64))) <= {0, 255}
    outline = boundary(shape_mask(scene_image))
    assert edges.sum() > 0.5 * outline.sum()
    assert near(edges, outline, 2) > 0.95  # edges lie on the shape's outline, nowhere else
    lenient = annotators.run("canny", scene_image, resolution=64, threshold_a=1, threshold_b=2)[:, :, 0] > 127
    assert lenient.sum() >= edges.sum()


def test_lineart_standard_marks_the_darker_side_of_edges(annotators):
    """It is made for line drawings ("from white bg & black line"): a black square on white."""
    scene = ShapeScene("white", (make_shape(random.Random(3), "square", "black", "large", "center"),))
    drawing = to_array(render(scene, 64))
    lines = annotators.run("lineart_standard", drawing, resolution=64)[:, :, 0]
    assert lines.max() > 100 and (lines > 64).mean() < 0.5
    square = drawing.sum(axis=2) < 200
    marked = lines > 64
    assert (marked & square).sum() > 0.9 * marked.sum()  # on the dark side
    assert near(marked, boundary(square), 6) > 0.95  # along the outline (σ 6 blur: lines are a few pixels wide)
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert annotators.run("lineart_standard", flat, resolution=64).max() == 0


def test_shuffle_is_seeded_and_keeps_the_colours(annotators, scene_image):
    first = annotators.run("shuffle", scene_image, resolution=64, seed=7)
    assert np.array_equal(first, annotators.run("shuffle", scene_image, resolution=64, seed=7))
    assert not np.array_equal(first, annotators.run("shuffle", scene_image, resolution=64, seed=8))
    assert not np.array_equal(first, scene_image)
    red_share = shape_mask(first).mean()
    assert 0.02 < red_share < 0.9  # the square's colour is moved around, not lost


def test_unknown_module_lists_the_choices(annotators):
    with pytest.raises(PreprocessorError, match="not found; available: none, invert"):
        annotators.run("depth_anything", np.zeros((8, 8, 3), np.uint8), resolution=64)


def test_names_and_aliases_resolve_to_one_preprocessor():
    assert find_preprocessor("softedge_hed") is find_preprocessor("hed")
    assert find_preprocessor("depth_midas") is find_preprocessor("depth")
    assert find_preprocessor("lineart_realistic").name == "lineart"
    assert find_preprocessor("lineart_standard (from white bg & black line)").name == "lineart_standard"
    assert find_preprocessor("None").name == "none" and find_preprocessor("").name == "none"
    assert len({spec.name for spec in PREPROCESSORS}) == len(PREPROCESSORS)


# ---------------------------------------------------------------- geometry


def test_resize_with_pad_pads_to_64_and_cuts_back():
    image = np.zeros((30, 50, 3), np.uint8)
    padded, unpad = resize_with_pad(image, 100)
    assert padded.shape[:2] == (128, 192)  # 100 × 167 → padded to multiples of 64
    assert unpad(padded).shape[:2] == (100, 167)


def test_pixel_perfect_resolution_is_the_extension_formula():
    # raw 300 × 200 (w × h) to 512 × 768: k = (768/200, 512/300); crop uses max, fill uses min
    assert pixel_perfect_resolution((300, 200), 512, 768, CROP_AND_RESIZE) == round(768 / 200 * 200)
    assert pixel_perfect_resolution((300, 200), 512, 768, RESIZE_AND_FILL) == round(512 / 300 * 200)
    assert pixel_perfect_resolution((300, 200), 512, 768, JUST_RESIZE) == 768


def test_fit_control_map_modes():
    control = np.zeros((50, 100, 3), np.uint8)
    control[:, 40:60] = 200  # a grey bar in the middle
    stretched = fit_control_map(control, JUST_RESIZE, 64, 64)
    cropped = fit_control_map(control, CROP_AND_RESIZE, 64, 64)
    filled = fit_control_map(control, RESIZE_AND_FILL, 64, 64)
    assert stretched.shape == cropped.shape == filled.shape == (64, 64, 3)
    assert (cropped[:, :, 0] > 100).mean() > (stretched[:, :, 0] > 100).mean()  # the crop keeps the middle
    assert (filled[:8, :, 0] == 0).all() and (filled[-8:, :, 0] == 0).all()  # bars filled with the border colour


def test_binary_maps_stay_binary_when_enlarged():
    edges = np.zeros((32, 32, 3), np.uint8)
    edges[16, 4:28] = 255
    enlarged = fit_control_map(edges, JUST_RESIZE, 96, 96)
    assert set(np.unique(enlarged)) <= {0, 255}


# ---------------------------------------------------------------- preprocessors with weights


def forbid_hub(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a preprocessor tried to download from the Hub")

    import controlnet_aux.hed
    import controlnet_aux.pidi
    for module in (controlnet_aux.hed, controlnet_aux.pidi):
        monkeypatch.setattr(module, "hf_hub_download", refuse)


def write_random_hed(folder) -> None:
    from controlnet_aux.hed import ControlNetHED_Apache2

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), folder / "ControlNetHED.pth")


def test_weight_needing_preprocessors_are_missing_with_instructions(annotators):
    status = annotators.status(find_preprocessor("softedge_hed"))
    assert not status.available and status.missing == ("ControlNetHED.pth",)
    assert "softedge_hed" not in [spec.label for spec in annotators.available()]
    with pytest.raises(PreprocessorError) as error:
        annotators.run("softedge_hed", np.zeros((64, 64, 3), np.uint8), resolution=64)
    assert "ControlNetHED.pth" in str(error.value) and "annotators" in str(error.value)


def test_hed_loads_from_a_local_folder_of_random_weights(tmp_path, scene_image, monkeypatch):
    forbid_hub(monkeypatch)
    root = tmp_path / "annotators"
    write_random_hed(root / "hed")  # the A1111 extension's downloads/<module>/ layout works too
    annotators = Annotators((root,), device=torch.device("cpu"))
    assert "softedge_hed" in [spec.label for spec in annotators.available()]
    detected = annotators.run("softedge_hed", scene_image, resolution=64)
    assert detected.shape == (64, 96, 3) and detected.dtype == np.uint8
    assert np.array_equal(detected, annotators.run("hed", scene_image, resolution=64))  # cached detector, same map
    annotators.unload()


def test_pidinet_loads_its_state_dict_wrapper(tmp_path, scene_image, monkeypatch):
    from controlnet_aux.pidi.model import pidinet

    forbid_hub(monkeypatch)
    root = tmp_path / "annotators"
    root.mkdir()
    torch.manual_seed(0)
    weights = {"module." + key: value for key, value in pidinet().state_dict().items()}
    torch.save({"state_dict": weights}, root / "table5_pidinet.pth")
    annotators = Annotators((root,), device=torch.device("cpu"))
    detected = annotators.run("softedge_pidinet", scene_image, resolution=64)
    assert detected.shape == (64, 96, 3)


def test_a_broken_weights_file_is_reported_not_raised_raw(tmp_path, scene_image):
    root = tmp_path / "annotators"
    root.mkdir()
    (root / "ControlNetHED.pth").write_bytes(b"not a torch file")
    annotators = Annotators((root,), device=torch.device("cpu"))
    with pytest.raises(PreprocessorError, match="softedge_hed failed"):
        annotators.run("softedge_hed", scene_image, resolution=64)
