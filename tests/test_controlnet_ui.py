"""ControlNet in the txt2img/img2img UI: an infotext (↙️, PNG Info → Send to) restores the units' fields, and the
units' detected maps follow the images in the gallery unless "Do not append detectmap to output" is set. Tiny random
SD1.5 checkpoint and ControlNets built in code; the handlers are the ones the tabs wire."""
from __future__ import annotations

from dataclasses import astuple

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules.app import App, create_app
from modules.engine.request import ControlNetUnit, GenerationRequest
from modules.engine.result import GenerationResult
from modules.options import parse_options
from modules.ui import img2img, results, topbar, txt2img
from modules.ui.controlnet_form import default_unit_values, field_name, units_from_form
from modules.ui.controlnet_paste import (PasteChoices, controlnet_paste_values, match_model, split_unit_text,
                                         unit_fields)
from modules.ui.txt2img_form import default_form_values, pasted_for_txt2img
from tests.fixtures.tiny_controlnets import tiny_controlnet, write_folder, write_ldm_file
from tests.fixtures.tiny_models import tiny_sd15_components, write_single_file

CANNY = ("Module: canny, Model: cn_a [e3b0c442], Weight: 0.8, Resize Mode: Just Resize, Processor Res: 256, "
         "Threshold A: 60.0, Threshold B: 180.0, Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: False, "
         "Control Mode: My prompt is more important")
MODULES = ("none", "invert (from white bg & black line)", "canny", "shuffle", "lineart_standard")
CHOICES = PasteChoices(3, ("None", "cn_a [e3b0c442]", "cn_b [e3b0c442]"), MODULES)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    data = tmp_path_factory.mktemp("cn-ui")
    sd1 = tiny_sd15_components(1)
    write_single_file(sd1, data / "models" / "Stable-diffusion" / "tiny.safetensors")
    write_ldm_file(tiny_controlnet(sd1.unet, seed=5), data / "models" / "ControlNet" / "cn_a.safetensors")
    write_folder(tiny_controlnet(sd1.unet, seed=6), data / "models" / "ControlNet" / "cn_b")
    application = create_app(parse_options(["--data-dir", str(data)]))
    yield application
    application.jobs.shutdown()


def two_units(circle: Image.Image) -> list[ControlNetUnit]:
    return [ControlNetUnit(model="cn_a", image=circle, module="canny", weight=0.8, guidance_start=0.1,
                           guidance_end=0.9, control_mode=1, resize_mode=0, processor_res=256, threshold_a=60,
                           threshold_b=180),
            ControlNetUnit(model="cn_b", image=circle, module="invert", weight=1.25, control_mode=2, resize_mode=2,
                           pixel_perfect=True)]


def unit_form(count: int = 3) -> dict:
    return {field_name(index, name): value for index in range(count) for name, value in default_unit_values().items()}


def handler(blocks: gr.Blocks, component: gr.components.Component, event: str):
    """The function a tab wired to `component`'s `event` (what gradio calls for the browser)."""
    found = [fn.fn for fn in blocks.fns.values() if (component._id, event) in fn.targets]
    assert len(found) == 1, (component, event, len(found))
    return found[0]


def built_txt2img(app: App) -> tuple[gr.Blocks, topbar.TopBar, txt2img.Txt2ImgTab]:
    with gr.Blocks() as blocks:
        bar = topbar.build_topbar(app)
        tab = txt2img.build_txt2img(app)
        txt2img.wire_txt2img(app, tab, bar)
    return blocks, bar, tab


# ------------------------------------------------------------------------------------------------ parsing (pure)


def test_unit_text_splits_into_fields_in_the_current_and_the_legacy_format() -> None:
    assert unit_fields(split_unit_text(CANNY)) == {
        "module": "canny", "model": "cn_a [e3b0c442]", "weight": "0.8", "resize_mode": "Just Resize",
        "processor_res": "256", "threshold_a": "60.0", "threshold_b": "180.0", "guidance_start": "0.1",
        "guidance_end": "0.9", "pixel_perfect": "False", "control_mode": "My prompt is more important"}
    legacy = ("preprocessor: canny, model: control_sd15_canny [fef5e48e], weight: 1, starting/ending: (0.2, 0.8), "
              "resize mode: Crop and Resize, pixel perfect: False, control mode: Balanced, "
              "preprocessor params: (512, 100, 200)")
    assert unit_fields(split_unit_text(legacy)) == {
        "module": "canny", "model": "control_sd15_canny [fef5e48e]", "weight": "1", "guidance_start": "0.2",
        "guidance_end": "0.8", "resize_mode": "Crop and Resize", "pixel_perfect": "False",
        "control_mode": "Balanced", "processor_res": "512", "threshold_a": "100", "threshold_b": "200"}
    newer = "Module: canny, Low Vram: False, Hr Option: Both, Save Detected Map: True"  # the UI lacks the 2nd and 4th
    assert unit_fields(split_unit_text(newer)) == {"module": "canny", "hr_option": "Both"}


def test_models_match_by_title_then_name_then_hash() -> None:
    titles = ["None", "canny_v1 [11111111]", "depth [22222222]"]
    assert match_model("canny_v1 [11111111]", titles) == "canny_v1 [11111111]"
    assert match_model("Canny_V1 [99999999]", titles) == "canny_v1 [11111111]"  # another version of the file
    assert match_model("canny_v1", titles) == "canny_v1 [11111111]"
    assert match_model("renamed [22222222]", titles) == "depth [22222222]"
    assert match_model("openpose [33333333]", titles) is None
    assert match_model("canny", titles) is None  # no partial matches: a wrong model is worse than a warning


def test_paste_sets_every_field_of_each_named_unit() -> None:
    parsed = {"Steps": "20", "ControlNet 0": CANNY,
              "ControlNet 1": "Module: invert, Model: cn_b [e3b0c442], Weight: 1.25, Resize Mode: Resize and Fill, "
                              "Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: True, "
                              "Control Mode: ControlNet is more important"}
    values, warnings = controlnet_paste_values(parsed, CHOICES)
    assert warnings == []
    assert {name: values[field_name(0, name)] for name in ("enabled", "module", "model", "weight", "resize_mode",
                                                            "processor_res", "threshold_a", "threshold_b",
                                                            "guidance_start", "guidance_end", "pixel_perfect",
                                                            "control_mode")} == {
        "enabled": True, "module": "canny", "model": "cn_a [e3b0c442]", "weight": 0.8, "resize_mode": "Just Resize",
        "processor_res": 256, "threshold_a": 60.0, "threshold_b": 180.0, "guidance_start": 0.1,
        "guidance_end": 0.9, "pixel_perfect": False, "control_mode": "My prompt is more important"}
    # invert has no sliders: they get the defaults of the hidden sliders, as choosing the module would
    assert values[field_name(1, "module")] == "invert (from white bg & black line)"
    assert (values[field_name(1, "processor_res")], values[field_name(1, "pixel_perfect")]) == (512, True)
    assert values[field_name(1, "control_mode")] == "ControlNet is more important"
    assert not any(name.startswith("controlnet_2_") for name in values)  # unit 2 is left as it is
    assert "image" not in {name.split("_", 2)[2] for name in values}  # the control image is not in infotexts


def test_what_the_ui_cannot_show_is_kept_and_named_in_a_warning() -> None:
    parsed = {
        "ControlNet 0": "Module: softedge_hed, Model: control_v11p_sd15_softedge [a8575a2a], Weight: 5, "
                        "Processor Res: 512, Threshold A: 1, Control Mode: Sideways",
        "ControlNet 1": "Module: ip-adapter_clip_sd15, Model: cn_b [e3b0c442], Weight: heavy, "
                        "Resize Mode: Inner Fit (Scale to Fit), Pixel Perfect: maybe",
        "ControlNet 2": "Module: canny, Model: cn_a, Processor Res: 4096, Threshold A: -1, Threshold B: 300",
        "ControlNet 3": "Module: canny, Model: cn_a"}
    values, warnings = controlnet_paste_values(parsed, CHOICES)
    unit0 = {key for key in values if key.startswith("controlnet_0_")}
    assert unit0 == {field_name(0, "enabled"), field_name(0, "weight")}  # module, model, sliders, mode kept
    assert values[field_name(0, "weight")] == 2.0  # clamped to the slider
    assert values[field_name(1, "model")] == "cn_b [e3b0c442]" and field_name(1, "module") not in values
    assert values[field_name(1, "resize_mode")] == "Crop and Resize"  # the extension's legacy name
    assert field_name(1, "weight") not in values and field_name(1, "pixel_perfect") not in values
    # above the maximum → the maximum, below the minimum (legacy -1: unused) → the default
    sliders = [values[field_name(2, name)] for name in ("processor_res", "threshold_a", "threshold_b")]
    assert sliders == [2048, 100, 255]
    assert values[field_name(2, "model")] == "cn_a [e3b0c442]"
    text = "\n".join(warnings)
    for expected in ("ControlNet 0: preprocessor softedge_hed needs annotator weight files",
                     "ControlNet 0: ControlNet model 'control_v11p_sd15_softedge [a8575a2a]' is not installed",
                     "ControlNet 0: control_mode must be one of", "ControlNet 1: preprocessor 'ip-adapter_clip_sd15' "
                     "is not available", "ControlNet 1: weight 'heavy' is not a number",
                     "ControlNet 1: pixel perfect 'maybe' is not True/False",
                     "ControlNet 3: this tab has 3 ControlNet units"):
        assert expected in text, expected
    assert not any(key.startswith("controlnet_3_") for key in values)


# ------------------------------------------------------------------------------------------------ round trip


def test_engine_infotext_of_two_units_pastes_back_to_the_same_units(app: App, circle: Image.Image) -> None:
    units = two_units(circle)
    result = app.jobs.run(GenerationRequest(prompt="a red circle", width=64, height=64, steps=2, seed=3,
                                            sampler_name="Euler", save_images=False, controlnet_units=units),
                          timeout=300)
    pasted = pasted_for_txt2img(app, result.infotexts[0])
    assert pasted.warnings == [] and pasted.form["steps"] == 2
    form = {**unit_form(), **pasted.form, field_name(0, "image"): circle, field_name(1, "image"): circle}
    for name in (field_name(index, "upload_independent") for index in range(3)):
        form.pop(name)  # the txt2img form has no such box
    back = units_from_form(form)
    titles = [app.models.controlnets.find(unit.model).title for unit in units]
    assert [unit.model for unit in back] == titles
    for original, restored in zip(units, back):
        assert astuple(restored)[3:] == astuple(original)[3:]  # every field after model, image, mask


# ------------------------------------------------------------------------------------------------ handlers


def test_paste_button_and_send_to_img2img_set_units_and_their_sliders(app: App, circle: Image.Image) -> None:
    blocks, _, tab = built_txt2img(app)
    title = app.models.controlnets.find("cn_a").title
    unit_text = CANNY.replace("cn_a [e3b0c442]", title)
    infotext = f'a red circle\nSteps: 4, Seed: 1, Size: 64x64, ControlNet 0: "{unit_text}"'
    updates = handler(blocks, tab.prompt.paste, "click")(infotext, "")
    fields = tab.fields
    assert updates[fields[field_name(0, "enabled")]] is True and updates[fields[field_name(0, "model")]] == title
    assert updates[fields[field_name(0, "module")]] == "canny"
    assert updates[fields[field_name(0, "control_mode")]] == "My prompt is more important"
    low = updates[fields[field_name(0, "threshold_a")]]  # the slider as canny shows it, holding the pasted value
    assert isinstance(low, gr.Slider) and (low.value, low.label, low.visible) == (60.0, "Canny Low Threshold", True)
    assert updates[fields[field_name(0, "processor_res")]].value == 256
    assert fields[field_name(1, "enabled")] not in updates
    # choosing a module by hand resets its sliders; a pasted module must not (it sets them itself)
    module = fields[field_name(0, "module")]
    assert handler(blocks, module, "input")("canny")[1].value == 100
    assert not [fn for fn in blocks.fns.values() if (module._id, "change") in fn.targets]

    with gr.Blocks():  # PNG Info → Send to img2img: the same fields in the img2img tab
        img2img_bar = topbar.build_topbar(app)
        img2img_tab = img2img.build_img2img(app)
    received = img2img.receive_updates(app, img2img_tab, img2img_bar, "img2img", circle, infotext)
    assert received[img2img_tab.fields[field_name(0, "model")]] == title
    assert received[img2img_tab.fields[field_name(0, "threshold_b")]].value == 180.0
    assert set(received) <= set(img2img.receive_outputs(img2img_tab, img2img_bar))


def test_paste_of_a_missing_model_warns_and_keeps_the_units_model(app: App) -> None:
    _, bar, tab = built_txt2img(app)
    infotext = 'x\nSteps: 4, Seed: 1, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b]"'
    with pytest.warns(UserWarning, match=r"control_v11p_sd15_canny \[d14c016b\]' is not installed"):
        updates = txt2img.paste_updates(app, tab, bar, infotext)
    assert tab.fields[field_name(0, "model")] not in updates and updates[tab.fields[field_name(0, "enabled")]]


def test_generate_shows_each_units_detected_map_after_the_images(app: App, circle: Image.Image) -> None:
    blocks, _, tab = built_txt2img(app)
    title_a, title_b = (app.models.controlnets.find(name).title for name in ("cn_a", "cn_b"))
    values = {**default_form_values(64), **unit_form(), "prompt": "a red circle", "steps": 2, "seed": 5,
              "batch_size": 2,
              **{field_name(0, name): value for name, value in (("enabled", True), ("image", circle),
                                                                 ("model", title_a))},  # module none
              **{field_name(1, name): value for name, value in (("enabled", True), ("image", circle),
                                                                 ("model", title_b), ("module", "canny"),
                                                                 ("pixel_perfect", True))}}
    for index in range(3):
        values.pop(field_name(index, "upload_independent"))
    data = {tab.fields[name]: value for name, value in values.items()}
    final = list(handler(blocks, tab.prompt.generate, "click")(data))[-1]
    images, info = final[tab.gallery], final[tab.gallery_info]
    assert len(images) == 5  # grid, two images, then the maps of units 0 and 1
    assert np.array_equal(np.asarray(images[3]), np.asarray(circle))  # "none": the control image itself
    edges = np.asarray(images[4])
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255}  # canny at the pixel-perfect size
    assert info.infotexts[3:] == ["", ""] and info.seeds == [5, 5, 6, -1, -1]
    assert "ControlNet 1: " in info.infotexts[0] and "parameters" not in images[4].info

    app.update_settings({"control_net_no_detectmap": True})
    try:
        quiet = list(handler(blocks, tab.prompt.generate, "click")(data))[-1]
    finally:
        app.update_settings({"control_net_no_detectmap": False})
    assert len(quiet[tab.gallery]) == 3 and len(quiet[tab.gallery_info].infotexts) == 3


def test_gallery_puts_maps_after_the_images_and_skips_units_without_one(circle: Image.Image) -> None:
    image, edges = Image.new("RGB", (64, 64), "white"), Image.new("RGB", (512, 512), "black")
    result = GenerationResult(GenerationRequest(prompt="x"), [image], ["x\nSteps: 2"], [7], [8], ["x"], [""],
                              detected_maps=[None, edges, circle])  # unit 0: weight 0, nothing detected
    images, info = results.gallery_from_result(result)
    assert images == [image, edges, circle]
    assert (info.infotexts, info.seeds, info.subseeds) == (["x\nSteps: 2", "", ""], [7, -1, -1], [8, -1, -1])
    info.selected = 2
    assert info.infotext() == "" and info.seed() == -1  # nothing to paste or reuse from a map


def test_setting_appears_with_the_extensions_label() -> None:
    from modules.settings import Settings
    from modules.ui.settings_tab import editable_fields, setting_label

    field = next(field for field in editable_fields() if field.name == "control_net_no_detectmap")
    assert setting_label(field) == "Do not append detectmap to output" and Settings().control_net_no_detectmap is False


def test_hires_fix_option_shows_while_hires_fix_is_ticked(app: App) -> None:
    blocks, _, tab = built_txt2img(app)
    radios = [tab.fields[field_name(index, "hr_option")] for index in range(3)]
    assert not any(radio.visible for radio in radios)  # hires fix starts off
    enable_hr = tab.fields["enable_hr"]
    wired = [fn for fn in blocks.fns.values() if (enable_hr._id, "change") in fn.targets
             and {radio._id for radio in radios} <= {output._id for output in fn.outputs}]
    assert len(wired) == 1
    assert [update.visible for update in wired[0].fn(True)] == [True] * 3
    assert [update.visible for update in wired[0].fn(False)] == [False] * 3
