"""The ControlNet extension's per-unit "Hires-Fix Option" (hr_option) and the per-request
override_settings.control_net_no_detectmap, on a tiny random SD1.5 checkpoint and ControlNet: which passes a unit
controls (seen by the latent sizes the ControlNet is called with, and by images), the API's accepted forms and its
422, the infotext round trip through paste, and maps dropped for one request only."""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from modules.engine.request import ControlNetUnit, GenerationRequest, HiresOptions, Img2ImgOptions
from modules.ui.controlnet_form import default_unit_values, field_name, units_from_form
from modules.ui.txt2img_form import pasted_for_txt2img
from tests.fixtures.tiny_controlnets import tiny_controlnet, write_ldm_file
from tests.fixtures.tiny_models import tiny_sd15_components, write_single_file
from tests.test_api import serve_app

SMALL = dict(width=64, height=64, steps=3, cfg_scale=5.0, seed=7, save_images=False, prompt="a red circle",
             sampler_name="Euler")
HIRES = HiresOptions(scale=1.5, steps=2, denoising_strength=0.6)  # 64 → 96 px: latents 8×8 then 12×12
BASE, HIGH = (8, 8), (12, 12)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("webui")
    sd1 = tiny_sd15_components(1)
    write_single_file(sd1, data / "models" / "Stable-diffusion" / "tiny.safetensors")
    write_ldm_file(tiny_controlnet(sd1.unet, seed=5), data / "models" / "ControlNet" / "control_tiny.safetensors")
    app, handle = serve_app(data)
    with httpx.Client(base_url=handle.url, timeout=300) as client:
        yield client, app
    handle.stop()
    app.jobs.shutdown()


def run(app, **fields):
    return app.jobs.run(GenerationRequest(**{**SMALL, **fields}), timeout=300)


def controlled_sizes(app, **fields) -> tuple[object, list[tuple[int, int]]]:
    """(result, latent size of each ControlNet call): which passes the unit took part in."""
    network = app.models.controlnets.load_for("control_tiny", app.models.model).network
    sizes: list[tuple[int, int]] = []
    handle = network.register_forward_pre_hook(lambda _module, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        return run(app, **fields), sizes
    finally:
        handle.remove()


def unit(image, hr_option=0, **fields) -> ControlNetUnit:
    return ControlNetUnit(model="control_tiny", image=image, hr_option=hr_option, **fields)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------- engine


def test_each_option_controls_its_passes_only(server, circle):
    _, app = server
    calls = {}
    for option in range(3):
        _, sizes = controlled_sizes(app, controlnet_units=[unit(circle, option)], hires=HIRES)
        calls[option] = sorted(set(sizes))
    assert calls == {0: [BASE, HIGH], 1: [BASE], 2: [HIGH]}  # Both / Low res only / High res only


def test_low_res_only_changes_the_first_pass_high_res_only_leaves_it_as_without(server, circle):
    _, app = server
    # hires denoising 0: no hires sampling, the final image is the upscaled first pass
    first_pass_only = HiresOptions(scale=1.5, steps=2, denoising_strength=0.0)
    plain = pixels(run(app, hires=first_pass_only))
    low = pixels(run(app, hires=first_pass_only, controlnet_units=[unit(circle, 1)]))
    high = pixels(run(app, hires=first_pass_only, controlnet_units=[unit(circle, 2)]))
    assert not np.array_equal(low, plain)
    assert np.array_equal(high, plain)
    # with hires sampling, "High res only" does change the result (its hires pass is controlled)
    assert not np.array_equal(pixels(run(app, hires=HIRES, controlnet_units=[unit(circle, 2)])),
                              pixels(run(app, hires=HIRES)))


def test_without_hires_fix_and_in_img2img_every_unit_runs(server, circle):
    _, app = server
    for option in (1, 2):
        _, sizes = controlled_sizes(app, controlnet_units=[unit(circle, option)])
        assert sizes and set(sizes) == {BASE}
        img2img = Img2ImgOptions(init_images=[circle.resize((64, 64))], denoising_strength=0.8)
        result, sizes = controlled_sizes(app, controlnet_units=[unit(circle, option)], img2img=img2img,
                                         mode="img2img")
        assert sizes and set(sizes) == {BASE}
        assert "Hr Option" not in result.infotexts[0]


def test_infotext_writes_the_option_with_hires_and_pastes_back(server, circle):
    _, app = server
    result = run(app, hires=HIRES, controlnet_units=[unit(circle, 1, module="canny")])
    assert result.infotexts[0].count("Hr Option: Low res only") == 1
    assert ", Control Mode: Balanced, Hr Option: Low res only\"" in result.infotexts[0]  # inside the unit's entry
    assert "Hr Option" not in run(app, controlnet_units=[unit(circle, 1)]).infotexts[0]  # only with hires fix
    pasted = pasted_for_txt2img(app, result.infotexts[0])
    assert pasted.warnings == [] and pasted.form[field_name(0, "hr_option")] == "Low res only"
    form = {**{field_name(0, name): value for name, value in default_unit_values().items()}, **pasted.form,
            field_name(0, "image"): circle}
    form.pop(field_name(0, "upload_independent"))  # txt2img has no such box
    [back] = units_from_form(form)
    assert back.hr_option == 1 and back.module == "canny"
    enum_form = pasted_for_txt2img(app, result.infotexts[0].replace("Low res only", "HiResFixOption.HIGH_RES_ONLY"))
    assert enum_form.form[field_name(0, "hr_option")] == "High res only"


# ---------------------------------------------------------------- API


def api_unit(circle, **fields) -> dict:
    return {"enabled": True, "image": b64(circle), "module": "none", "model": "control_tiny", **fields}


def txt2img(client, *units, **fields) -> httpx.Response:
    body = {**SMALL, "save_images": False, **fields, "alwayson_scripts": {"controlnet": {"args": list(units)}}}
    return client.post("/sdapi/v1/txt2img", json=body)


@pytest.mark.parametrize("value, label", [("Low res only", "Low res only"), ("low RES only", "Low res only"),
                                          ("HiResFixOption.HIGH_RES_ONLY", "High res only"), ("both", "Both"),
                                          ("LOW_RES_ONLY", "Low res only"), (2, "High res only")])
def test_api_accepts_the_extensions_forms(server, circle, value, label):
    client, _ = server
    response = txt2img(client, api_unit(circle, hr_option=value), enable_hr=True, hr_scale=1.5,
                       hr_second_pass_steps=1, denoising_strength=0.5, steps=2)
    assert response.status_code == 200, response.text
    assert f"Hr Option: {label}" in response.json()["info"]


def test_api_422_names_the_field_and_the_values(server, circle):
    client, _ = server
    response = txt2img(client, api_unit(circle, hr_option="Medium res only"))
    assert response.status_code == 422
    assert "hr_option" in response.text and "Both, Low res only, High res only" in response.text


def test_override_settings_drops_detected_maps_for_that_request_only(server, circle):
    client, app = server
    assert len(txt2img(client, api_unit(circle), steps=2).json()["images"]) == 2  # the image + the unit's map
    dropped = txt2img(client, api_unit(circle), steps=2, override_settings={"control_net_no_detectmap": True})
    assert dropped.status_code == 200 and len(dropped.json()["images"]) == 1
    assert app.settings.control_net_no_detectmap is False  # the saved setting is untouched
    assert len(txt2img(client, api_unit(circle), steps=2).json()["images"]) == 2
    bad = txt2img(client, api_unit(circle), override_settings={"control_net_no_detectmap": "yes"})
    assert bad.status_code == 422 and "control_net_no_detectmap" in bad.text
