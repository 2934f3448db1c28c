"""Outpainting canvas, mask and request building (modules/engine/outpaint.py): pure image work, no model."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.engine.outpaint import (
    OUTPAINT_FILLS,
    OutpaintSpec,
    canvas_layout,
    outpaint_request,
    poor_mans_outpainting_request,
    prepare_canvas,
    spec_for_aspect,
)
from modules.engine.request import GenerationRequest, Img2ImgOptions, RequestError


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def white_box(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) == 255


@pytest.mark.parametrize("fill", OUTPAINT_FILLS)
@pytest.mark.parametrize("size, spec_sides", [
    ((64, 64), dict(left=32)),
    ((60, 52), dict(right=5, down=3)),
    ((64, 48), dict(left=7, right=9, up=16, down=1)),
    ((61, 64), dict(up=8)),  # width not extended but not a multiple of 8: it grows on the right
])
def test_canvas_is_a_multiple_of_8_with_the_original_at_its_offset(fill, size, spec_sides):
    image = random_image(*size)
    spec = OutpaintSpec(**spec_sides, fill=fill)
    canvas, mask = prepare_canvas(image, spec, seed=3)
    layout = canvas_layout(*size, spec)
    assert canvas.size == mask.size == (layout.width, layout.height)
    assert canvas.width % 8 == 0 and canvas.height % 8 == 0
    assert canvas.mode == "RGB" and mask.mode == "L"
    for name in ("left", "right", "up", "down"):  # at least what was asked; extra only on the grown sides
        assert getattr(layout, name) >= spec_sides.get(name, 0)
    assert layout.width - size[0] - sum(spec_sides.get(n, 0) for n in ("left", "right")) < 8
    x, y = layout.offset
    kept = np.asarray(canvas)[y:y + size[1], x:x + size[0]]
    assert np.array_equal(kept, np.asarray(image))


def test_extra_pixels_are_split_between_both_extended_sides():
    layout = canvas_layout(60, 64, OutpaintSpec(left=10, right=3))
    assert (layout.left, layout.right, layout.width) == (13, 7, 80)
    assert canvas_layout(64, 64, OutpaintSpec(down=5)).down == 8


def test_mask_is_white_exactly_over_the_new_area_and_the_overlap():
    image = random_image(64, 64)
    spec = OutpaintSpec(left=16, down=24, overlap=8)
    _, mask = prepare_canvas(image, spec, seed=0)
    expected = np.ones((88, 80), dtype=bool)
    # the kept box: original at x 16..80, y 0..64, minus 8 px on the grown sides (left and bottom)
    expected[0:64 - 8, 16 + 8:80] = False
    assert np.array_equal(white_box(mask), expected)
    assert set(np.unique(np.asarray(mask))) == {0, 255}


def test_zero_overlap_repaints_only_the_new_area():
    _, mask = prepare_canvas(random_image(64, 64), OutpaintSpec(right=16, overlap=0), seed=0)
    assert white_box(mask)[:, 64:].all() and not white_box(mask)[:, :64].any()


def test_edge_fill_continues_a_plain_background():
    image = Image.new("RGB", (64, 64), (30, 60, 220))
    canvas, _ = prepare_canvas(image, OutpaintSpec(left=32, right=32), seed=0)
    assert np.abs(np.asarray(canvas).astype(int) - (30, 60, 220)).max() <= 1


def test_edge_and_blur_fills_take_the_colour_of_the_nearest_edge():
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    image.paste((30, 160, 50), (32, 0, 64, 64))  # right half green
    for fill in ("edge", "blur"):
        pixels = np.asarray(prepare_canvas(image, OutpaintSpec(left=64, right=64, fill=fill), seed=0)[0]).astype(int)
        assert np.abs(pixels[32, 0] - (220, 30, 30)).max() < 20, fill  # far left: red
        assert np.abs(pixels[32, -1] - (30, 160, 50)).max() < 20, fill  # far right: green


def test_seeded_noise_is_deterministic_and_centred_on_the_edge_colour():
    image = Image.new("RGB", (64, 64), (120, 100, 80))
    spec = OutpaintSpec(up=64, fill="noise")
    first, _ = prepare_canvas(image, spec, seed=7)
    again, _ = prepare_canvas(image, spec, seed=7)
    other, _ = prepare_canvas(image, spec, seed=8)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    new_area = np.asarray(first)[:64].reshape(-1, 3).astype(float)
    assert np.allclose(new_area.mean(axis=0), (120, 100, 80), atol=2)
    assert 15 < new_area.std(axis=0).mean() < 35


def test_spec_for_aspect_adds_to_the_short_dimension_evenly():
    wide = spec_for_aspect(64, 64, 2.0, fill="blur", overlap=4)
    assert (wide.left, wide.right, wide.up, wide.down) == (32, 32, 0, 0)
    assert (wide.fill, wide.overlap) == ("blur", 4)
    tall = spec_for_aspect(96, 64, 3 / 4)
    assert (tall.left, tall.right, tall.up, tall.down) == (0, 0, 32, 32)
    odd = spec_for_aspect(64, 64, 65 / 64)
    assert odd.left + odd.right == 1
    with pytest.raises(RequestError, match="already has the aspect ratio"):
        spec_for_aspect(64, 64, 1.0)
    with pytest.raises(RequestError, match="positive"):
        spec_for_aspect(64, 64, 0.0)


@pytest.mark.parametrize("spec, message", [
    (OutpaintSpec(), "at least one side"),
    (OutpaintSpec(left=-8), "left must be between 0 and 1024"),
    (OutpaintSpec(down=1025), "down must be between 0 and 1024"),
    (OutpaintSpec(left=1024, right=1024), "larger than 2048x2048"),
    (OutpaintSpec(left=8, fill="mirror"), "fill must be one of edge, blur, noise"),
    (OutpaintSpec(left=8, overlap=-1), "overlap"),
    (OutpaintSpec(left=8, mask_blur=65), "mask blur"),
])
def test_invalid_specs_raise_request_errors(spec, message):
    with pytest.raises(RequestError, match=message):
        prepare_canvas(random_image(64, 64), spec, seed=0)


def test_outpaint_request_is_an_inpaint_request_on_the_canvas():
    base = GenerationRequest(prompt="a red circle", seed=-1, width=512, height=512, steps=3)
    spec = OutpaintSpec(left=16, right=16, fill="noise", mask_blur=6)
    request = outpaint_request(base, random_image(64, 64), spec)
    request.validate()
    options = request.img2img
    assert options is not None and options.inpaint is not None
    assert (request.width, request.height, request.mode) == (96, 64, "img2img")
    assert request.seed >= 0 and request.prompt == "a red circle" and request.steps == 3
    assert options.source_label == "outpaint" and options.resize_mode == 0 and 0 < options.denoising_strength <= 1
    assert options.init_images[0].size == (96, 64) and options.inpaint.mask.size == (96, 64)
    inpaint = options.inpaint
    assert (inpaint.mask_blur_x, inpaint.mask_blur_y, inpaint.masked_content, inpaint.full_res) == (6, 6, "original",
                                                                                                   False)
    # the resolved seed drives the pre-fill: the same request again gives the same canvas
    again = outpaint_request(base.replace(seed=request.seed), random_image(64, 64), spec)
    assert np.array_equal(np.asarray(again.img2img.init_images[0]), np.asarray(options.init_images[0]))
    assert outpaint_request(base, random_image(64, 64), spec, denoising_strength=0.5).img2img.denoising_strength == 0.5


def test_poor_mans_outpainting_follows_the_a1111_script_arguments():
    base = GenerationRequest(seed=5, batch_size=4, n_iter=2, width=64, height=64,
                             img2img=Img2ImgOptions(init_images=[random_image(64, 64)], denoising_strength=0.6))
    request = poor_mans_outpainting_request(base, random_image(64, 64), 32, 4, 2, ["left", "down"])
    request.validate()
    options = request.img2img
    assert (request.width, request.height, request.batch_size, request.n_iter) == (96, 96, 1, 1)
    assert options.denoising_strength == 0.6 and options.inpaint.masked_content == "latent noise"
    assert (options.inpaint.mask_blur_x, options.inpaint.full_res) == (8, False)  # blur doubled, whole picture
    mask = white_box(options.inpaint.mask)
    assert mask[:, :32 + 8].all() and mask[64 - 8:, :].all()  # new area + 2·mask_blur overlap
    assert not mask[:64 - 8, 32 + 8:].any()
    for index, name in enumerate(("fill", "original", "latent noise", "latent nothing")):
        made = poor_mans_outpainting_request(base, random_image(64, 64), 8, 4, index, ["right"])
        assert made.img2img.inpaint.masked_content == name and made.width == 72


@pytest.mark.parametrize("args, message", [
    ((8, 4, 0, []), "directions"),
    ((8, 4, 0, ["sideways"]), "directions"),
    ((8, 40, 0, ["left"]), "mask blur"),
    ((8, 4, 4, ["left"]), "masked content"),
    ((0, 4, 0, ["left"]), "at least one side"),
    ((2000, 4, 0, ["left"]), "1024"),
])
def test_poor_mans_outpainting_rejects_bad_arguments(args, message):
    with pytest.raises(RequestError, match=message):
        poor_mans_outpainting_request(GenerationRequest(), random_image(64, 64), *args)
