"""LoRA: files, formats, per-job application and removal, infotext, API — on tiny SD1.5 / SDXL models.

References never go through the app's parser: `merge_into` adds scale·up@down from the fixture's own layer specs to
a copy of the weights, and a checkpoint written from that copy must give the same image as the tag.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import os
import shutil

import diffusers
import httpx
import numpy as np
import pytest
import torch
import transformers
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from PIL import Image

from modules.engine.infotext import parse_infotext
from modules.engine.model import EngineModel
from modules.engine.request import GenerationRequest, HiresOptions, Img2ImgOptions
from modules.jobs import JobFailed
from modules.models.architecture import family_config
from modules.models.lora import LoraTag, applied_loras, lora_tags, unet_targets
from modules.models.lora_files import LoraRegistry
from modules.models.lora_format import LoraFormatError
from modules.ui.paste import paste_infotext
from tests.fixtures.loras import (
    kohya_state_dict, loha_state_dict, merge_into, peft_state_dict, random_specs, write_lora,
)
from tests.fixtures.tiny_models import tiny_sd15_components, tiny_sdxl_components, write_single_file
from tests.test_api import serve_app

API = "/sdapi/v1"
SMALL = dict(width=64, height=64, steps=3, cfg_scale=5.0, seed=7, sampler_name="Euler", save_images=False)
SD1_TAG = "<lora:sd1a:0.8:0.6>"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Checkpoints alpha/beta (SD1.5), xl (SDXL) plus reference checkpoints with LoRAs merged in by hand."""
    data = tmp_path_factory.mktemp("webui")
    ckpts, loras = data / "models" / "Stable-diffusion", data / "models" / "Lora"
    alpha, beta, xl = tiny_sd15_components(1), tiny_sd15_components(2), tiny_sdxl_components(4)
    sd1a = random_specs(alpha, seed=10)
    sd1b = random_specs(alpha, seed=11, rank=2, alpha=1.0)
    conv = random_specs(alpha, seed=12, convolutions=True, text=False)
    xl_specs = random_specs(xl, seed=13)
    peft = random_specs(alpha, seed=14, alpha=4.0)
    tag_frequency = json.dumps({"5_shapes": {"circle": 3, "square": 2}})
    write_lora(loras / "sd1a.safetensors", kohya_state_dict(sd1a, alpha, dtype=torch.float16),
               {"ss_output_name": "shapes_style", "ss_tag_frequency": tag_frequency})
    sd1a = [type(s)(s.component, s.module, s.down.half().float(), s.up.half().float(), s.alpha) for s in sd1a]
    write_lora(loras / "styles" / "sd1b.pt", kohya_state_dict(sd1b, alpha))
    write_lora(loras / "locon.safetensors", kohya_state_dict(conv, alpha))
    write_lora(loras / "xl_lora.safetensors", kohya_state_dict(xl_specs, xl, ldm_names=True))
    write_lora(loras / "peft_sd1.safetensors", *peft_state_dict(peft))
    write_lora(loras / "loha.safetensors", loha_state_dict())
    write_lora(loras / "probe.safetensors", kohya_state_dict(random_specs(alpha, seed=15), alpha))
    for name, components in (("alpha", alpha), ("beta", beta), ("xl", xl)):
        write_single_file(components, ckpts / f"{name}.safetensors")
    references = {
        "ref_a": merge_into(alpha, [(sd1a, 0.8, 0.6)]),
        "ref_ab": merge_into(alpha, [(sd1a, 1.0, 1.0), (sd1b, -0.5, -0.5)]),
        "ref_te": merge_into(alpha, [(sd1a, 1.0, 0.0)]),
        "ref_unet": merge_into(alpha, [(sd1a, 0.0, 1.0)]),
        "ref_beta": merge_into(beta, [(sd1a, 0.8, 0.6)]),
        "ref_conv": merge_into(alpha, [(conv, 1.0, 1.0)]),
        "ref_peft": merge_into(alpha, [(peft, 1.0, 1.0)]),
        "ref_xl": merge_into(xl, [(xl_specs, 0.7, 0.7)]),
    }
    for name, components in references.items():
        write_single_file(components, ckpts / f"{name}.safetensors")
    app, handle = serve_app(data, ckpt="alpha.safetensors")
    with httpx.Client(base_url=handle.url, timeout=120) as client:
        yield app, client
    handle.stop()
    app.jobs.shutdown()


def run(app, **fields):
    return app.jobs.run(GenerationRequest(**{**SMALL, "checkpoint": "alpha.safetensors", **fields}), timeout=300)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


def assert_close(result, reference, tolerance: int = 2) -> None:
    difference = np.abs(pixels(result) - pixels(reference)).max()
    assert difference <= tolerance, f"max pixel difference {difference}"


# ---------------------------------------------------------------------------------------------- files


def test_registry_lists_names_aliases_family_and_a1111_hashes(env):
    app, _ = env
    entries = {entry.name: entry for entry in app.loras.entries}
    assert set(entries) == {"sd1a", "sd1b", "locon", "xl_lora", "peft_sd1", "loha", "probe"}
    sd1a = entries["sd1a"]
    assert sd1a.alias == "shapes_style" and app.loras.find("shapes_style") is sd1a
    assert sd1a.metadata()["ss_tag_frequency"] == {"5_shapes": {"circle": 3, "square": 2}}
    assert entries["sd1b"].relative_name == "styles/sd1b.pt" and entries["sd1b"].metadata() == {}
    assert entries["xl_lora"].family == "sdxl"
    # A1111 addnet hash: sha256 of the bytes after the 8-byte length and the JSON header, 12 hex characters
    raw = sd1a.path.read_bytes()
    body = raw[8 + int.from_bytes(raw[:8], "little"):]
    assert sd1a.short_hash() == hashlib.sha256(body).hexdigest()[:12]
    assert entries["sd1b"].short_hash() == hashlib.sha256(entries["sd1b"].path.read_bytes()).hexdigest()[:12]
    assert app.loras.find("nope") is None and {"sd1a", "sd1b"} <= set(app.loras.similar_names("sd1"))


def test_alias_used_twice_matches_neither_and_sshs_hash_wins(tmp_path):
    state = kohya_state_dict(random_specs(tiny_sd15_components(0), rank=1), tiny_sd15_components(0))
    write_lora(tmp_path / "one.safetensors", state, {"ss_output_name": "same", "sshs_model_hash": "ab" * 32})
    write_lora(tmp_path / "two.safetensors", state, {"ss_output_name": "same"})
    registry = LoraRegistry((tmp_path,))
    assert registry.find("same") is None and registry.find("one").short_hash() == "ab" * 6


def test_kohya_names_of_real_sd1_and_sdxl_unets():
    """LDM names as kohya SDXL files use them, checked against the known SD1/SDXL block layout."""
    for family, names in (
        ("sd15", {"input_blocks_1_1_proj_in": "down_blocks.0.attentions.0.proj_in",
                  "output_blocks_2_1_conv": "up_blocks.0.upsamplers.0.conv",
                  "middle_block_1_transformer_blocks_0_attn2_to_k":
                  "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
                  "down_blocks_3_resnets_1_conv2": "down_blocks.3.resnets.1.conv2"}),
        ("sdxl", {"input_blocks_4_1_transformer_blocks_0_attn1_to_q":
                  "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                  "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
                  "input_blocks_7_1_transformer_blocks_9_ff_net_2":
                  "down_blocks.2.attentions.0.transformer_blocks.9.ff.net.2",
                  "output_blocks_8_0_skip_connection": "up_blocks.2.resnets.2.conv_shortcut"}),
    ):
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(family_config(family, "unet/config.json"))
        targets = unet_targets(unet)
        for kohya, diffusers_name in names.items():
            assert targets[kohya] is unet.get_submodule(diffusers_name), kohya


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15-diffusers-names", "sdxl-ldm-names"])
def test_kohya_files_patch_the_same_weights_as_diffusers_own_loader(tmp_path, sdxl):
    """Independent reference: diffusers' kohya conversion + fuse_lora on a copy of the same tiny model."""
    transformers.logging.set_verbosity_error()
    components = tiny_sdxl_components(5) if sdxl else tiny_sd15_components(5)
    state = kohya_state_dict(random_specs(components, seed=20), components, ldm_names=sdxl)
    write_lora(tmp_path / "k.safetensors", state)
    reference = copy.deepcopy(components)
    pipeline_class = diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline
    pipe = pipeline_class(**reference.pipeline_kwargs(), scheduler=diffusers.EulerDiscreteScheduler())
    pipe.load_lora_weights({key: value.clone() for key, value in state.items()}, adapter_name="k")
    pipe.fuse_lora(lora_scale=0.7)
    pipe.unload_lora_weights()
    model = EngineModel(components, {"model_name": "tiny"}, native_size=components.native_size)
    names = ("unet", "text_encoder", "text_encoder_2") if sdxl else ("unet", "text_encoder")
    original = {name: getattr(components, name).state_dict() for name in names}
    original = {name: {key: value.clone() for key, value in tensors.items()} for name, tensors in original.items()}
    with applied_loras(LoraRegistry((tmp_path,)), model, "<lora:k:0.7>") as active:
        assert active.layers_changed == len(state) // 3
        for name in names:
            ours, theirs = getattr(components, name).state_dict(), getattr(pipe, name).state_dict()
            changed = [key for key in ours if not torch.equal(ours[key], original[name][key])]
            assert changed and all(torch.allclose(ours[key], theirs[key], atol=1e-6) for key in ours), name
    assert all(torch.equal(getattr(components, name).state_dict()[key], value)
               for name in names for key, value in original[name].items())


def test_tags_parse_like_a1111():
    assert lora_tags("a <lora:x:0.5> b <lora:y:1:0> <lyco:z:unet=0.3:te=2> <lora:w> <hypernet:h:1>") == [
        LoraTag("x", 0.5, 0.5), LoraTag("y", 1.0, 0.0), LoraTag("z", 2.0, 0.3), LoraTag("w", 1.0, 1.0)]
    assert lora_tags("<lora:w>", default_weight=0.6) == [LoraTag("w", 0.6, 0.6)]
    with pytest.raises(ValueError, match="not a number"):
        lora_tags("<lora:x:heavy>")
    with pytest.raises(ValueError, match="at most 20"):
        lora_tags("<lora:x:1>" * 21)


def test_network_cache_is_bounded_and_keyed_by_file_state(tmp_path):
    components = tiny_sd15_components(0)
    for name in ("a", "b"):
        write_lora(tmp_path / f"{name}.safetensors", kohya_state_dict(random_specs(components, rank=1), components))
    registry = LoraRegistry((tmp_path,), cache_size=1)
    a, b = registry.find("a"), registry.find("b")
    first = registry.network(a)
    assert registry.network(a) is first and registry.disk_reads == 1
    registry.network(b)
    registry.network(a)
    assert registry.disk_reads == 3  # a was evicted by b
    os.utime(a.path, ns=(a.path.stat().st_atime_ns, a.path.stat().st_mtime_ns + 10**9))
    registry.network(a)
    assert registry.disk_reads == 4  # a changed file is read again


def test_unsupported_formats_are_refused_naming_the_file(tmp_path):
    write_lora(tmp_path / "hada.safetensors", loha_state_dict())
    write_lora(tmp_path / "lokr.safetensors", {"lora_unet_x.lokr_w1": torch.zeros(2, 2)})
    write_lora(tmp_path / "empty.safetensors", {"something.weight": torch.zeros(2)})
    registry = LoraRegistry((tmp_path,))
    for name, message in (("hada", "hada.safetensors: LoHa"), ("lokr", "lokr.safetensors: LoKr"),
                          ("empty", "empty.safetensors: no LoRA layers")):
        with pytest.raises(LoraFormatError, match=message):
            registry.network(registry.find(name))


# ---------------------------------------------------------------------------------------------- generation


def test_weight_zero_equals_no_tag_and_weight_w_equals_merged_reference(env):
    app, _ = env
    base = run(app, prompt="a red circle")
    for zero in ("<lora:sd1a:0>", "<lora:sd1a:0:0>", "<lora:shapes_style:0.0>"):
        assert np.array_equal(pixels(run(app, prompt="a red circle " + zero)), pixels(base))
    with_lora = run(app, prompt="a red circle " + SD1_TAG)
    assert not np.array_equal(pixels(with_lora), pixels(base))
    assert_close(with_lora, run(app, prompt="a red circle", checkpoint="ref_a.safetensors"))


def test_two_loras_with_a_negative_weight_and_a_pickled_file(env):
    app, _ = env
    result = run(app, prompt="a red circle <lora:sd1a:1> <lora:sd1b:-0.5>")
    assert_close(result, run(app, prompt="a red circle", checkpoint="ref_ab.safetensors"))


def test_text_encoder_only_and_unet_only_weights(env):
    app, _ = env
    assert_close(run(app, prompt="a cat <lora:sd1a:1:0>"), run(app, prompt="a cat", checkpoint="ref_te.safetensors"))
    assert_close(run(app, prompt="a cat <lora:sd1a:0:1>"), run(app, prompt="a cat", checkpoint="ref_unet.safetensors"))


def test_on_off_on_is_bit_identical_and_weights_are_restored(env):
    app, _ = env
    run(app, prompt="warm-up")
    snapshot = {key: value.clone() for key, value in app.models.model.components.unet.state_dict().items()}
    off1, on1 = run(app, prompt="a dog"), run(app, prompt="a dog " + SD1_TAG)
    off2, on2 = run(app, prompt="a dog"), run(app, prompt="a dog " + SD1_TAG)
    assert np.array_equal(pixels(off1), pixels(off2)) and np.array_equal(pixels(on1), pixels(on2))
    after = app.models.model.components.unet.state_dict()
    assert all(torch.equal(after[key], value) for key, value in snapshot.items())


def test_locon_convolutions_and_peft_format(env):
    app, _ = env
    assert_close(run(app, prompt="x <lora:locon:1>"), run(app, prompt="x", checkpoint="ref_conv.safetensors"))
    assert_close(run(app, prompt="x <lora:peft_sd1:1>"), run(app, prompt="x", checkpoint="ref_peft.safetensors"))


def test_sdxl_kohya_lora_and_wrong_family_error(env):
    app, _ = env
    result = run(app, prompt="a cat <lora:xl_lora:0.7>", checkpoint="xl.safetensors")
    assert_close(result, run(app, prompt="a cat", checkpoint="ref_xl.safetensors"))
    with pytest.raises(JobFailed, match=r"xl_lora.*is for SDXL.*SD 1\.x"):
        run(app, prompt="a cat <lora:xl_lora:1>")


def test_switching_checkpoints_with_a_lora_in_the_prompt(env):
    app, _ = env
    first = {name: run(app, prompt="p " + SD1_TAG, checkpoint=f"{name}.safetensors") for name in ("alpha", "beta")}
    for index in range(4):
        name = ("alpha", "beta")[index % 2]
        assert np.array_equal(pixels(run(app, prompt="p " + SD1_TAG, checkpoint=f"{name}.safetensors")),
                              pixels(first[name]))
    assert_close(first["beta"], run(app, prompt="p", checkpoint="ref_beta.safetensors"))
    assert_close(first["alpha"], run(app, prompt="p", checkpoint="ref_a.safetensors"))


def test_hires_fix_and_img2img_run_with_the_lora_throughout(env):
    app, _ = env
    hires = HiresOptions(scale=1.5, upscaler="Latent", steps=2, denoising_strength=0.6)
    assert_close(run(app, prompt="q " + SD1_TAG, hires=hires),
                 run(app, prompt="q", hires=hires, checkpoint="ref_a.safetensors"))
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    options = Img2ImgOptions(init_images=[init], denoising_strength=0.6)
    assert_close(run(app, prompt="q " + SD1_TAG, img2img=options, mode="img2img"),
                 run(app, prompt="q", img2img=options, mode="img2img", checkpoint="ref_a.safetensors"))


def test_unknown_lora_warns_and_generates_without_it(env):
    app, _ = env
    result = run(app, prompt="a red circle <lora:sd1:1>")
    assert any("LoRA 'sd1' not found" in warning and "sd1a" in warning for warning in result.warnings)
    assert np.array_equal(pixels(result), pixels(run(app, prompt="a red circle")))
    assert "Lora hashes" not in result.infotexts[0]


def test_loha_file_is_a_clear_error_and_the_server_keeps_working(env):
    app, _ = env
    with pytest.raises(JobFailed, match="loha.safetensors: LoHa"):
        run(app, prompt="a <lora:loha:1>")
    assert run(app, prompt="a").images


def test_a_lora_used_again_is_not_read_from_disk(env):
    """Two checks: the read counter, and a file whose bytes changed under an unchanged mtime/size stays cached."""
    app, _ = env
    first = run(app, prompt="z <lora:probe:1>")
    reads = app.loras.disk_reads
    path = app.loras.find("probe").path
    original, stat = path.read_bytes(), path.stat()
    try:
        path.write_bytes(b"\0" * len(original))  # unreadable if it were read again
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        again = run(app, prompt="z <lora:probe:1>")
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert app.loras.disk_reads == reads
    assert np.array_equal(pixels(first), pixels(again))


def test_infotext_records_lora_hashes_and_paste_keeps_the_tags(env):
    app, _ = env
    result = run(app, prompt="a red circle <lora:shapes_style:0.5> <lora:sd1b:0.2>", negative_prompt="<lora:sd1a:1>")
    infotext = result.infotexts[0]
    hashes = f"shapes_style: {app.loras.find('sd1a').short_hash()}, sd1b: {app.loras.find('sd1b').short_hash()}"
    assert f'Lora hashes: "{hashes}"' in infotext
    parsed = parse_infotext(infotext)
    assert parsed["Lora hashes"] == hashes and parsed["Negative prompt"] == "<lora:sd1a:1>"  # negative: literal
    pasted = paste_infotext(infotext, checkpoints=app.models.checkpoints, vae_choices=["Automatic"],
                            hires_upscalers=["Latent"])
    assert pasted.form["prompt"] == "a red circle <lora:shapes_style:0.5> <lora:sd1b:0.2>"


# ---------------------------------------------------------------------------------------------- HTTP


def test_loras_listing_and_refresh_over_http(env):
    app, client = env
    listing = client.get(f"{API}/loras").json()
    item = next(entry for entry in listing if entry["name"] == "sd1a")
    assert item == {"name": "sd1a", "alias": "shapes_style", "path": str(app.loras.find("sd1a").path),
                    "metadata": {"ss_output_name": "shapes_style",
                                 "ss_tag_frequency": {"5_shapes": {"circle": 3, "square": 2}}}}
    new = app.loras.roots[0] / "fresh.safetensors"
    shutil.copy(app.loras.find("sd1a").path, new)
    try:
        assert "fresh" not in {entry["name"] for entry in client.get(f"{API}/loras").json()}
        assert client.post(f"{API}/refresh-loras").status_code == 200
        assert "fresh" in {entry["name"] for entry in client.get(f"{API}/loras").json()}
    finally:
        new.unlink()
        client.post(f"{API}/refresh-loras")


def test_api_prompts_apply_loras_like_the_ui_and_bad_files_answer_422(env):
    app, client = env
    body = {**{k: v for k, v in SMALL.items() if k != "save_images"}, "prompt": "a red circle " + SD1_TAG,
            "override_settings": {"sd_model_checkpoint": "alpha.safetensors"}}
    response = client.post(f"{API}/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert f"Lora hashes: \"sd1a: {app.loras.find('sd1a').short_hash()}\"" in info["infotexts"][0]
    api_image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    ui_image = run(app, prompt="a red circle " + SD1_TAG).images[0]
    assert np.array_equal(np.asarray(api_image.convert("RGB")), np.asarray(ui_image))
    for prompt, message in (("<lora:loha:1>", "loha.safetensors: LoHa"), ("<lora:xl_lora:1>", "is for SDXL")):
        response = client.post(f"{API}/txt2img", json={**body, "prompt": prompt})
        assert response.status_code == 422 and message in response.json()["detail"]
