"""The img2img and Outpaint tabs: form values → requests for every mode, masks from the ImageEditor, batch
folders and infotexts, send-to, and generation end to end through the tab handlers with the default model."""
from __future__ import annotations

import random
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from modules.app import App, create_app
from modules.engine.request import RequestError
from modules.img2img_batch import BatchError, BatchRun, apply_infotext, find_mask, plan_batch, plan_from_form
from modules.jobs import JobState
from modules.options import parse_options
from modules.paths import PROJECT_ROOT
from modules.shapes import world
from modules.shapes.scorer import read_image
from modules.ui import build_ui, generation, img2img, outpaint, topbar
from modules.ui.img2img_form import (default_img2img_values, editor_mask, pasted_for_img2img,
                                     request_from_img2img_form, resize_by_text, scaled_size, size_from_image,
                                     submit_img2img)
from modules.ui.outpaint_form import (canvas_text, default_outpaint_values, parse_aspect_ratio, prompts_from_image,
                                      request_from_outpaint_form, sides_for_aspect, submit_outpaint)
from modules.ui.results import GalleryInfo
from modules.ui.send_to import gallery_selection
from tests.fixtures.tiny_models import write_tiny_sd15_single_file

DEFAULT_MODEL = PROJECT_ROOT / "models" / "Stable-diffusion" / "shapes-v3.safetensors"


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory: pytest.TempPathFactory) -> App:
    data = tmp_path_factory.mktemp("img2img-ui")
    write_tiny_sd15_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors")
    application = create_app(parse_options(["--data-dir", str(data)]))
    yield application
    application.jobs.shutdown()


@pytest.fixture(scope="module")
def shapes_app(tmp_path_factory: pytest.TempPathFactory) -> App:
    data = tmp_path_factory.mktemp("img2img-shapes")
    application = create_app(parse_options(["--data-dir", str(data), "--ckpt-dir", str(DEFAULT_MODEL.parent)]))
    yield application
    application.jobs.shutdown()


def scene_image(colour: str = "red", background: str = "blue", size: int = 64) -> Image.Image:
    shape = world.make_shape(random.Random(3), "circle", colour, "large", "center")
    return world.render(world.ShapeScene(background, (shape,)), size)


def painted_layer(size: tuple[int, int], box: tuple[int, int, int, int], alpha: int = 200) -> Image.Image:
    """What the ImageEditor's brush leaves: a transparent RGBA layer with a (translucent) stroke."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle(box, fill=(255, 255, 255, alpha))
    return layer


def form(**changes) -> dict:
    return {**default_img2img_values(64), "prompt": "a red circle on a blue background", "steps": 4, "seed": 7,
            **changes}


# ------------------------------------------------------------------------------------------- form → request


def test_defaults_are_a1111s() -> None:
    values = default_img2img_values(64)
    assert (values["denoising_strength"], values["mask_blur"], values["masked_content"], values["inpaint_area"],
            values["inpaint_padding"], values["resize_mode"]) == (0.75, 4, "original", "Whole picture", 32,
                                                                   "Just resize")
    assert (values["width"], values["height"], values["mode"]) == (64, 64, "img2img")
    assert "hr_scale" not in values and "enable_hr" not in values


def test_img2img_mode_flattens_the_upload_and_maps_resize_mode() -> None:
    upload = scene_image().convert("RGBA")
    request = request_from_img2img_form(form(init_image=upload, resize_mode="Crop and resize", width=96,
                                             denoising_strength=0.4), noise_multiplier=0.9)
    options = request.img2img
    assert request.mode == "img2img" and (request.width, request.height) == (96, 64) and request.hires is None
    assert options.init_images[0].mode == "RGB" and options.init_images[0].tobytes() == upload.convert("RGB").tobytes()
    assert (options.resize_mode, options.denoising_strength, options.inpaint, options.source_label) == (
        1, 0.4, None, "img2img")
    assert options.initial_noise_multiplier == 0.9
    request.validate()


def test_sketch_mode_uses_the_composite_with_the_strokes() -> None:
    background = scene_image().convert("RGBA")
    strokes = painted_layer(background.size, (0, 0, 20, 20), alpha=255)
    composite = Image.alpha_composite(background, strokes)
    request = request_from_img2img_form(form(mode="sketch", sketch={"background": background, "layers": [strokes],
                                                                     "composite": composite}))
    assert request.img2img.init_images[0].tobytes() == composite.convert("RGB").tobytes()
    assert request.img2img.inpaint is None and request.img2img.source_label == "sketch"


def test_inpaint_mask_is_the_painted_layer_and_options_are_mapped() -> None:
    background = scene_image().convert("RGBA")
    editor = {"background": background, "layers": [painted_layer(background.size, (10, 20, 29, 39), alpha=100)],
              "composite": background}
    request = request_from_img2img_form(form(mode="inpaint", inpaint=editor, mask_blur=6,
                                             mask_mode="Inpaint not masked", masked_content="latent noise",
                                             inpaint_area="Only masked", inpaint_padding=48))
    inpaint = request.img2img.inpaint
    mask = np.asarray(inpaint.mask)
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    assert mask[20:40, 10:30].min() == 255 and mask.sum() == 255 * 20 * 20  # exactly the stroke, translucent too
    assert request.img2img.init_images[0].tobytes() == background.convert("RGB").tobytes()  # strokes not included
    assert (inpaint.mask_blur_x, inpaint.mask_blur_y, inpaint.invert, inpaint.masked_content, inpaint.full_res,
            inpaint.full_res_padding) == (6, 6, True, "latent noise", True, 48)
    request.validate()


def test_inpaint_layer_of_another_size_is_scaled_to_the_image_and_empty_masks_are_refused() -> None:
    background = scene_image().convert("RGBA")
    mask = editor_mask({"background": background, "layers": [painted_layer((128, 128), (0, 0, 63, 127))]})
    assert mask.size == (64, 64) and np.asarray(mask)[:, :32].min() == 255 and np.asarray(mask)[:, 32:].max() == 0
    empty = {"background": background, "layers": [Image.new("RGBA", (64, 64))], "composite": background}
    with pytest.raises(RequestError, match="mask is empty"):
        request_from_img2img_form(form(mode="inpaint", inpaint=empty))
    with pytest.raises(RequestError, match="Inpaint: upload an image first"):
        request_from_img2img_form(form(mode="inpaint", inpaint=None))


def test_inpaint_upload_reads_grey_or_alpha_masks_and_checks_the_size() -> None:
    image = scene_image()
    grey = Image.new("L", (64, 64), 0)
    grey.paste(200, (0, 0, 32, 64))
    request = request_from_img2img_form(form(mode="inpaint_upload", inpaint_upload_image=image,
                                             inpaint_upload_mask=grey.convert("RGB")))
    assert np.asarray(request.img2img.inpaint.mask)[:, :32].min() == 255
    assert np.asarray(request.img2img.inpaint.mask)[:, 32:].max() == 0
    alpha = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    alpha.paste((0, 0, 0, 255), (32, 0, 64, 64))  # black but opaque: A1111 reads the alpha
    request = request_from_img2img_form(form(mode="inpaint_upload", inpaint_upload_image=image,
                                             inpaint_upload_mask=alpha))
    assert np.asarray(request.img2img.inpaint.mask)[:, 32:].min() == 255
    with pytest.raises(RequestError, match="upload a mask too"):
        request_from_img2img_form(form(mode="inpaint_upload", inpaint_upload_image=image))
    with pytest.raises(RequestError, match="mask is 32x32 but the image is 64x64"):
        request_from_img2img_form(form(mode="inpaint_upload", inpaint_upload_image=image,
                                       inpaint_upload_mask=Image.new("L", (32, 32))))


def test_resize_by_scales_the_image_size_and_snaps_to_8() -> None:
    image = Image.new("RGB", (100, 60))
    request = request_from_img2img_form(form(init_image=image, size_source="by", scale_by=1.5))
    assert (request.width, request.height) == scaled_size(100, 60, 1.5) == (144, 88)
    assert resize_by_text(image, 1.5) == "resize: from 100x60 to 144x88"
    assert resize_by_text(None, 2) == "no image selected"
    assert size_from_image(image) == (96, 64) and size_from_image(Image.new("RGB", (30, 5000))) == (64, 2048)
    with pytest.raises(RequestError, match="width must be a multiple of 8 between 64"):
        request_from_img2img_form(form(init_image=image, size_source="by", scale_by=0.5)).validate()


def test_paste_into_img2img_takes_denoising_and_inpaint_settings(tiny_app: App) -> None:
    text = ("cat\nNegative prompt: dog\nSteps: 9, Sampler: Euler a, CFG scale: 5, Seed: 3, Size: 64x64, "
            "Denoising strength: 0.35, Mask blur: 9, Masked content: latent nothing, Inpaint area: Only masked, "
            "Masked area padding: 16, Mask mode: Sideways")
    pasted = pasted_for_img2img(tiny_app, text)
    assert {k: pasted.form[k] for k in ("prompt", "negative_prompt", "steps", "seed", "denoising_strength",
                                        "mask_blur", "masked_content", "inpaint_area", "inpaint_padding")} == {
        "prompt": "cat", "negative_prompt": "dog", "steps": 9, "seed": 3, "denoising_strength": 0.35,
        "mask_blur": 9, "masked_content": "latent nothing", "inpaint_area": "Only masked", "inpaint_padding": 16}
    assert "mask_mode" not in pasted.form and any("Sideways" in w for w in pasted.warnings)
    hires = pasted_for_img2img(tiny_app, "cat\nSteps: 9, Seed: 3, Denoising strength: 0.5, Hires upscale: 2")
    assert "denoising_strength" not in hires.form and "enable_hr" not in hires.form  # that was the hires strength


# ------------------------------------------------------------------------------------------------------ batch


def _png(path: Path, colour: str, infotext: str | None = None, size: int = 64) -> Path:
    chunks = PngImagePlugin.PngInfo()
    if infotext:
        chunks.add_text("parameters", infotext)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene_image(colour, size=size).save(path, pnginfo=chunks)
    return path


def test_server_folders_are_refused_when_listening_or_sharing(tmp_path: Path) -> None:
    _png(tmp_path / "in" / "a.png", "red")
    for flag in ("--listen", "--share"):
        with pytest.raises(BatchError, match="Input directory: folders on the server .* not listening"):
            plan_batch(parse_options([flag]), input_dir=str(tmp_path / "in"))
        with pytest.raises(BatchError, match="Output directory"):
            plan_batch(parse_options([flag]), uploads=[tmp_path / "in" / "a.png"], output_dir=str(tmp_path / "out"))
        assert plan_batch(parse_options([flag]), uploads=[tmp_path / "in" / "a.png"]).inputs  # uploads are fine
    assert plan_batch(parse_options([]), input_dir=str(tmp_path / "in")).inputs == [tmp_path / "in" / "a.png"]
    with pytest.raises(BatchError, match="not both"):
        plan_batch(parse_options([]), uploads=[tmp_path / "in" / "a.png"], input_dir=str(tmp_path / "in"))
    with pytest.raises(BatchError, match="upload images or enter an input directory"):
        plan_batch(parse_options([]))


def test_masks_are_matched_by_file_stem(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.webp"):
        _png(tmp_path / "in" / name, "red") if name.endswith("png") else scene_image().save(tmp_path / "in" / name)
    _png(tmp_path / "masks" / "a.jpg", "white")
    _png(tmp_path / "masks" / "c.png", "white")
    plan = plan_batch(parse_options([]), input_dir=str(tmp_path / "in"), mask_dir=str(tmp_path / "masks"))
    assert plan.inputs == [tmp_path / "in" / "a.png", tmp_path / "in" / "c.webp"]
    assert plan.masks[tmp_path / "in" / "c.webp"] == tmp_path / "masks" / "c.png"
    assert plan.warnings == ["no mask named b.* for b.png: skipped"]
    assert find_mask(Path("z.png"), [Path("only.png")]) == Path("only.png")  # one mask serves every image


def test_infotext_prompts_are_appended_and_chosen_fields_taken(tiny_app: App) -> None:
    text = "a green square\nNegative prompt: blurry\nSteps: 11, Sampler: Euler a, CFG scale: 4.5, Seed: 99"
    base = request_from_img2img_form(form(init_image=scene_image(), prompt="best", negative_prompt=""))
    both = apply_infotext(base, text, ("Prompt", "Negative prompt"))
    assert (both.prompt, both.negative_prompt, both.seed, both.steps) == ("best a green square", "blurry", 7, 4)
    every = apply_infotext(base, text, ("Seed", "CFG scale", "Sampler", "Steps"))
    assert (every.prompt, every.seed, every.cfg_scale, every.sampler_name, every.steps) == ("best", 99, 4.5,
                                                                                          "Euler a", 11)
    assert apply_infotext(base, None, ("Prompt",)) is base
    plan = plan_from_form(tiny_app.options, {"batch_files": ["x.png"], "batch_use_infotext": False,
                                             "batch_infotext_fields": ["Prompt"]})
    assert plan.infotext_fields == ()


def test_batch_runs_one_job_per_image_and_saves_to_the_output_folder(tiny_app: App, tmp_path: Path) -> None:
    uploads = [_png(tmp_path / "up" / "first.png", "red", "a purple circle\nSteps: 3, CFG scale: 6, Seed: 5"),
               _png(tmp_path / "up" / "second.png", "green", size=96)]
    values = form(mode="batch", batch_files=[str(p) for p in uploads], batch_output_dir=str(tmp_path / "out"),
                  batch_use_infotext=True, batch_infotext_fields=["Prompt", "Seed"], size_source="by", steps=2)
    run = submit_img2img(tiny_app, values)
    assert isinstance(run, BatchRun)
    jobs = list(run)
    results = [job.wait(60) for job in jobs]
    assert [job.state for job in jobs] == [JobState.DONE, JobState.DONE]
    assert [r.request.prompt for r in results] == ["a red circle on a blue background a purple circle", form()["prompt"]]
    assert results[0].seeds == [5] and [r.images[0].size for r in results] == [(64, 64), (96, 96)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.png", "second.png"]
    assert results[0].saved_paths == []  # with an output folder, nothing goes to outputs/img2img-images
    list(submit_img2img(tiny_app, {**values, "batch_files": [str(uploads[0])]}))  # again: nothing is overwritten
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first-1.png", "first.png", "second.png"]


# ---------------------------------------------------------------------------------------------------- outpaint


def test_outpaint_form_builds_an_inpaint_request_on_the_bigger_canvas() -> None:
    values = {**default_outpaint_values(), "image": scene_image(), "prompt": "a red circle on a blue background",
              "right": 32, "up": 16, "overlap": 8, "mask_blur": 4, "seed": 11, "denoising_strength": 0.9}
    request = request_from_outpaint_form(values)
    options = request.img2img
    assert (request.width, request.height, request.seed) == (96, 80, 11)
    assert options.init_images[0].size == options.inpaint.mask.size == (96, 80)
    assert (options.denoising_strength, options.inpaint.mask_blur_x, options.source_label) == (0.9, 4, "outpaint")
    mask = np.asarray(options.inpaint.mask)
    assert mask[16 + 8:, :64 - 8].max() == 0 and mask[:, 64:].min() == 255  # original kept, right side repainted
    request.validate()
    assert canvas_text(values) == "canvas: from 64x64 to 96x80"
    assert "at least one side" in canvas_text({**values, "right": 0, "up": 0})
    with pytest.raises(RequestError, match="upload an image first"):
        request_from_outpaint_form({**values, "image": None})


def test_outpaint_aspect_ratio_and_prompt_from_the_image() -> None:
    assert parse_aspect_ratio("16:9") == pytest.approx(16 / 9) and parse_aspect_ratio("1.5") == 1.5
    assert parse_aspect_ratio("4x3") == pytest.approx(4 / 3)
    with pytest.raises(RequestError, match="16:9"):
        parse_aspect_ratio("wide")
    sides = sides_for_aspect(Image.new("RGB", (64, 64)), "2:1", default_outpaint_values())
    assert sides == {"left": 32, "right": 32, "up": 0, "down": 0}
    image = scene_image()
    image.info["parameters"] = "a red circle\nNegative prompt: green\nSteps: 5, Seed: 1, Size: 64x64"
    assert prompts_from_image(image) == {"prompt": "a red circle", "negative_prompt": "green"}
    assert prompts_from_image(scene_image()) == {}


# ------------------------------------------------------------------------------------------------- UI and send-to


def _elem_ids(blocks: gr.Blocks) -> set[str]:
    return {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


def test_build_ui_has_img2img_outpaint_and_send_to_buttons(tiny_app: App) -> None:
    blocks = build_ui(tiny_app)
    labels = {block.label for block in blocks.blocks.values() if isinstance(block, gr.Tab)}
    assert {"txt2img", "img2img", "Sketch", "Inpaint", "Inpaint upload", "Batch", "Resize to", "Resize by",
            "Outpaint", "PNG Info"} <= labels
    ids = _elem_ids(blocks)
    for elem_id in ("img2img_prompt", "img2img_generate", "img2img_interrupt", "img2img_image", "img2img_sketch",
                    "img2img_inpaint_editor", "img_inpaint_mask", "img2img_batch_input_dir", "img2img_mask_blur",
                    "img2img_inpainting_fill", "img2img_denoising_strength", "img2img_scale", "img2img_gallery",
                    "outpaint_image", "outpaint_right", "outpaint_generate", "outpaint_gallery",
                    *(f"txt2img_send_to_{t}" for t in ("img2img", "inpaint", "outpaint", "extras")),
                    *(f"img2img_send_to_{t}" for t in ("img2img", "inpaint")), "outpaint_send_to_outpaint",
                    *(f"pnginfo_send_{t}" for t in ("txt2img", "img2img", "inpaint", "outpaint", "extras"))):
        assert elem_id in ids, elem_id
    listening = create_app(parse_options(["--listen", "--data-dir", str(tiny_app.paths.data_dir)]), load_model=False)
    with gr.Blocks():
        tab = img2img.build_img2img(listening)
    assert "refused" in tab.fields["batch_input_dir"].info
    listening.jobs.shutdown()


def test_send_to_inpaint_fills_the_editor_the_form_and_switches_tabs(tiny_app: App) -> None:
    with gr.Blocks():
        bar = topbar.build_topbar(tiny_app)
        tab = img2img.build_img2img(tiny_app)
    image = Image.new("RGB", (80, 72))
    updates = img2img.receive_updates(tiny_app, tab, bar, "inpaint", image, "a cat\nSteps: 5, Seed: 9, Size: 64x64")
    assert updates[tab.fields["inpaint"]] == {"background": image, "layers": [], "composite": image}
    assert updates[tab.fields["mode"]] == "inpaint" and updates[tab.mode_tabs].selected == "inpaint"
    assert updates[tab.inpaint_options].visible is True
    assert (updates[tab.fields["prompt"]], updates[tab.fields["seed"]]) == ("a cat", 9)
    assert (updates[tab.fields["width"]], updates[tab.fields["height"]]) == (80, 72)  # the image's own size
    assert set(updates) <= set(img2img.receive_outputs(tab, bar))
    plain = img2img.receive_updates(tiny_app, tab, bar, "img2img", image, "")
    assert plain[tab.fields["init_image"]] is image and plain[tab.inpaint_options].visible is False


def test_gallery_selection_sends_the_selected_image_with_its_infotext(tmp_path: Path) -> None:
    paths = [_png(tmp_path / f"{n}.png", colour) for n, colour in enumerate(("red", "green"))]
    info = GalleryInfo(["first", "second"], [1, 2], [1, 2], selected=1)
    image, infotext = gallery_selection([(str(p), None) for p in paths], info)
    assert infotext == "second" and read_image(image).background == "blue" and read_image(image).colour == "green"
    assert gallery_selection(None, info) == (None, "")


# ------------------------------------------------------------------------------------------------- end to end


def test_inpaint_through_the_tab_handler_recolours_the_shape_and_keeps_the_rest(shapes_app: App) -> None:
    with gr.Blocks():
        topbar.build_topbar(shapes_app)
        tab = img2img.build_img2img(shapes_app)
    source = scene_image("red", "blue").convert("RGBA")
    stroke = painted_layer((64, 64), (16, 16, 47, 47), alpha=255)
    values = form(mode="inpaint", prompt="a yellow circle on a blue background", steps=12, seed=3,
                  denoising_strength=1.0, masked_content="fill",
                  inpaint={"background": source, "layers": [stroke], "composite": source})
    final = list(generation.stream_job(tab.output, submit_img2img(shapes_app, values), time.perf_counter()))[-1]
    result = final[tab.output.gallery][0]
    assert result.size == (64, 64) and "Mask blur: 4" in final[tab.output.gallery_info].infotexts[0]
    before, after = np.asarray(source.convert("RGB"), dtype=int), np.asarray(result, dtype=int)
    outside = np.ones((64, 64), bool)
    outside[16 - 12:48 + 12, 16 - 12:48 + 12] = False  # the mask grown by its blur (3σ)
    assert np.abs(after - before)[outside].max() <= 2
    centre = after[24:40, 24:40].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 150 and centre[1] > 150 and centre[2] < 120, centre  # yellow now, was red


def test_outpaint_through_the_tab_handler_extends_the_canvas(shapes_app: App) -> None:
    with gr.Blocks():
        tab = outpaint.build_outpaint(shapes_app)
    values = {**default_outpaint_values(), "image": scene_image("red", "blue"), "right": 32, "left": 32,
              "prompt": "a red circle on a blue background", "steps": 12, "seed": 1}
    final = list(generation.stream_job(tab.output, submit_outpaint(shapes_app, values), time.perf_counter()))[-1]
    result = final[tab.output.gallery][0]
    assert result.size == (128, 64)
    reading = read_image(result.crop((0, 0, 32, 64)))  # the new left strip continues the background
    assert reading.background == "blue"
    assert read_image(result.crop((96, 0, 128, 64))).background == "blue"
