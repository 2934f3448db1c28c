"""The A1111 ControlNet extension's API over real HTTP: `alwayson_scripts.controlnet` units in txt2img / img2img
(the payloads webuiapi's ControlNetUnit.to_dict() and the extension's docs send), and the /controlnet/* routes —
with raw httpx and with the webuiapi client itself."""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.fixtures.tiny_controlnets import tiny_controlnet, write_folder, write_ldm_file
from tests.fixtures.tiny_models import tiny_sd15_components, write_single_file
from tests.test_api import serve_app

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 1234, "sampler_name": "Euler", "prompt": "a red circle"}
NO_WEIGHT_MODULES = ["none", "invert", "canny", "shuffle", "lineart_standard"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("webui")
    sd1 = tiny_sd15_components(1)
    write_single_file(sd1, data / "models" / "Stable-diffusion" / "tiny.safetensors")
    network = tiny_controlnet(sd1.unet, seed=5)
    write_ldm_file(network, data / "models" / "ControlNet" / "control_tiny_canny.safetensors")
    write_folder(network, data / "models" / "ControlNet" / "control_tiny_depth")
    app, handle = serve_app(data)
    with httpx.Client(base_url=handle.url, timeout=300) as client:
        yield client, app, handle
    handle.stop()
    app.jobs.shutdown()


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def with_units(*units: dict, **fields) -> dict:
    return {**SMALL, **fields, "alwayson_scripts": {"controlnet": {"args": list(units)}}}


def webuiapi_unit(image: Image.Image, **fields) -> dict:
    return webuiapi.ControlNetUnit(image=image, module="canny", model="control_tiny_canny", **fields).to_dict()


def test_routes_report_version_models_modules_and_settings(server):
    client, app, _ = server
    assert client.get("/controlnet/version").json() == {"version": 3}
    titles = client.get("/controlnet/model_list", params={"update": "true"}).json()["model_list"]
    assert titles == app.models.controlnets.titles() and len(titles) == 2
    assert all(title.startswith("control_tiny_") and title.endswith("]") for title in titles)
    modules = client.get("/controlnet/module_list").json()
    assert modules["module_list"] == NO_WEIGHT_MODULES
    canny = modules["module_detail"]["canny"]
    assert canny["model_free"] is False
    assert [slider["name"] for slider in canny["sliders"]] == ["Preprocessor Resolution", "Canny Low Threshold",
                                                               "Canny High Threshold"]
    assert "ControlNetHED.pth" in modules["unavailable"]["hed"]
    aliases = client.get("/controlnet/module_list", params={"alias_names": "true"}).json()
    assert "lineart_standard (from white bg & black line)" in aliases["module_list"]
    assert "softedge_hed" in aliases["unavailable"]
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["Canny"]["default_option"] == "canny"
    assert types["Canny"]["model_list"] == ["None", titles[0]] and types["Depth"]["model_list"] == ["None", titles[1]]
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}


def test_detect_runs_a_preprocessor(server, circle):
    client, _, _ = server
    response = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images":
                                                       [b64(circle)], "controlnet_processor_res": 64})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["info"] == "Success"
    edges = np.asarray(decode(body["images"][0]))
    assert edges.shape[:2] == (64, 64) and set(np.unique(edges)) <= {0, 255} and edges.max() == 255
    bad = client.post("/controlnet/detect", json={"controlnet_module": "nope",
                                                  "controlnet_input_images": [b64(circle)]})
    assert bad.status_code == 422 and "Module not available" in bad.text
    empty = client.post("/controlnet/detect", json={"controlnet_module": "canny"})
    assert empty.status_code == 422 and "No image selected" in empty.text
    missing = client.post("/controlnet/detect", json={"controlnet_module": "softedge_hed",
                                                      "controlnet_input_images": [b64(circle)]})
    assert missing.status_code == 422 and "ControlNetHED.pth" in missing.text


def test_txt2img_with_a_webuiapi_unit_appends_the_detected_map(server, circle):
    client, app, _ = server
    response = client.post("/sdapi/v1/txt2img", json=with_units(webuiapi_unit(circle, processor_res=64,
                                                                                threshold_a=100, threshold_b=200)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2  # the image, then the canny map
    generated, detected = decode(body["images"][0]), decode(body["images"][1])
    assert generated.size == (64, 64) and set(np.unique(np.asarray(detected))) <= {0, 255}
    title = app.models.controlnets.find("control_tiny_canny").title
    expected = (f'ControlNet 0: "Module: canny, Model: {title}, Weight: 1.0, Resize Mode: Resize and Fill, '
                f'Processor Res: 64, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, '
                f'Pixel Perfect: False, Control Mode: Balanced"')
    assert expected in generated.info["parameters"]
    assert json.loads(body["info"])["infotexts"][0] == generated.info["parameters"]
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    assert not np.array_equal(np.asarray(generated), np.asarray(decode(plain["images"][0])))


def test_unit_shapes_names_and_legacy_fields(server, circle):
    client, _, _ = server
    unit = {"input_image": b64(circle), "module": "canny", "model": "CONTROL_TINY_CANNY [00000000]",
            "resize_mode": 0, "control_mode": 1, "guidance": 0.8, "save_detected_map": False, "lowvram": True}
    body = client.post("/sdapi/v1/txt2img", json=with_units(unit, {"enabled": False, "model": "nope"})).json()
    assert len(body["images"]) == 1  # save_detected_map false; the disabled unit is ignored whatever it holds
    infotext = decode(body["images"][0]).info["parameters"]
    assert "Resize Mode: Just Resize" in infotext and "Control Mode: My prompt is more important" in infotext
    assert "Guidance End: 0.8" in infotext and "ControlNet 1" not in infotext
    as_dict = {"image": {"image": b64(circle), "mask": None}, "module": "invert", "model": "tiny_depth",
               "resize_mode": "Envelope (Outer Fit)", "control_mode": "ControlNet is more important"}
    response = client.post("/sdapi/v1/txt2img", json=with_units(as_dict))  # no `enabled`: a unit with a model counts
    assert response.status_code == 200, response.text
    assert "Resize Mode: Resize and Fill" in decode(response.json()["images"][0]).info["parameters"]


def test_weight_zero_gives_the_image_of_no_unit(server, circle):
    client, _, _ = server
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    zero = client.post("/sdapi/v1/txt2img", json=with_units(webuiapi_unit(circle, weight=0))).json()
    assert len(zero["images"]) == 1  # nothing was preprocessed, so no map either
    assert np.array_equal(np.asarray(decode(zero["images"][0])), np.asarray(decode(plain["images"][0])))


@pytest.mark.parametrize(("unit", "message"), [
    ({"module": "canny", "model": "depth_anything"}, "ControlNet model 'depth_anything' not found; available: "),
    ({"module": "sobel", "model": "control_tiny_canny"}, "preprocessor 'sobel' not found; available: none"),
    ({"module": "softedge_hed", "model": "control_tiny_canny"}, "needs ControlNetHED.pth"),
    ({"module": "canny", "model": "None", "enabled": True}, "no ControlNet model selected; available: "),
    ({"module": "canny", "model": "control_tiny_canny", "weight": 3}, "weight must be between 0.0 and 2.0"),
    ({"module": "canny", "model": "control_tiny_canny", "resize_mode": "Stretch"}, "resize_mode must be one of"),
    ({"module": "canny", "model": "control_tiny_canny", "guidance_start": 0.9, "guidance_end": 0.2},
     "guidance_start <= guidance_end"),
    ({"module": "canny", "model": "control_tiny_canny", "image": "not base64!"}, "ControlNet unit 0: image"),
    ({"module": "canny", "model": "control_tiny_canny"}, "no control image"),
])
def test_bad_units_are_422_naming_the_problem(server, circle, unit, message):
    client, _, _ = server
    payload = {"image": b64(circle), **unit} if "image" not in unit and message != "no control image" else unit
    response = client.post("/sdapi/v1/txt2img", json=with_units(payload))
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_img2img_unit_without_image_uses_the_init_image(server, circle):
    client, _, _ = server
    payload = {**SMALL, "init_images": [b64(circle)], "denoising_strength": 0.6}
    plain = client.post("/sdapi/v1/img2img", json=payload).json()
    unit = {"enabled": True, "image": "", "module": "canny", "model": "control_tiny_canny", "processor_res": 64}
    response = client.post("/sdapi/v1/img2img", json={**payload, "alwayson_scripts": {"ControlNet": {"args": [unit]}}})
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 2
    assert not np.array_equal(np.asarray(decode(images[0])), np.asarray(decode(plain["images"][0])))


def test_the_webuiapi_client_end_to_end(server, circle):
    _, app, handle = server
    api = webuiapi.WebUIApi(host="127.0.0.1", port=handle.port, sampler="Euler", steps=2)
    assert api.controlnet_version() == 3
    assert api.controlnet_model_list() == app.models.controlnets.titles()
    assert "canny" in api.controlnet_module_list()
    detected = api.controlnet_detect([circle], module="canny", processor_res=64, threshold_a=100, threshold_b=200)
    assert detected.info == "Success" and [image.size for image in detected.images] == [(64, 64)]
    unit = webuiapi.ControlNetUnit(image=circle, module="canny", model=api.controlnet_model_list()[0],
                                   processor_res=64, threshold_a=100, threshold_b=200)
    result = api.txt2img(prompt="a red circle", width=64, height=64, seed=7, controlnet_units=[unit])
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    assert "ControlNet 0" in result.info["infotexts"][0]
