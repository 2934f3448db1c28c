"""Upscalers: the registry over models/ESRGAN (tiny spandrel models built in code), tiled inference, the Extras job
through the API (real HTTP) and the UI handler, and hires fix with a model upscaler on a tiny SD model."""
from __future__ import annotations

import base64
import io
import random
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from modules.engine.generate import EngineOptions, generate
from modules.engine.request import GenerationRequest, HiresOptions
from modules.engine.upscale import ModelUpscaler, resampler, tile_starts, upscale_blend, upscale_image
from modules.models.upscalers import (UnknownUpscalerError, UpscalerLoadError, UpscalerRegistry,
                                      hires_upscaler_choices, scale_from_name)
from modules.shapes.world import render, sample_scene
from tests.fixtures.tiny_models import write_tiny_sd15_single_file
from tests.test_api import serve_app

API = "/sdapi/v1"
COMPACT = "2x-tiny"  # Real-ESRGAN compact, 2x, .safetensors
RRDB = "tiny_rrdb_x4"  # ESRGAN (RRDB), 4x, .pth wrapped in params_ema as released files are


class Payload:
    """Not a tensor: a weights-only load must refuse a pickle that holds it."""


def write_models(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        compact = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
        rrdb = ESRGAN(num_filters=8, num_blocks=1, scale=4)
    save_file(compact.state_dict(), folder / f"{COMPACT}.safetensors")
    torch.save({"params_ema": rrdb.state_dict()}, folder / f"{RRDB}.pth")
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, folder / "evil.pth")


def scene(seed: int = 0, size: int = 64) -> Image.Image:
    return render(sample_scene(random.Random(seed)), size)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def counting(upscaler: ModelUpscaler) -> tuple[ModelUpscaler, list[tuple[int, ...]]]:
    calls: list[tuple[int, ...]] = []

    def network(tensor: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tensor.shape))
        return upscaler.network(tensor)

    return ModelUpscaler(upscaler.name, upscaler.scale, network, upscaler.tile, upscaler.overlap), calls


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> UpscalerRegistry:
    folder = tmp_path_factory.mktemp("models") / "ESRGAN"
    write_models(folder)
    return UpscalerRegistry(folder, cache_size=1)


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_lists_builtins_then_model_files_by_stem(registry):
    assert registry.names == ["None", "Lanczos", "Nearest", COMPACT, "evil", RRDB]
    entry = registry.find(COMPACT)
    assert entry.is_model and entry.path.suffix == ".safetensors" and entry.scale == 2
    assert registry.find(RRDB.upper()).name == RRDB  # case-insensitive fallback
    assert scale_from_name("RealESRGAN_x4plus") == 4 and scale_from_name("1x_Deblur") == 1
    with pytest.raises(UnknownUpscalerError, match="Lanczos.*2x-tiny"):
        registry.find("R-ESRGAN 4x+")
    assert hires_upscaler_choices(registry)[0] == "Latent" and COMPACT in hires_upscaler_choices(registry)


def test_registry_finds_a_file_added_after_the_scan(registry, tmp_path):
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    fresh = UpscalerRegistry(folder)
    assert fresh.names == ["None", "Lanczos", "Nearest"]
    (folder / "late_x2.safetensors").write_bytes((registry.folder / f"{COMPACT}.safetensors").read_bytes())
    assert fresh.find("late_x2").path == folder / "late_x2.safetensors"


def test_pth_with_a_non_tensor_object_is_refused(registry):
    with pytest.raises(UpscalerLoadError, match="refused"):
        registry.upscaler("evil")


def test_models_load_with_their_real_scale_and_are_cached(registry):
    rrdb = registry.upscaler(RRDB, tile=0)
    assert rrdb.scale == 4 and registry.find(RRDB).scale == 4
    assert registry.upscaler(RRDB).network is rrdb.network  # cached
    assert upscale_image(scene(1, 24), rrdb, scale=4).size == (96, 96)
    compact = registry.upscaler(COMPACT)
    assert compact.scale == 2
    assert registry.upscaler(RRDB).network is not rrdb.network  # cache_size=1: loading the other evicted it


# ---------------------------------------------------------------------------------------------------- upscaling


@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest", COMPACT])
@pytest.mark.parametrize("target", [{"scale": 2}, {"scale": 1.5}, {"scale": 3.3}, {"size": (100, 60)},
                                    {"size": (100, 60), "crop": False}, {"size": (40, 90)}])
def test_every_upscaler_gives_the_exact_target_size(registry, name, target):
    image = scene(2, 64).crop((0, 0, 64, 48))
    expected = target.get("size") or (round(64 * target["scale"]), round(48 * target["scale"]))
    assert upscale_image(image, registry.upscaler(name), **target).size == tuple(expected)


def test_nearest_repeats_pixels_and_lanczos_keeps_alpha():
    image = Image.new("RGBA", (2, 1))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 255, 0))
    nearest = upscale_image(image, resampler("Nearest"), scale=3)
    assert nearest.mode == "RGBA" and nearest.size == (6, 3)
    assert nearest.getpixel((2, 1))[:3] == (255, 0, 0) and nearest.getpixel((3, 1))[:3] == (0, 0, 255)
    assert upscale_image(image, resampler("Lanczos"), size=(8, 4)).getchannel("A").getpixel((0, 0)) > 200


def test_tiled_inference_matches_whole_image(registry):
    image = scene(3, 64).resize((90, 70))
    whole = upscale_image(image, registry.upscaler(COMPACT, tile=0), scale=2)
    tiled_model, calls = counting(registry.upscaler(COMPACT, tile=32, overlap=8))
    tiled = upscale_image(image, tiled_model, scale=2)
    assert len(calls) == len(tile_starts(90, 32, 8)) * len(tile_starts(70, 32, 8)) > 1
    assert max(max(shape[2:]) for shape in calls) == 32
    difference = np.abs(pixels(whole) - pixels(tiled))
    assert difference.max() <= 3 and difference.mean() < 0.1


def test_model_runs_again_when_the_scale_exceeds_its_own(registry):
    image = scene(4, 32)
    for scale, passes in ((2, 1), (3, 2), (4, 2), (1.5, 1)):
        model, calls = counting(registry.upscaler(COMPACT, tile=0))
        assert upscale_image(image, model, scale=scale).size == (round(32 * scale),) * 2
        assert len(calls) == passes, scale
    assert [shape[2:] for shape in calls] == [(32, 32)]


def test_two_upscalers_blend_by_visibility(registry):
    image = scene(5, 32)
    nearest = upscale_image(image, resampler("Nearest"), scale=2)
    model = upscale_image(image, registry.upscaler(COMPACT), scale=2)
    blended = upscale_blend(image, resampler("Nearest"), registry.upscaler(COMPACT), 0.25, scale=2)
    assert np.abs(pixels(blended) - (0.75 * pixels(nearest) + 0.25 * pixels(model))).max() <= 1
    only_first = upscale_blend(image, resampler("Nearest"), registry.upscaler(COMPACT), 0.0, scale=2)
    assert np.array_equal(pixels(only_first), pixels(nearest))


# ------------------------------------------------------------------------------------------ app: API, UI, hires


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("webui")
    write_tiny_sd15_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", seed=1)
    write_models(data / "models" / "ESRGAN")
    app, handle = serve_app(data)
    with httpx.Client(base_url=handle.url, timeout=120) as client:
        yield client, app
    handle.stop()
    app.jobs.shutdown()


def b64_png(image: Image.Image, parameters: str | None = None) -> str:
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def post(client: httpx.Client, route: str, **body) -> httpx.Response:
    return client.post(f"{API}/{route}", json=body)


def test_upscalers_route_lists_the_registry(server):
    client, app = server
    items = client.get(f"{API}/upscalers").json()
    assert [item["name"] for item in items] == ["None", "Lanczos", "Nearest", COMPACT, "evil", RRDB]
    assert items[1] == {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    compact = items[3]
    assert compact["model_name"] == "ESRGAN" and compact["model_url"] is None and compact["scale"] == 2
    assert Path(compact["model_path"]) == app.paths.esrgan_dir / f"{COMPACT}.safetensors"


def test_extra_single_image_scales_and_keeps_the_source_parameters(server):
    client, _ = server
    source = scene(6, 40).crop((0, 0, 40, 30))
    response = post(client, "extra-single-image", image="data:image/png;base64," + b64_png(source, "a red circle"),
                    upscaling_resize=2, upscaler_1="Lanczos", gfpgan_visibility=0.5, codeformer_visibility=0.3)
    assert response.status_code == 200, response.text
    body = response.json()
    image = decode(body["image"])
    assert image.size == (80, 60)
    assert image.info["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert image.info["parameters"] == "a red circle"
    assert body["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"


def test_extra_single_image_with_a_model_to_a_size_with_blend(server):
    client, _ = server
    response = post(client, "extra-single-image", image=b64_png(scene(7, 32)), resize_mode=1, upscaling_resize_w=100,
                    upscaling_resize_h=50, upscaler_1=COMPACT, upscaler_2="Nearest", extras_upscaler_2_visibility=0.5)
    assert response.status_code == 200, response.text
    image = decode(response.json()["image"])
    assert image.size == (100, 50)
    assert image.info["extras"] == ("Postprocess upscale to: 100x50, Postprocess crop to: 100x50, "
                                    f"Postprocess upscaler: {COMPACT}, Postprocess upscaler 2: Nearest")


def test_extra_batch_images_saves_named_files_with_the_extras_chunk(server):
    client, app = server
    images = [{"data": b64_png(scene(8, 32), "first"), "name": "cat.png"},
              {"data": b64_png(scene(9, 24)), "name": "C:\\in\\dog.final.jpg"}]
    response = post(client, "extra-batch-images", imageList=images, upscaler_1=COMPACT, upscaling_resize=2,
                    save_images=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [decode(data).size for data in body["images"]] == [(64, 64), (48, 48)]
    folder = app.paths.outputs_dir / "extras-images"
    saved = sorted(path.name for path in folder.iterdir())
    assert saved == ["00000-cat.png", "00001-dog.final.png"]
    with Image.open(folder / "00000-cat.png") as first:
        assert first.info["extras"] == f"Postprocess upscale by: 2, Postprocess upscaler: {COMPACT}"
        assert first.info["parameters"] == "first"
    # without save_images (A1111's API default) nothing more is written
    assert post(client, "extra-batch-images", imageList=images[:1], upscaler_1="Nearest").status_code == 200
    assert len(list(folder.iterdir())) == 2


@pytest.mark.parametrize(("body", "message"), [
    ({"image": "!!!not base64!!!"}, "base64"),
    ({"image": base64.b64encode(b"hello, not an image").decode()}, "not a supported image"),
    ({"upscaler_1": "R-ESRGAN 4x+"}, "Lanczos, Nearest, 2x-tiny"),
    ({"upscaler_2": "nope", "extras_upscaler_2_visibility": 0.3}, "not found"),
    ({"upscaler_1": "evil"}, "refused"),
    ({"upscaling_resize": 9}, "upscaling_resize"),
    ({"extras_upscaler_2_visibility": 1.5}, "extras_upscaler_2_visibility"),
    ({"resize_mode": 1, "upscaling_resize_w": 8000, "upscaling_resize_h": 8000}, "limit"),
])
def test_bad_extras_requests_get_422(server, body, message):
    client, _ = server
    payload = {"image": b64_png(scene(10, 16)), "upscaler_1": "Lanczos", **body}
    response = post(client, "extra-single-image", **payload)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_batch_names_the_bad_image(server):
    client, _ = server
    images = [{"data": b64_png(scene(11, 16)), "name": "good.png"}, {"data": "xx", "name": "bad.png"}]
    response = post(client, "extra-batch-images", imageList=images, upscaler_1="Lanczos")
    assert response.status_code == 422 and "imageList[1] (bad.png)" in response.json()["detail"]


def test_hires_fix_uses_a_model_upscaler(server):
    client, app = server
    choices = client.post(f"{API}/txt2img", json={"enable_hr": True, "hr_upscaler": "nope", "steps": 1,
                                                  "width": 64, "height": 64})
    assert choices.status_code == 422 and COMPACT in choices.json()["detail"]
    calls: list[str] = []
    request = GenerationRequest(prompt="a red circle", width=64, height=64, steps=2, seed=3, sampler_name="Euler",
                                hires=HiresOptions(scale=2, upscaler=COMPACT, steps=1, denoising_strength=0.5))
    upscale = app.upscalers.pixel_upscale(tile=0, overlap=0)

    def spy(image, width, height, name):
        calls.append(name)
        assert threading.current_thread().name == "generation-worker"
        return upscale(image, width, height, name)

    result = app.jobs.run_exclusive(lambda: generate(app.models.model, request,
                                                     options=EngineOptions(pixel_upscale=spy)))
    assert calls == [COMPACT] and result.images[0].size == (128, 128)
    assert f"Hires upscaler: {COMPACT}" in result.infotexts[0]
    response = client.post(f"{API}/txt2img", json={"enable_hr": True, "hr_upscaler": COMPACT, "hr_scale": 2,
                                                   "steps": 1, "width": 64, "height": 64, "denoising_strength": 0.5})
    assert response.status_code == 200, response.text
    assert decode(response.json()["images"][0]).size == (128, 128)


def test_ui_handler_single_and_batch(server, tmp_path):
    from modules.ui.extras_form import BATCH, SINGLE, default_form_values, submit_extras

    _, app = server
    app.update_settings({"outdir_extras_samples": str(tmp_path / "ui-extras")})
    try:
        single = {**default_form_values(), "source": SINGLE, "image": scene(12, 16), "upscaler_1": "Nearest",
                  "resize_mode": 1, "upscaling_resize_w": 40, "upscaling_resize_h": 24}
        output = submit_extras(app, single)
        assert [image.size for image in output.images] == [(40, 24)] and not output.notes
        assert "Postprocess upscale to: 40x24" in output.html_info
        files = []
        for index in range(2):
            path = tmp_path / f"upload{index}.png"
            scene(13 + index, 16).save(path)
            files.append(str(path))
        output = submit_extras(app, {**default_form_values(), "source": BATCH, "batch_files": files,
                                     "upscaler_1": COMPACT, "upscaling_resize": 2})
        assert [image.size for image in output.images] == [(32, 32), (32, 32)]
        assert output.images[0].info["extras"].endswith(f"Postprocess upscaler: {COMPACT}")
        assert sorted(p.name for p in (tmp_path / "ui-extras").iterdir()) == ["00000.png", "00001-upload0.png",
                                                                               "00002-upload1.png"]
        unchanged = submit_extras(app, {**default_form_values(), "image": scene(12, 16)})
        assert unchanged.images[0].size == (16, 16) and unchanged.notes
        with pytest.raises(ValueError, match="Upload an image"):
            submit_extras(app, default_form_values())
        (tmp_path / "broken.png").write_bytes(b"not a png")
        with pytest.raises(ValueError, match="broken.png"):
            submit_extras(app, {**default_form_values(), "source": BATCH, "upscaler_1": "Lanczos",
                                "batch_files": [str(tmp_path / "broken.png")]})
    finally:
        app.update_settings({"outdir_extras_samples": ""})


def test_extras_tab_builds(server):
    import gradio as gr

    from modules.ui.extras import build_extras, wire_extras

    _, app = server
    with gr.Blocks():
        tab = build_extras(app)
        wire_extras(app, tab)
    assert isinstance(tab.image, gr.Image)
    assert COMPACT in tab.fields["upscaler_1"].choices[3]


def test_upload_names_cannot_leave_the_extras_folder():
    from modules.extras import name_stem

    assert name_stem("../../etc/passwd.png") == "passwd"
    assert name_stem("C:\\Users\\me\\my cat.png") == "my_cat"
    assert name_stem("..") == "" and name_stem("") == ""
