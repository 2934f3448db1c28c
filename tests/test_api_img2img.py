"""POST /sdapi/v1/img2img over real HTTP: img2img, inpaint, outpainting (client style and A1111's script), errors.

Tiny random SD1.5 checkpoints (a 4-channel and a 9-channel inpainting one) for plumbing; the shipped default model
for one inpaint whose untouched pixels are checked against the input.
"""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.api.convert import img2img_request
from modules.api.models import Img2ImgRequest
from modules.paths import PROJECT_ROOT
from modules.shapes.world import PALETTE, Shape, ShapeScene, render
from tests.fixtures.tiny_models import write_tiny_sd15_single_file
from tests.test_api import API, serve_app

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 1234, "sampler_name": "Euler"}
TOLERANCE = 2  # /255: PNG round trips are exact, compositing may round


def png_b64(image: Image.Image, *, data_uri: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    raw = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/png;base64,{raw}" if data_uri else raw


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def noise_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return mask


def max_difference(a: Image.Image, b: Image.Image, region: np.ndarray) -> int:
    difference = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max(axis=2)
    return int(difference[region].max())


def outside(size: tuple[int, int], box: tuple[int, int, int, int], margin: int) -> np.ndarray:
    """True where a pixel is farther than `margin` from the box (beyond the mask and its blur)."""
    width, height = size
    region = np.ones((height, width), dtype=bool)
    region[max(box[1] - margin, 0):box[3] + margin, max(box[0] - margin, 0):box[2] + margin] = False
    return region


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("webui")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    write_tiny_sd15_single_file(checkpoints / "tiny_a.safetensors", seed=1)
    write_tiny_sd15_single_file(checkpoints / "tiny_inpaint.safetensors", seed=3, in_channels=9)
    app, handle = serve_app(data)
    with httpx.Client(base_url=handle.url, timeout=120) as client:
        yield client, app
    handle.stop()
    app.jobs.shutdown()


def img2img(client: httpx.Client, image: Image.Image, **fields) -> dict:
    response = client.post(f"{API}/img2img", json={**SMALL, "init_images": [png_b64(image)], **fields})
    assert response.status_code == 200, response.text
    return response.json()


def convert(app, image: Image.Image, **fields):
    body = Img2ImgRequest.model_validate({**SMALL, "init_images": [png_b64(image)], **fields})
    return img2img_request(body, app)


# ------------------------------------------------------------------------------------ conversion (no sampling)


def test_img2img_fields_become_img2img_options(server):
    _, app = server
    request = convert(app, noise_image(96, 64), denoising_strength=0.4, resize_mode=2, initial_noise_multiplier=0.9,
                      image_cfg_scale=1.5, prompt="a red circle")
    options = request.img2img
    assert request.mode == "img2img" and (request.width, request.height) == (64, 64)
    assert (options.denoising_strength, options.resize_mode, options.initial_noise_multiplier) == (0.4, 2, 0.9)
    assert options.inpaint is None and options.init_images[0].size == (96, 64)
    assert request.prompt == "a red circle" and request.sampler_name == "Euler"
    assert convert(app, noise_image()).img2img.denoising_strength == 0.75  # A1111 default


def test_inpaint_uses_the_a1111_api_defaults(server):
    _, app = server
    inpaint = convert(app, noise_image(), mask=png_b64(box_mask((64, 64), (8, 8, 24, 24)))).img2img.inpaint
    assert (inpaint.full_res, inpaint.full_res_padding, inpaint.masked_content) == (True, 0, "fill")
    assert (inpaint.mask_blur_x, inpaint.mask_blur_y, inpaint.invert) == (4, 4, False)
    assert inpaint.mask.mode == "L" and inpaint.mask.getpixel((10, 10)) == 255 and inpaint.mask.getpixel((40, 40)) == 0


@pytest.mark.parametrize("fields, expected", [
    ({"mask_blur": 9}, (9, 9)),
    ({"mask_blur_x": 2, "mask_blur_y": 7}, (2, 7)),
    ({"mask_blur": 0, "mask_blur_x": 5}, (0, 0)),
])
def test_mask_blur_sets_both_axes(server, fields, expected):
    _, app = server
    inpaint = convert(app, noise_image(), mask=png_b64(Image.new("L", (64, 64), 255)), **fields).img2img.inpaint
    assert (inpaint.mask_blur_x, inpaint.mask_blur_y) == expected


@pytest.mark.parametrize("fill, content", enumerate(("fill", "original", "latent noise", "latent nothing")))
@pytest.mark.parametrize("invert", [0, 1, True, False])
def test_inpainting_fill_and_invert_map_to_the_request(server, fill, content, invert):
    _, app = server
    request = convert(app, noise_image(), mask=png_b64(Image.new("L", (64, 64), 255)), inpainting_fill=fill,
                      inpainting_mask_invert=invert, inpaint_full_res=False, inpaint_full_res_padding=16)
    inpaint = request.img2img.inpaint
    assert (inpaint.masked_content, inpaint.invert) == (content, bool(invert))
    assert (inpaint.full_res, inpaint.full_res_padding) == (False, 16)


def test_alpha_masks_and_transparent_init_images_follow_a1111(server):
    _, app = server
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 100), (0, 0, 32, 64))  # half transparent on the left: below the 50 % threshold
    mask.paste((0, 0, 0, 255), (32, 0, 64, 64))
    rounded = convert(app, noise_image(), mask=png_b64(mask)).img2img.inpaint.mask
    assert (rounded.getpixel((5, 5)), rounded.getpixel((40, 5))) == (0, 255)
    unrounded = convert(app, noise_image(), mask=png_b64(mask), mask_round=False).img2img.inpaint.mask
    assert unrounded.getpixel((5, 5)) == 100
    see_through = Image.new("RGBA", (64, 64), (200, 0, 0, 0))
    flattened = convert(app, see_through).img2img.init_images[0]
    assert flattened.mode == "RGB" and flattened.getpixel((3, 3)) == (255, 255, 255)


def test_data_uri_images_and_infotext_are_accepted(server):
    _, app = server
    body = Img2ImgRequest.model_validate({  # denoising_strength unset: the infotext's is used
        **SMALL, "init_images": [png_b64(noise_image(), data_uri=True)],
        "mask": png_b64(box_mask((64, 64), (0, 0, 8, 8)), data_uri=True),
        "infotext": "a cat\nSteps: 3, Sampler: Euler a, Seed: 9, Size: 64x64, Denoising strength: 0.35"})
    request = img2img_request(body, app)
    assert request.prompt == "a cat" and request.seed == 1234  # sent fields win
    assert request.img2img.denoising_strength == 0.35 and request.img2img.inpaint is not None


def script_request(app, image: Image.Image, **fields):
    """The request a selectable script (named in `fields`) runs: found, args parsed and checked as the API does."""
    body = Img2ImgRequest.model_validate({**SMALL, "init_images": [png_b64(image)], **fields})
    request = img2img_request(body, app)
    script = app.extensions.find_script(body.script_name, "img2img")
    return script.outpaint_request(request, app.extensions.prepare(script, body.script_args, request))


def test_poor_mans_outpainting_by_name_with_positional_args(server):
    _, app = server
    request = script_request(app, noise_image(), script_name="POOR MAN'S OUTPAINTING",
                             script_args=[32, 4, 1, ["left", "up"]], denoising_strength=0.6, batch_size=2)
    inpaint = request.img2img.inpaint
    assert (request.width, request.height, request.batch_size) == (96, 96, 1)
    assert (inpaint.masked_content, inpaint.mask_blur_x, inpaint.full_res) == ("original", 8, False)
    assert request.img2img.denoising_strength == 0.6
    defaults = script_request(app, noise_image(), script_name="Poor man's outpainting")  # A1111 UI defaults
    assert (defaults.width, defaults.height, defaults.img2img.inpaint.masked_content) == (320, 320, "fill")
    labels = script_request(app, noise_image(), script_name="Poor man's outpainting",
                            script_args=[8.0, 2, "latent nothing"])
    assert labels.width == 80 and labels.img2img.inpaint.masked_content == "latent nothing"


def test_scripts_are_listed_like_a1111(server):
    client, _ = server
    listed = client.get(f"{API}/scripts").json()
    assert "poor man's outpainting" in listed["img2img"] and "poor man's outpainting" not in listed["txt2img"]
    (info,) = [item for item in client.get(f"{API}/script-info").json() if item["name"] == "poor man's outpainting"]
    assert (info["name"], info["is_img2img"], info["is_alwayson"]) == ("poor man's outpainting", True, False)
    assert [arg["label"] for arg in info["args"]] == ["Pixels to expand", "Mask blur", "Masked content",
                                                      "Outpainting direction"]
    assert info["args"][3]["value"] == ["left", "right", "up", "down"]


# ------------------------------------------------------------------------------------ errors, before queueing


def bomb_png() -> str:
    """A 5000×5000 1-bit PNG: a few KB of data, 25 megapixels once decoded (over the 16.7 MP cap)."""
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


GOOD = "good image"  # replaced by a real image at run time (no work at import time)
BAD_REQUESTS = [
    ({"init_images": ["%%% not base64 %%%"]}, "base64"),
    ({"init_images": [base64.b64encode(b"hello world").decode()]}, "not a supported image"),
    ({"init_images": ["data:text/plain;base64,aGVsbG8="]}, "image type"),
    ({"init_images": ["bomb"]}, "limit"),
    ({"init_images": [GOOD], "mask": "narrow mask"}, "mask size 32x64"),
    ({"init_images": [GOOD], "mask": "not*base64"}, "base64"),
    ({"init_images": [GOOD] * 17}, "init_images"),
    ({"init_images": [GOOD], "inpainting_fill": 4}, "inpainting_fill"),
    ({"init_images": [GOOD], "resize_mode": 4}, "resize_mode"),
    ({"init_images": [GOOD], "mask_blur": 65}, "mask_blur"),
    ({"init_images": [GOOD], "denoising_strength": 1.5}, "denoising_strength"),
    ({"init_images": [GOOD], "script_name": "sd upscale"}, "Poor man's outpainting"),
    ({"init_images": [GOOD], "alwayson_scripts": {"no such script": {"args": []}}}, "no such script"),
    ({"init_images": [GOOD], "script_name": "Poor man's outpainting", "script_args": [8, 4, 0, ["north"]]},
     "direction"),
    ({"init_images": [GOOD], "script_name": "Poor man's outpainting", "script_args": [2000]}, "1024"),
    ({"init_images": [GOOD], "width": 100}, "width"),
]


def with_images(fields: dict) -> dict:
    stand_ins = {GOOD: png_b64(noise_image()), "bomb": bomb_png(), "narrow mask": png_b64(Image.new("L", (32, 64)))}
    result = dict(fields)
    result["init_images"] = [stand_ins.get(item, item) for item in fields["init_images"]]
    if "mask" in fields:
        result["mask"] = stand_ins.get(fields["mask"], fields["mask"])
    return result


@pytest.mark.parametrize("fields, message", BAD_REQUESTS)
def test_bad_images_and_fields_are_422_before_queueing(server, fields, message):
    client, app = server
    task_id = f"bad-{message}"
    response = client.post(f"{API}/img2img", json={**SMALL, **with_images(fields), "force_task_id": task_id})
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"} and message in str(body["detail"])
    assert app.jobs.get(task_id) is None  # never queued
    assert client.get(f"{API}/options").status_code == 200  # still serving


@pytest.mark.parametrize("fields", [{}, {"init_images": None}, {"init_images": []}])
def test_missing_init_images_are_404_like_a1111(server, fields):
    client, _ = server
    response = client.post(f"{API}/img2img", json={**SMALL, **fields})
    assert response.status_code == 404 and response.json()["detail"] == "Init image not found"


# ------------------------------------------------------------------------------------ end to end (sampling)


def test_img2img_returns_the_target_size_with_infotext(server):
    client, _ = server
    body = img2img(client, noise_image(96, 64), denoising_strength=0.5, prompt="a red circle")
    (image_b64,) = body["images"]
    infotext = Image.open(io.BytesIO(base64.b64decode(image_b64))).info["parameters"]
    assert decode(image_b64).size == (64, 64)
    assert "Denoising strength: 0.5" in infotext and "Size: 64x64" in infotext
    assert json.loads(body["info"])["denoising_strength"] == 0.5
    assert body["parameters"]["init_images"] is None and body["parameters"]["mask"] is None
    assert img2img(client, noise_image(96, 64), denoising_strength=0.5, prompt="a red circle")["images"] == [image_b64]


@pytest.mark.parametrize("resize_mode", range(4))
def test_every_resize_mode_gives_the_requested_size(server, resize_mode):
    client, _ = server
    body = img2img(client, noise_image(96, 48), resize_mode=resize_mode, width=64, height=72, steps=1)
    assert decode(body["images"][0]).size == (64, 72)


@pytest.mark.parametrize("full_res", [False, True])
def test_inpaint_keeps_pixels_outside_the_mask(server, full_res):
    client, _ = server
    image, box = noise_image(seed=5), (24, 24, 40, 40)
    body = img2img(client, image, mask=png_b64(box_mask(image.size, box)), mask_blur=2, inpaint_full_res=full_res,
                   inpaint_full_res_padding=8, denoising_strength=1.0)
    result = decode(body["images"][0])
    assert result.size == image.size
    assert max_difference(result, image, outside(image.size, box, margin=6)) <= TOLERANCE
    assert max_difference(result, image, ~outside(image.size, box, margin=-4)) > 10  # the inside was repainted
    infotext = Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).info["parameters"]
    assert "Mask blur: 2" in infotext and ("Inpaint area: Only masked" in infotext) == full_res


@pytest.mark.parametrize("fill", range(4))
def test_every_inpainting_fill_runs(server, fill):
    client, _ = server
    image, box = noise_image(seed=6), (0, 0, 32, 64)
    body = img2img(client, image, mask=png_b64(box_mask(image.size, box)), inpainting_fill=fill, mask_blur=0,
                   inpaint_full_res=False, steps=1)
    assert max_difference(decode(body["images"][0]), image, outside(image.size, box, margin=0)) <= TOLERANCE


def test_invert_keeps_the_masked_pixels_instead(server):
    client, _ = server
    image, box = noise_image(seed=7), (16, 16, 48, 48)
    body = img2img(client, image, mask=png_b64(box_mask(image.size, box)), inpainting_mask_invert=1, mask_blur=2,
                   inpaint_full_res=False, denoising_strength=1.0)
    result = decode(body["images"][0])
    assert max_difference(result, image, ~outside(image.size, box, margin=-6)) <= TOLERANCE
    assert max_difference(result, image, outside(image.size, box, margin=6)) > 10


def test_include_init_images_echoes_them_in_parameters(server):
    client, _ = server
    init, mask = png_b64(noise_image()), png_b64(box_mask((64, 64), (0, 0, 16, 16)))
    body = img2img(client, noise_image(), init_images=[init], mask=mask, include_init_images=True, steps=1)
    assert body["parameters"]["init_images"] == [init] and body["parameters"]["mask"] == mask
    assert len(body["images"]) == 1  # A1111 does not add them to `images`


def test_poor_mans_outpainting_script_extends_the_canvas(server):
    client, _ = server
    image = noise_image(seed=8)
    body = img2img(client, image, script_name="Poor man's outpainting", script_args=[16, 2, 1, ["left", "right"]])
    result = decode(body["images"][0])
    assert result.size == (96, 64) and result.width % 8 == 0
    # the original sits at x = 16; its middle, beyond the 4 px overlap and the blur, is untouched
    kept = np.zeros((64, 96), dtype=bool)
    kept[:, 16 + 16:16 + 64 - 16] = True
    assert max_difference(result, noise_image(seed=8).crop((-16, 0, 80, 64)), kept) <= TOLERANCE


def test_client_style_outpainting_with_an_enlarged_canvas_and_mask(server):
    client, _ = server
    original = noise_image(seed=9)
    canvas = Image.new("RGB", (96, 64), (128, 128, 128))
    canvas.paste(original, (16, 0))
    mask = Image.new("L", (96, 64), 255)
    mask.paste(0, (16 + 8, 0, 16 + 64 - 8, 64))  # repaint the new sides and 8 px of overlap
    body = img2img(client, canvas, mask=png_b64(mask), inpainting_fill=1, inpaint_full_res=False, mask_blur=2,
                   width=96, height=64)
    result = decode(body["images"][0])
    assert result.size == (96, 64)
    kept = np.zeros((64, 96), dtype=bool)
    kept[:, 16 + 16:16 + 64 - 16] = True
    assert max_difference(result, canvas, kept) <= TOLERANCE


def test_webuiapi_style_request_with_an_inpainting_checkpoint(server):
    """The body webuiapi's img2img() sends (data-URI images, every field present), on a 9-channel checkpoint."""
    client, _ = server
    image, box = noise_image(seed=10), (8, 8, 40, 40)
    payload = {
        "init_images": [png_b64(image, data_uri=True)], "mask": png_b64(box_mask(image.size, box), data_uri=True),
        "resize_mode": 0, "denoising_strength": 0.75, "image_cfg_scale": 1.5, "mask_blur": 4, "inpainting_fill": 0,
        "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
        "initial_noise_multiplier": 1, "prompt": "a dog", "styles": [], "seed": 42, "subseed": -1,
        "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0, "sampler_name": "Euler a",
        "sampler_index": "Euler a", "batch_size": 1, "n_iter": 1, "steps": 2, "cfg_scale": 7.0, "width": 64,
        "height": 64, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
        "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
        "s_noise": 1, "override_settings": {"sd_model_checkpoint": "tiny_inpaint"},
        "override_settings_restore_afterwards": True, "script_args": [], "include_init_images": False,
        "script_name": None, "send_images": True, "save_images": False, "alwayson_scripts": {},
        "use_deprecated_controlnet": False,
    }
    response = client.post(f"{API}/img2img", json=payload)
    assert response.status_code == 200, response.text
    image_b64 = response.json()["images"][0]
    assert "Model: tiny_inpaint" in Image.open(io.BytesIO(base64.b64decode(image_b64))).info["parameters"]
    assert max_difference(decode(image_b64), image, outside(image.size, box, margin=12)) <= TOLERANCE


# ------------------------------------------------------------------------------------ the shipped default model


def shapes_scene() -> ShapeScene:
    circle = Shape(kind="circle", colour="red", size="large", position="center", x=0.5, y=0.5, radius=0.21)
    return ShapeScene(background="blue", shapes=(circle,))


def test_default_model_inpaint_leaves_pixels_outside_the_mask_unchanged(tmp_path):
    app, handle = serve_app(tmp_path, ckpt_dir=str(PROJECT_ROOT / "models" / "Stable-diffusion"))
    try:
        with httpx.Client(base_url=handle.url, timeout=300) as client:
            image, box = render(shapes_scene(), 64), (16, 16, 48, 48)
            body = img2img(client, image, mask=png_b64(box_mask(image.size, box)), mask_blur=2, inpainting_fill=1,
                           inpaint_full_res=False, denoising_strength=0.9,
                           prompt="a yellow circle on a blue background", steps=20, sampler_name="DPM++ 2M", seed=3,
                           override_settings={"sd_model_checkpoint": "shapes-v3"})
            result = decode(body["images"][0])
    finally:
        handle.stop()
        app.jobs.shutdown()
    assert max_difference(result, image, outside(image.size, box, margin=6)) <= TOLERANCE
    centre = np.asarray(result, dtype=int)[28:36, 28:36].reshape(-1, 3).mean(axis=0)
    assert np.abs(centre - PALETTE["yellow"]).sum() < np.abs(centre - PALETTE["red"]).sum()  # repainted as prompted
