"""Pure mask and resize operations of img2img/inpaint (A1111 masking.py and images.resize_image semantics)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.engine.masking import (binary_mask, blur_mask, composite, expand_box_to_ratio, fill_masked, latent_mask,
                                    mask_box, overlay_mask_whole_picture)
from modules.engine.resize import latent_source_size, resize_image


def square_mask(size=(64, 48), box=(20, 10, 40, 30), value=255) -> Image.Image:
    mask = Image.new("L", size)
    mask.paste(value, box)
    return mask


def test_binary_mask_thresholds_at_128_reads_alpha_and_inverts():
    grey = Image.fromarray(np.array([[0, 128, 129, 255]], dtype=np.uint8))
    assert np.asarray(binary_mask(grey)).tolist() == [[0, 0, 255, 255]]
    assert np.asarray(binary_mask(grey, invert=True)).tolist() == [[255, 255, 0, 0]]
    # an RGBA brush layer: black paint, the stroke is in the alpha channel
    layer = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    layer.putpixel((1, 0), (0, 0, 0, 255))
    assert np.asarray(binary_mask(layer)).tolist() == [[0, 255, 0, 0]]


@pytest.mark.parametrize(("blur_x", "blur_y"), [(4, 4), (6, 0), (0, 3), (2, 9)])
def test_blur_spreads_only_within_its_kernel_on_each_axis(blur_x, blur_y):
    x1, y1, x2, y2 = 30, 20, 70, 60
    blurred = np.asarray(blur_mask(square_mask((100, 80), (x1, y1, x2, y2)), blur_x, blur_y))
    reach_x, reach_y = (int(2.5 * s + 0.5) if s else 0 for s in (blur_x, blur_y))  # cv2's kernel half-width
    ys, xs = np.nonzero(blurred)
    assert xs.min() >= x1 - reach_x and xs.max() <= x2 - 1 + reach_x
    assert ys.min() >= y1 - reach_y and ys.max() <= y2 - 1 + reach_y
    assert (blurred[40, x1 - 1] > 0) == (blur_x > 0)  # spreads sideways only with an x blur
    assert (blurred[y1 - 1, 50] > 0) == (blur_y > 0)
    assert blurred[40, 50] >= 250  # the middle stays fully masked


def test_mask_box_pads_and_clamps_and_blank_is_none():
    assert mask_box(square_mask()) == (20, 10, 40, 30)
    assert mask_box(square_mask(), 32) == (0, 0, 64, 48)
    assert mask_box(square_mask(), 5) == (15, 5, 45, 35)
    assert mask_box(Image.new("L", (8, 8))) is None


def test_expand_box_to_ratio_matches_a1111_examples():
    # A1111's docstring: a 128x32 region for a 512x512 job becomes 128x128
    assert expand_box_to_ratio((100, 200, 228, 232), 512, 512, 1024, 1024) == (100, 152, 228, 280)
    # pushed back inside the image at the bottom edge
    assert expand_box_to_ratio((0, 90, 40, 100), 64, 64, 100, 100) == (0, 60, 40, 100)
    # the image is too short for the ratio: clamped to the image
    assert expand_box_to_ratio((0, 0, 100, 10), 64, 64, 100, 50) == (0, 0, 100, 50)


def test_fill_paints_the_hole_from_its_surroundings_and_keeps_the_rest():
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    image.paste((30, 60, 220), (0, 32, 64, 64))  # bottom half blue
    image.paste((245, 245, 245), (8, 8, 24, 24))  # a white square inside the red half: the hole
    mask = square_mask((64, 64), (6, 6, 26, 26))
    filled = np.asarray(fill_masked(image, mask)).astype(int)
    source = np.asarray(image).astype(int)
    outside = np.asarray(mask) == 0
    assert np.abs(filled - source)[outside].max() <= 1
    hole = filled[10:22, 10:22].reshape(-1, 3).mean(0)
    assert hole[0] > 150 and hole[1] < 100 and hole[2] < 120, hole  # reddish, not white


def test_composite_is_exact_where_the_mask_is_zero_and_full_where_255():
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = blur_mask(square_mask((32, 32), (8, 8, 24, 24)), 3, 3)
    result, m = np.asarray(composite(source, generated, mask)), np.asarray(mask)
    assert np.array_equal(result[m == 0], np.asarray(source)[m == 0])
    assert np.array_equal(result[m == 255], np.asarray(generated)[m == 255])
    with pytest.raises(ValueError, match="equal sizes"):
        composite(source, generated, Image.new("L", (8, 8)))


def test_whole_picture_overlay_doubles_the_blurred_mask():
    mask = Image.fromarray(np.array([[0, 1, 100, 128, 200]], dtype=np.uint8))
    assert np.asarray(overlay_mask_whole_picture(mask)).tolist() == [[0, 2, 200, 255, 255]]


def test_latent_mask_rounds_a_downscaled_mask():
    cells = latent_mask(square_mask((64, 64), (0, 0, 32, 64)), 8, 8)
    assert cells.shape == (8, 8) and set(np.unique(cells)) <= {0.0, 1.0}
    assert cells[:, :4].min() == 1 and cells[:, 4:].max() == 0


def test_resize_modes_give_the_target_size_and_their_framing():
    image = Image.new("RGB", (100, 50), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 50))  # red left edge
    image.paste((0, 255, 0), (0, 0, 100, 5))  # green top edge
    for mode in range(4):
        assert resize_image(image, mode, 64, 64).size == (64, 64)
    stretched = np.asarray(resize_image(image, 0, 64, 64))
    assert stretched[32, 2].tolist() == [255, 0, 0]  # the red edge is still at the left
    cropped = np.asarray(resize_image(image, 1, 64, 64))
    assert cropped[40, 2, 2] > 200 and cropped[40, 2, 0] < 50  # the red edge was cropped away
    filled = np.asarray(resize_image(image, 2, 64, 64))
    # the image sits in the middle 64x32; the bars repeat its top (green) and bottom (blue) rows
    assert filled[2, 40, 1] > 200 and filled[61, 40, 2] > 200
    mask = resize_image(Image.new("L", (100, 50), 255), 2, 64, 64)
    assert mask.mode == "L" and np.asarray(mask).min() == 255


def test_resizer_is_used_only_to_enlarge():
    calls = []

    def resizer(image, width, height):
        calls.append((width, height))
        return image.resize((width, height), Image.Resampling.NEAREST)

    resize_image(Image.new("RGB", (32, 32)), 0, 64, 64, resizer=resizer)
    resize_image(Image.new("RGB", (128, 128)), 0, 64, 64, resizer=resizer)
    resize_image(Image.new("L", (32, 32)), 0, 64, 64, resizer=resizer)
    assert calls == [(64, 64)]


def test_latent_source_size_rounds_to_the_latent_grid():
    assert latent_source_size(Image.new("RGB", (100, 61))) == (96, 64)
    assert latent_source_size(Image.new("RGB", (3, 3))) == (8, 8)
