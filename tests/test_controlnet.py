"""ControlNet models and the engine's control, on tiny random SD1.5 / SDXL checkpoints and ControlNets built in code:
the three file forms load to the same network, residuals equal diffusers' own ControlNet pipeline, weight 0 is no
unit, start/end steps, control modes, several units, hires, img2img and inpaint, SDXL, family mismatch, infotext."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline
from PIL import Image, ImageDraw

from modules.app import create_app
from modules.engine.controlnet import ActiveUnit, ControlPlan, PreparedUnit, active_units, attach
from modules.engine.infotext import parse_infotext
from modules.engine.preprocessors import find_preprocessor
from modules.engine.request import ControlNetUnit, GenerationRequest, HiresOptions, Img2ImgOptions, InpaintOptions
from modules.jobs import JobFailed
from modules.models.controlnet_loader import ControlNetMismatchError
from modules.models.controlnets import UnknownControlNetError, legacy_hash
from modules.options import parse_options
from tests.fixtures.tiny_controlnets import (tiny_controlnet, tiny_union_controlnet, write_diffusers_file,
                                             write_folder, write_ldm_file)
from tests.fixtures.tiny_models import (tiny_sd15_components, tiny_sdxl_components, write_single_file)

SMALL = dict(width=64, height=64, steps=4, cfg_scale=5.0, seed=42, save_images=False, prompt="a red circle",
             sampler_name="Euler")
SD1_FORMS = ("sd1_ldm", "sd1_diffusers", "sd1_folder", "sd1_pickle")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    checkpoints, controlnets = data / "models" / "Stable-diffusion", data / "models" / "ControlNet"
    sd1, sdxl = tiny_sd15_components(1), tiny_sdxl_components(4)
    write_single_file(sd1, checkpoints / "alpha.safetensors")
    write_single_file(sdxl, checkpoints / "xl.safetensors")
    write_single_file(tiny_sd15_components(1, in_channels=9), checkpoints / "inpainting.safetensors")
    sd1_net, sdxl_net = tiny_controlnet(sd1.unet, seed=5), tiny_controlnet(sdxl.unet, seed=6)
    write_ldm_file(sd1_net, controlnets / "sd1_ldm.safetensors")
    write_diffusers_file(sd1_net, controlnets / "sub" / "sd1_diffusers.safetensors")
    write_folder(sd1_net, controlnets / "sd1_folder")
    write_ldm_file(sd1_net, controlnets / "sd1_pickle.pth")
    write_ldm_file(tiny_controlnet(sd1.unet, seed=7), controlnets / "sd1_other.safetensors")
    write_ldm_file(sdxl_net, controlnets / "sdxl_ldm.safetensors")
    write_folder(sdxl_net, controlnets / "sdxl_folder")
    write_folder(tiny_union_controlnet(sdxl.unet, seed=8), controlnets / "sdxl_union")
    application = create_app(parse_options(["--data-dir", str(data), "--ckpt", "alpha.safetensors"]))
    yield application
    application.jobs.shutdown()


def run(app, **fields):
    return app.jobs.run(GenerationRequest(**{**SMALL, **fields}), timeout=300)


def unit(model="sd1_ldm", **fields) -> ControlNetUnit:
    return ControlNetUnit(model=model, **fields)


def pixels(result, index=0) -> np.ndarray:
    return np.asarray(result.images[index]).astype(int)


@pytest.fixture(scope="module")
def plain(app):
    return pixels(run(app))


# ---------------------------------------------------------------- models on disk


def test_models_are_listed_with_the_extensions_titles(app):
    entries = {entry.name: entry for entry in app.models.controlnets.entries}
    assert set(entries) == {*SD1_FORMS, "sd1_other", "sdxl_ldm", "sdxl_folder", "sdxl_union"}
    ldm = entries["sd1_ldm"]
    with open(ldm.path, "rb") as file:
        file.seek(0x100000)
        expected = hashlib.sha256(file.read(0x10000)).hexdigest()[:8]
    assert ldm.title == f"sd1_ldm [{expected}]" == f"sd1_ldm [{legacy_hash(ldm.path)}]"


def test_lookup_accepts_title_stem_any_case_other_hash_and_part(app):
    cache = app.models.controlnets
    title = cache.find("sd1_ldm").title
    assert cache.find(title).name == cache.find("SD1_LDM").name == cache.find("sd1_ldm [deadbeef]").name == "sd1_ldm"
    assert cache.find("pickle").name == "sd1_pickle"
    with pytest.raises(UnknownControlNetError, match="not found; available: .*sd1_folder"):
        cache.find("depth_anything")


def test_every_form_loads_the_same_weights(app):
    model = app.models.model
    networks = [app.models.controlnets.load_for(name, model).network for name in SD1_FORMS]
    reference = networks[0].state_dict()
    for network in networks[1:]:
        state = network.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[key], reference[key]) for key in reference)


def test_networks_are_cached_and_freed(app):
    cache, model = app.models.controlnets, app.models.model
    first = cache.load_for("sd1_ldm", model)
    assert cache.load_for("sd1_ldm [00000000]", model) is first
    cache.set_limit(1)
    cache.load_for("sd1_other", model)
    assert cache.loaded_titles() == [cache.find("sd1_other").title]
    cache.set_limit(2)
    cache.clear()
    assert cache.loaded_titles() == []


def test_a_controlnet_for_another_family_is_refused_with_both_names(app, circle):
    message = r"ControlNet sdxl_ldm is for SDXL .* checkpoint alpha is SD 1\.x"
    with pytest.raises(ControlNetMismatchError, match=message):
        app.models.controlnets.load_for("sdxl_ldm", app.models.model)
    with pytest.raises(JobFailed, match="is for SDXL models"):
        run(app, controlnet_units=[unit("sdxl_folder", image=circle)])


# ---------------------------------------------------------------- engine


def test_the_hook_equals_diffusers_controlnet_pipeline(app):
    """Balanced, whole range, one unit: our UNet hook on the plain pipeline = StableDiffusionControlNetPipeline."""
    model = app.models.model
    network = app.models.controlnets.load_for("sd1_folder", model).network
    hint = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    plan = ControlPlan([PreparedUnit(0, unit(resize_mode=0), find_preprocessor("none"), network, hint, None)], {}, 1)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    call = dict(prompt="a red circle", negative_prompt="blue", num_inference_steps=3, guidance_scale=5.0,
                latents=latents, output_type="latent")
    pipe = model.pipeline("txt2img", EulerDiscreteScheduler.from_config(model.scheduler_config))
    with torch.inference_mode(), attach(pipe, plan, width=64, height=64):
        ours = pipe(**call).images
    parts = model.components
    reference = StableDiffusionControlNetPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        controlnet=network, scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        theirs = reference(image=torch.from_numpy(hint).permute(2, 0, 1)[None].float() / 255, **call).images
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not parts.unet._forward_pre_hooks  # the hook is removed afterwards


def test_all_forms_control_the_same_way_and_weight_zero_is_no_unit(app, circle, plain):
    controlled = [pixels(run(app, controlnet_units=[unit(name, image=circle, module="canny")])) for name in
                  ("sd1_ldm", "sd1_folder")]
    assert np.array_equal(controlled[0], controlled[1])
    assert np.abs(controlled[0] - plain).max() > 8
    assert np.array_equal(pixels(run(app, controlnet_units=[unit(image=circle, module="canny", weight=0)])), plain)


def test_start_and_end_steps(app, circle, plain):
    whole = pixels(run(app, controlnet_units=[unit(image=circle)]))
    late = pixels(run(app, controlnet_units=[unit(image=circle, guidance_start=0.5, guidance_end=1.0)]))
    assert not np.array_equal(late, whole) and not np.array_equal(late, plain)
    # A1111: a unit acts at step i of n when start ≤ i/n ≤ end; i/n < 1 for every step, so start 1 never acts
    never = pixels(run(app, controlnet_units=[unit(image=circle, guidance_start=1.0, guidance_end=1.0)]))
    assert np.array_equal(never, plain)


def test_unit_mask_limits_where_the_control_applies(app, circle, plain):
    nowhere, everywhere = Image.new("L", (64, 64), 0), Image.new("L", (64, 64), 255)
    assert np.array_equal(pixels(run(app, controlnet_units=[unit(image=circle, mask=nowhere)])), plain)
    assert np.array_equal(pixels(run(app, controlnet_units=[unit(image=circle, mask=everywhere)])),
                          pixels(run(app, controlnet_units=[unit(image=circle)])))


def test_control_modes_and_soft_scales(app, circle):
    images = [pixels(run(app, controlnet_units=[unit(image=circle, control_mode=mode)])) for mode in range(3)]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    soft = ActiveUnit(None, torch.zeros(1), None, 0.5, 0.0, 1.0, True, False, None)  # type: ignore[arg-type]
    assert soft.scales(13) == pytest.approx([0.5 * 0.825 ** (12 - k) for k in range(13)])
    assert soft.scales(10) == soft.scales(13)[:10]  # SDXL: the first ten
    balanced = ActiveUnit(None, torch.zeros(1), None, 0.5, 0.0, 1.0, False, False, None)  # type: ignore[arg-type]
    assert balanced.scales(13) == [0.5] * 13


def test_several_units_combine(app, circle):
    square = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(square).rectangle((8, 8, 30, 30), fill="black")
    first = unit(image=circle, module="canny")
    second = unit("sd1_other", image=square, module="invert")
    both = run(app, controlnet_units=[first, second])
    assert not np.array_equal(pixels(both), pixels(run(app, controlnet_units=[first])))
    assert not np.array_equal(pixels(both), pixels(run(app, controlnet_units=[second])))
    params = parse_infotext(both.infotexts[0])
    assert params["ControlNet 1"].startswith("Module: invert (from white bg & black line), Model: sd1_other [")
    assert [image.size for image in both.detected_maps] == [(512, 512), (64, 64)]  # canny at 512, none as given


def test_infotext_records_each_unit_as_the_extension_does(app, circle):
    result = run(app, controlnet_units=[unit(image=circle, module="canny", threshold_a=50)])
    title = app.models.controlnets.find("sd1_ldm").title
    expected = (f"Module: canny, Model: {title}, Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 512, "
                f"Threshold A: 50.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
                f"Pixel Perfect: False, Control Mode: Balanced")
    assert f'ControlNet 0: "{expected}"' in result.infotexts[0]
    assert parse_infotext(result.infotexts[0])["ControlNet 0"] == expected
    assert result.info["extra_generation_params"]["ControlNet 0"] == expected
    edges = np.asarray(result.detected_maps[0])
    assert set(np.unique(edges)) <= {0, 255} and edges.shape == (512, 512, 3)  # canny at the processor resolution


def test_pixel_perfect_preprocesses_at_the_output_size(app, circle):
    result = run(app, controlnet_units=[unit(image=circle, module="canny", pixel_perfect=True)])
    assert result.detected_maps[0].size == (64, 64)
    assert "Processor Res: 64" in result.infotexts[0] and "Pixel Perfect: True" in result.infotexts[0]


def test_hires_fix_refits_the_map_to_the_second_pass(app, circle):
    hires = HiresOptions(scale=1.5, steps=2, denoising_strength=0.5)
    controlled = run(app, controlnet_units=[unit(image=circle)], hires=hires)
    assert controlled.images[0].size == (96, 96)
    assert not np.array_equal(pixels(controlled), pixels(run(app, hires=hires)))
    network = app.models.controlnets.load_for("sd1_ldm", app.models.model).network
    prepared = PreparedUnit(0, unit(image=circle), find_preprocessor("canny"), network,
                            np.zeros((64, 64, 3), np.uint8), None)
    plan = ControlPlan([prepared], {}, 1)
    [first] = active_units(plan, 64, 64, torch.device("cpu"), torch.float32)
    [second] = active_units(plan.for_hires(), 96, 96, torch.device("cpu"), torch.float32)
    assert first.hint.shape[-2:] == (64, 64) and second.hint.shape[-2:] == (96, 96)
    assert not first.soft and second.soft  # canny: soft weights in the hires pass, as the extension forces


def test_img2img_and_inpaint_take_the_input_image_when_the_unit_has_none(app, circle):
    options = Img2ImgOptions(init_images=[circle], denoising_strength=0.6)
    plain_img2img = run(app, img2img=options, mode="img2img")
    controlled = run(app, img2img=options, mode="img2img", controlnet_units=[unit(module="canny")])
    assert not np.array_equal(pixels(controlled), pixels(plain_img2img))
    assert np.array_equal(np.asarray(controlled.detected_maps[0]),
                          np.asarray(run(app, controlnet_units=[unit(image=circle, module="canny")]).detected_maps[0]))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    inpaint = Img2ImgOptions(init_images=[circle], denoising_strength=0.8, inpaint=InpaintOptions(mask=mask))
    plain_inpaint = run(app, img2img=inpaint, mode="img2img")
    controlled = run(app, img2img=inpaint, mode="img2img", controlnet_units=[unit(module="canny")])
    assert not np.array_equal(pixels(controlled), pixels(plain_inpaint))
    assert np.array_equal(pixels(controlled)[:, 48:], np.asarray(circle).astype(int)[:, 48:])  # outside kept


def test_inpainting_checkpoint_feeds_the_controlnet_its_latent_channels(app, circle):
    mask = Image.new("L", (64, 64), 255)
    options = Img2ImgOptions(init_images=[circle], denoising_strength=0.8, inpaint=InpaintOptions(mask=mask))
    job = dict(img2img=options, mode="img2img", checkpoint="inpainting.safetensors")
    plain_run = run(app, **job)
    controlled = run(app, **job, controlnet_units=[unit("sd1_folder")])
    assert not np.array_equal(pixels(controlled), pixels(plain_run))


def test_sdxl_units_from_single_file_and_folder(app, circle):
    xl = dict(checkpoint="xl.safetensors")
    plain_xl = pixels(run(app, **xl))
    from_file = pixels(run(app, **xl, controlnet_units=[unit("sdxl_ldm", image=circle)]))
    from_folder = pixels(run(app, **xl, controlnet_units=[unit("sdxl_folder", image=circle)]))
    assert np.array_equal(from_file, from_folder) and not np.array_equal(from_file, plain_xl)
    soft = pixels(run(app, **xl, controlnet_units=[unit("sdxl_folder", image=circle, control_mode=2)]))
    assert not np.array_equal(soft, from_file)
    with pytest.raises(JobFailed, match=r"is for SD 1\.x models"):
        run(app, **xl, controlnet_units=[unit("sd1_ldm", image=circle)])


def test_union_controlnet_folder_takes_the_control_type_from_the_preprocessor(app, circle):
    xl = dict(checkpoint="xl.safetensors")
    canny = pixels(run(app, **xl, controlnet_units=[unit("sdxl_union", image=circle, module="canny")]))
    lineart = pixels(run(app, **xl, controlnet_units=[unit("sdxl_union", image=circle, module="lineart_standard")]))
    assert not np.array_equal(canny, pixels(run(app, **xl))) and not np.array_equal(canny, lineart)
    with pytest.raises(JobFailed, match="union ControlNet needs to know the kind of control map"):
        run(app, **xl, controlnet_units=[unit("sdxl_union", image=circle, module="shuffle")])


def test_units_without_services_or_image_are_errors(circle):
    from modules.engine.controlnet import prepare_control
    from modules.engine.request import RequestError

    request = GenerationRequest(**{**SMALL, "controlnet_units": [unit(image=circle)]})
    with pytest.raises(ValueError, match="no ControlNet models"):
        prepare_control(None, request, None, seed=0)  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="no control image"):
        GenerationRequest(**{**SMALL, "controlnet_units": [unit()]}).validate()


# ---------------------------------------------------------------- UI form (gradio-free)


def form_values(unit_index: int = 0, **fields) -> dict:
    from modules.ui.controlnet_form import default_unit_values, field_name

    values = {**default_unit_values(), **fields}
    return {field_name(unit_index, name): value for name, value in values.items()}


def test_form_units_become_request_units(app, circle):
    from modules.engine.request import RequestError
    from modules.ui.controlnet_form import units_from_form

    title = app.models.controlnets.find("sd1_ldm").title
    values = {**form_values(0, enabled=True, image=circle, module="canny", model=title, threshold_a=60,
                            control_mode="ControlNet is more important", resize_mode="Just Resize"),
              **form_values(1, model="None")}  # a disabled unit
    values.pop("controlnet_0_upload_independent")
    values.pop("controlnet_1_upload_independent")
    [made] = units_from_form(values)
    assert (made.model, made.module, made.threshold_a, made.threshold_b) == (title, "canny", 60.0, 200.0)
    assert (made.control_mode, made.resize_mode, made.image.size) == (2, 0, (64, 64))
    invert = units_from_form({**values, "controlnet_0_module": "invert (from white bg & black line)"})[0]
    assert invert.module == "invert" and invert.threshold_a is None  # invert has no thresholds
    with pytest.raises(RequestError, match="ControlNet Unit 0 is enabled but has no model"):
        units_from_form({**values, "controlnet_0_model": "None"})
    with pytest.raises(RequestError, match="upload a control image"):
        units_from_form({**values, "controlnet_0_image": None})
    img2img = {**values, "controlnet_0_upload_independent": False}  # the img2img tab has this box
    assert units_from_form(img2img)[0].image is None  # → the img2img input
    assert units_from_form({**img2img, "controlnet_0_upload_independent": True})[0].image is not None


def test_form_choices_sliders_and_preview(app, circle):
    from modules.ui.controlnet_form import (missing_preprocessors_text, model_choices, module_choices, run_preview,
                                            slider_settings)

    assert module_choices(app)[:3] == ["none", "invert (from white bg & black line)", "canny"]
    assert "softedge_hed" not in module_choices(app)
    assert "**softedge_hed**: ControlNetHED.pth" in missing_preprocessors_text(app)
    assert model_choices(app) == ["None", *app.models.controlnets.titles()]
    resolution, low, high = slider_settings("canny")
    assert resolution.visible and (low.label, low.value, high.label, high.value) == (
        "Canny Low Threshold", 100, "Canny High Threshold", 200)
    assert not any(setting.visible for setting in slider_settings("none"))
    unit_fields = {"image": circle, "module": "canny", "processor_res": 128, "resize_mode": "Crop and Resize"}
    assert run_preview(app, unit_fields, None, 64, 64).size == (128, 128)
    assert run_preview(app, {**unit_fields, "pixel_perfect": True, "image": None}, circle, 64, 64).size == (64, 64)
