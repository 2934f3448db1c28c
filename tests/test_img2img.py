"""img2img and inpaint: plumbing on tiny random models, meaning on the shipped default model (shapes world)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from benchmarks.shapes_adherence import load_engine_model
from modules.app import create_app
from modules.engine.generate import EngineOptions, generate
from modules.engine.infotext import parse_infotext
from modules.engine.model import EngineModel
from modules.engine.request import MASKED_CONTENT, GenerationRequest, HiresOptions, Img2ImgOptions, InpaintOptions
from modules.engine.resize import resize_image
from modules.options import parse_options
from modules.paths import PROJECT_ROOT
from modules.shapes.scorer import nearest_colour_index, read_image
from modules.shapes.world import COLOURS, ShapeScene, make_shape, render
from tests.fixtures.observers import CountingObserver
from tests.fixtures.tiny_models import tiny_sd15_components, tiny_sdxl_components, write_tiny_sd15_single_file

SMALL = dict(width=64, height=64, steps=4, cfg_scale=5.0, seed=42, save_images=False)
SHAPES_CHECKPOINT = PROJECT_ROOT / "models" / "Stable-diffusion" / "shapes-v3.safetensors"


def tiny(components, name: str) -> EngineModel:
    return EngineModel(components, {"model_name": name}, native_size=components.native_size)


@pytest.fixture(scope="module")
def sd15():
    return tiny(tiny_sd15_components(1), "sd15")


@pytest.fixture(scope="module")
def sd15_inpainting():
    return tiny(tiny_sd15_components(2, in_channels=9), "sd15-inpaint")


def noise_image(width=64, height=64, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_mask(size, box) -> Image.Image:
    mask = Image.new("L", size)
    mask.paste(255, box)
    return mask


def img2img(model, image, *, options: EngineOptions = EngineOptions(), inpaint=None, strength=0.6, resize_mode=0,
            **fields):
    request = GenerationRequest(**{**SMALL, **fields}, mode="img2img", img2img=Img2ImgOptions(
        init_images=image if isinstance(image, list) else [image], denoising_strength=strength,
        resize_mode=resize_mode, inpaint=inpaint))
    return generate(model, request, options=options)


def untouched_region(mask: Image.Image, blur: int) -> np.ndarray:
    """Pixels farther than the blur kernel (half-width int(2.5σ + 0.5)) from any masked pixel."""
    reach = int(2.5 * blur + 0.5) if blur else 0
    grown = mask.filter(ImageFilter.MaxFilter(2 * reach + 1)) if reach else mask
    return np.asarray(grown) == 0


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


# ---------------------------------------------------------------------------------------------------- plumbing


@pytest.mark.parametrize("resize_mode", range(4))
def test_every_resize_mode_gives_the_requested_size(sd15, resize_mode):
    result = img2img(sd15, noise_image(96, 72), resize_mode=resize_mode, width=64, height=96)
    assert [image.size for image in result.images] == [(64, 96)]
    assert "Denoising strength: 0.6" in result.infotexts[0]


@pytest.mark.parametrize("full_res", [False, True], ids=["whole picture", "only masked"])
@pytest.mark.parametrize("content", MASKED_CONTENT)
def test_every_masked_content_and_area_keeps_the_pixels_outside_the_mask(sd15, content, full_res):
    # "Only masked" works on a crop of a larger image and pastes it back: the output has the source's size
    source = noise_image(96, 80) if full_res else noise_image()
    mask = box_mask(source.size, (30, 20, 50, 40))
    inpaint = InpaintOptions(mask=mask, mask_blur_x=3, mask_blur_y=3, masked_content=content, full_res=full_res,
                             full_res_padding=8)
    result = img2img(sd15, source, inpaint=inpaint, strength=0.8)
    image = result.images[0]
    assert image.size == source.size
    keep = untouched_region(mask, 3)
    assert np.array_equal(pixels(image)[keep], pixels(source)[keep])
    assert np.abs(pixels(image) - pixels(source))[~keep].mean() > 5  # and it did repaint the masked area


def test_inpaint_not_masked_repaints_the_outside(sd15):
    source = noise_image()
    mask = box_mask(source.size, (16, 16, 48, 48))
    result = img2img(sd15, source, inpaint=InpaintOptions(mask=mask, mask_blur_x=0, mask_blur_y=0, invert=True))
    inside = np.asarray(mask) > 0
    assert np.array_equal(pixels(result.images[0])[inside], pixels(source)[inside])
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


def test_overlay_setting_off_returns_the_raw_generation(sd15):
    source = noise_image()
    inpaint = InpaintOptions(mask=box_mask(source.size, (16, 16, 48, 48)))
    raw = img2img(sd15, source, inpaint=inpaint, options=EngineOptions(mask_apply_overlay=False))
    keep = untouched_region(inpaint.mask, 4)
    assert not np.array_equal(pixels(raw.images[0])[keep], pixels(source)[keep])


def test_upscaler_for_img2img_enlarges_small_init_images(sd15):
    calls = []

    def upscale(image, width, height, name):
        calls.append((image.size, width, height, name))
        return image.resize((width, height), Image.Resampling.NEAREST)

    options = EngineOptions(pixel_upscale=upscale, img2img_upscaler="4x-Test")
    img2img(sd15, noise_image(32, 32), options=options)
    img2img(sd15, noise_image(96, 96), options=options)  # shrinking: Lanczos, as A1111
    assert calls == [((32, 32), 64, 64, "4x-Test")]


def test_inpainting_checkpoint_runs_txt2img_img2img_and_inpaint(sd15_inpainting):
    txt2img = generate(sd15_inpainting, GenerationRequest(**SMALL))
    assert txt2img.images[0].size == (64, 64) and txt2img.info["is_using_inpainting_conditioning"] is True
    assert "Conditional mask weight: 1.0" in txt2img.infotexts[0]
    source = noise_image()
    plain = img2img(sd15_inpainting, source)
    assert plain.images[0].size == (64, 64) and plain.info["is_using_inpainting_conditioning"]
    # the source reaches the UNet through the masked-image channels only when the mask weight lets it
    half = img2img(sd15_inpainting, source, options=EngineOptions(inpainting_mask_weight=0.5))
    assert not np.array_equal(pixels(plain.images[0]), pixels(half.images[0]))
    assert "Conditional mask weight: 0.5" in half.infotexts[0]
    mask = box_mask(source.size, (8, 8, 24, 40))
    inpainted = img2img(sd15_inpainting, source, inpaint=InpaintOptions(mask=mask, masked_content="fill"))
    keep = untouched_region(mask, 4)
    assert np.array_equal(pixels(inpainted.images[0])[keep], pixels(source)[keep])


def test_hires_fix_on_an_inpainting_checkpoint_and_on_img2img_is_refused(sd15, sd15_inpainting):
    with pytest.raises(ValueError, match="inpainting checkpoint"):
        generate(sd15_inpainting, GenerationRequest(**SMALL, hires=HiresOptions(scale=1.5)))
    with pytest.raises(ValueError, match="txt2img option"):
        generate(sd15, GenerationRequest(**SMALL, hires=HiresOptions(), img2img=Img2ImgOptions([noise_image()])))


@pytest.mark.parametrize("in_channels", [4, 9], ids=["sdxl", "sdxl-inpaint"])
def test_sdxl_img2img_and_inpaint_run(in_channels):
    model = tiny(tiny_sdxl_components(3, in_channels=in_channels), "xl")
    source = noise_image()
    assert img2img(model, source, steps=3).images[0].size == (64, 64)
    mask = box_mask(source.size, (0, 0, 24, 64))
    result = img2img(model, source, steps=3, inpaint=InpaintOptions(mask=mask, full_res=True, full_res_padding=4))
    keep = untouched_region(mask, 4)
    assert np.array_equal(pixels(result.images[0])[keep], pixels(source)[keep])


def test_zero_denoising_returns_the_resized_input(sd15):
    source = noise_image(96, 80)
    result = img2img(sd15, source, strength=0.0, resize_mode=1)
    assert np.array_equal(pixels(result.images[0]), pixels(resize_image(source, 1, 64, 64)))
    mask = box_mask(source.size, (10, 10, 30, 30))
    inpainted = img2img(sd15, source, strength=0.0, inpaint=InpaintOptions(mask=mask, full_res=True))
    assert np.array_equal(pixels(inpainted.images[0]), pixels(source))


def test_same_request_same_pixels_and_init_images_cycle_with_per_image_seeds(sd15):
    first, second = noise_image(seed=1), noise_image(seed=2)
    batch = img2img(sd15, [first, second], batch_size=3, seed=100)
    again = img2img(sd15, [first, second], batch_size=3, seed=100)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(batch.images, again.images))
    assert batch.seeds == [100, 101, 102]
    # image 2 starts from init image 0 (2 % 2) with seed 102, whatever batch it was made in
    alone = img2img(sd15, first, seed=102)
    assert np.abs(pixels(batch.images[2]) - pixels(alone.images[0])).max() <= 1
    assert not np.array_equal(pixels(batch.images[0]), pixels(batch.images[1]))


@pytest.mark.parametrize(("strength", "fix_steps", "expected"),
                         [(0.3, False, 4), (0.75, False, 8), (1.0, False, 10), (0.01, False, 1), (0.3, True, 10)])
def test_steps_follow_a1111(sd15, strength, fix_steps, expected):
    """A1111: int(strength × steps) + 1 steps of a `steps` schedule; with img2img_fix_steps exactly `steps`."""
    observer = CountingObserver()
    request = GenerationRequest(**{**SMALL, "steps": 10}, img2img=Img2ImgOptions([noise_image()], strength))
    generate(sd15, request, observer=observer, options=EngineOptions(img2img_fix_steps=fix_steps))
    assert observer.passes == [[expected, expected]]


def test_variation_seed_and_noise_multiplier(sd15):
    source = noise_image()
    base = pixels(img2img(sd15, source).images[0])
    varied = img2img(sd15, source, subseed=7, subseed_strength=0.5)
    assert not np.array_equal(base, pixels(varied.images[0]))
    assert "Variation seed: 7" in varied.infotexts[0]
    quiet = img2img(sd15, source, options=EngineOptions(initial_noise_multiplier=0.5))
    assert not np.array_equal(base, pixels(quiet.images[0]))
    assert "Noise multiplier: 0.5" in quiet.infotexts[0]
    # the request's own multiplier wins over the setting
    request = GenerationRequest(**SMALL, img2img=Img2ImgOptions([source], 0.6, initial_noise_multiplier=0.5))
    own = generate(sd15, request, options=EngineOptions(initial_noise_multiplier=0.8))
    assert np.array_equal(pixels(own.images[0]), pixels(quiet.images[0]))


def test_inpaint_infotext_keys_parse_back(sd15):
    source = noise_image(96, 80)
    inpaint = InpaintOptions(mask=box_mask(source.size, (10, 10, 40, 30)), mask_blur_x=6, mask_blur_y=6, invert=False,
                             masked_content="latent noise", full_res=True, full_res_padding=16)
    result = img2img(sd15, source, inpaint=inpaint, strength=0.55)
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Denoising strength"] == "0.55"
    assert (parsed["Mask blur"], parsed["Masked content"]) == ("6", "latent noise")
    assert parsed["Inpaint area"] == "Only masked"
    assert int(parsed["Masked area padding"]) == 16 and parsed["Mask mode"] == "Inpaint masked"
    line = result.infotexts[0].splitlines()[-1]
    assert line.index("Mask blur") < line.index("Masked content") < line.index("Inpaint area") < line.index("Version")
    assert result.info["denoising_strength"] == 0.55
    assert result.info["extra_generation_params"]["Masked content"] == "latent noise"
    uneven = img2img(sd15, source, inpaint=InpaintOptions(mask=inpaint.mask, mask_blur_x=2, mask_blur_y=5))
    assert "Mask blur" not in uneven.infotexts[0]  # A1111 writes it only when x and y agree


def test_blank_mask_only_masked_falls_back_to_img2img_with_a_warning(sd15):
    result = img2img(sd15, noise_image(), inpaint=InpaintOptions(mask=Image.new("L", (64, 64)), full_res=True))
    assert result.images[0].size == (64, 64) and any("blank" in warning for warning in result.warnings)


# ---------------------------------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    ckpts = data / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    write_tiny_sd15_single_file(ckpts / "alpha.safetensors", seed=1)
    write_tiny_sd15_single_file(ckpts / "alpha-inpainting.safetensors", seed=2, in_channels=9)
    application = create_app(parse_options(["--data-dir", str(data), "--ckpt", "alpha.safetensors"]))
    yield application
    application.jobs.shutdown()


def test_outputs_land_in_img2img_folders_and_settings_apply(app, tmp_path):
    source = noise_image()
    options = Img2ImgOptions([source], 0.5, inpaint=InpaintOptions(mask=box_mask((64, 64), (0, 0, 32, 32))))
    request = GenerationRequest(**{**SMALL, "save_images": True, "batch_size": 2}, mode="img2img", img2img=options)
    result = app.jobs.run(request, timeout=120)
    samples = [path for path in result.saved_paths if "grids" not in str(path)]
    assert len(samples) == 2 and samples[0].parent.parent.name == "img2img-images"
    assert any(path.parent.parent.name == "img2img-grids" for path in result.saved_paths)
    assert Image.open(samples[0]).info["parameters"] == result.infotexts[0]
    app.update_settings({"outdir_img2img_samples": str(tmp_path / "mine"), "save_init_img": True,
                         "initial_noise_multiplier": 0.9})
    try:
        again = app.jobs.run(request.replace(save_grid=False, checkpoint="alpha-inpainting.safetensors"), timeout=120)
    finally:
        app.update_settings({"outdir_img2img_samples": "", "save_init_img": False, "initial_noise_multiplier": 1.0})
    assert all(path.parent.parent == tmp_path / "mine" for path in again.saved_paths)
    assert len(list((app.paths.outputs_dir / "init-images").glob("*.png"))) == 1
    assert "Noise multiplier: 0.9" in again.infotexts[0] and "Model: alpha-inpainting" in again.infotexts[0]
    keep = untouched_region(box_mask((64, 64), (0, 0, 32, 32)), 4)
    assert np.array_equal(pixels(again.images[0])[keep], pixels(source)[keep])


# ---------------------------------------------------------------------------------------------------- meaning


@pytest.fixture(scope="module")
def shapes_model() -> EngineModel:
    return load_engine_model(SHAPES_CHECKPOINT)


def shape_scene(kind: str, colour: str, background: str, position: str) -> Image.Image:
    return render(ShapeScene(background, (make_shape(random.Random(0), kind, colour, "large", position),)))


def shape_mask(image: Image.Image, grow: int = 4) -> Image.Image:
    """White over the shape (anything away from the corner's background colour), grown by `grow` pixels."""
    rgb = pixels(image)
    shape = (np.abs(rgb - rgb[0, 0]).sum(-1) > 60).astype(np.uint8) * 255
    return Image.fromarray(shape, "L").filter(ImageFilter.MaxFilter(2 * grow + 1))


def colour_share(image: Image.Image, where: np.ndarray, colour: str) -> float:
    return float((nearest_colour_index(pixels(image)[where].astype(np.float32)) == COLOURS.index(colour)).mean())


def default_request(prompt: str, **fields) -> GenerationRequest:
    """The app's default request (DPM++ 2M, 20 steps, CFG 7) at the model's native 64×64."""
    return GenerationRequest(prompt=prompt, width=64, height=64, save_images=False, save_grid=False, **fields)


def test_low_denoising_img2img_keeps_the_shapes_colour_and_position(shapes_model):
    """Seeds 1-3 on three scenes kept colour, background and position 9/9 at denoising 0.3 (the model itself
    does not follow positions, so the position comes from the init image)."""
    source = shape_scene("circle", "red", "blue", "left")
    expected = read_image(source)
    request = default_request("a red circle on a blue background", seed=1, batch_size=2,
                              img2img=Img2ImgOptions([source], denoising_strength=0.3))
    readings = [read_image(image) for image in generate(shapes_model, request).images]
    for reading in readings:
        assert (reading.colour, reading.background, reading.position) == \
            (expected.colour, expected.background, expected.position), readings


def test_inpainting_the_shape_with_another_colour_recolours_it_and_keeps_the_rest(shapes_model):
    """Red → yellow inside the mask. Measured 9/9 (3 scenes × seeds 1-3) for the scorer's shape colour at
    denoising 0.75 with masked content "original"; a majority of 3 seeds is required here."""
    source = shape_scene("circle", "red", "blue", "left")
    mask = shape_mask(source)
    request = default_request("a yellow circle on a blue background", seed=1, batch_size=3, img2img=Img2ImgOptions(
        [source], denoising_strength=0.75, inpaint=InpaintOptions(mask=mask)))
    images = generate(shapes_model, request).images
    inside = np.asarray(mask) > 0
    assert colour_share(source, inside, "red") > 0.5
    recoloured = [read_image(image).colour == "yellow" and colour_share(image, inside, "red") < 0.05
                  for image in images]
    assert sum(recoloured) >= 2, [read_image(image) for image in images]
    keep = untouched_region(mask, 4)
    for image in images:
        assert np.abs(pixels(image) - pixels(source))[keep].max() <= 2
