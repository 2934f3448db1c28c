"""Checkpoint merger on tiny A1111 single files: the formulas per tensor, family checks, fp16, baked VAE, recipe
metadata, and the merged file listed, loaded and generating in the running app."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.app import create_app
from modules.engine.generate import EngineOptions, generate
from modules.engine.request import GenerationRequest
from modules.models.detect import VAE_PREFIX, detect_family
from modules.models.ldm_export import save_single_file, vae_to_ldm
from modules.models.loader import read_checkpoint
from modules.model_actions import merge_into_models
from modules.models.merge import (
    ADD_DIFFERENCE, NO_INTERPOLATION, WEIGHTED_SUM, MergeError, merge_checkpoints, output_name,
)
from modules.options import parse_options
from tests.fixtures.tiny_models import (
    tiny_sd15_components, write_tiny_sd15_single_file, write_tiny_sdxl_single_file,
)

UNET_KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
META = {"modelspec.architecture": "stable-diffusion-v1", "modelspec.prediction_type": "epsilon",
        "modelspec.title": "A"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("merge")
    return {
        "a": write_tiny_sd15_single_file(folder / "a.safetensors", seed=1, metadata=META),
        "b": write_tiny_sd15_single_file(folder / "b.safetensors", seed=2),
        "c": write_tiny_sd15_single_file(folder / "c.safetensors", seed=3),
        "xl": write_tiny_sdxl_single_file(folder / "xl.safetensors", seed=4),
        "inpaint": write_tiny_sd15_single_file(folder / "inpaint.safetensors", seed=5, in_channels=9),
    }


def state(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


def test_weighted_sum_at_0_is_a_and_at_1_is_b(files, tmp_path):
    a, b = state(files["a"]), state(files["b"])
    at_0 = state(merge_checkpoints(files["a"], files["b"], tmp_path / "m0.safetensors", multiplier=0.0).path)
    at_1 = state(merge_checkpoints(files["a"], files["b"], tmp_path / "m1.safetensors", multiplier=1.0).path)
    assert at_0.keys() == a.keys()
    assert all(torch.equal(at_0[key], a[key]) for key in a)
    assert all(torch.equal(at_1[key], b[key]) for key in a if not key.endswith("position_ids"))


def test_formulas_on_a_tensor(files, tmp_path):
    a, b, c = (state(files[name])[UNET_KEY] for name in "abc")
    weighted = state(merge_checkpoints(files["a"], files["b"], tmp_path / "w.safetensors", multiplier=0.3).path)
    torch.testing.assert_close(weighted[UNET_KEY], a * 0.7 + b * 0.3)  # A·(1 − M) + B·M
    steps: list[tuple[int, int]] = []
    added = merge_checkpoints(files["a"], files["b"], tmp_path / "d.safetensors", tertiary=files["c"],
                              method=ADD_DIFFERENCE, multiplier=0.6, on_progress=lambda *p: steps.append(p))
    torch.testing.assert_close(state(added.path)[UNET_KEY], a + (b - c) * 0.6)  # A + (B − C)·M
    assert steps[-1][0] == steps[-1][1] == len(state(files["a"]))


def test_family_mismatch_and_bad_requests_are_refused(files, tmp_path):
    with pytest.raises(MergeError, match="cannot merge SD 1.x .* with SDXL .*same family"):
        merge_checkpoints(files["a"], files["xl"], tmp_path / "x.safetensors")
    with pytest.raises(MergeError, match="needs a tertiary"):
        merge_checkpoints(files["a"], files["b"], tmp_path / "x.safetensors", method=ADD_DIFFERENCE)
    with pytest.raises(MergeError, match="between 0 and 1"):
        merge_checkpoints(files["a"], files["b"], tmp_path / "x.safetensors", multiplier=1.5)
    with pytest.raises(MergeError, match="primary .* must be the inpainting model"):
        merge_checkpoints(files["a"], files["inpaint"], tmp_path / "x.safetensors")
    with pytest.raises(MergeError, match="already exists"):
        merge_checkpoints(files["a"], files["b"], files["c"])
    with pytest.raises(MergeError, match="one of the inputs"):
        merge_checkpoints(files["a"], files["b"], files["a"], overwrite=True)
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left


def test_inpainting_recipe_merges_the_first_four_input_channels(files, tmp_path):
    merged = merge_checkpoints(files["inpaint"], files["b"], tmp_path / "ip.safetensors", tertiary=files["c"],
                               method=ADD_DIFFERENCE, multiplier=1.0)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    inpaint, b, c, out = (state(p)[key] for p in (files["inpaint"], files["b"], files["c"], merged.path))
    torch.testing.assert_close(out[:, :4], inpaint[:, :4] + (b - c))
    assert torch.equal(out[:, 4:], inpaint[:, 4:]) and merged.family == "sd15-inpaint"


def test_fp16_output_recipe_metadata_and_family_kept(files, tmp_path):
    result = merge_checkpoints(files["a"], files["b"], tmp_path / "half.safetensors", multiplier=0.25, fp16=True,
                               hashes={files["a"]: "a" * 64})
    merged, metadata = read_checkpoint(result.path)
    assert all(t.dtype == torch.float16 for t in merged.values() if t.is_floating_point())
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["interp_method"] == WEIGHTED_SUM and recipe["multiplier"] == 0.25 and recipe["save_as_half"]
    assert recipe["primary_model_hash"] == "a" * 64 and recipe["tertiary_model_hash"] is None
    models = json.loads(metadata["sd_merge_models"])
    assert {entry["name"] for entry in models.values()} == {"a.safetensors", "b.safetensors"}
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1" and metadata["modelspec.title"] == "half"
    assert metadata["sd_native_size"] == "64"
    assert detect_family(merged, metadata).family == "sd15"


def test_baked_vae_replaces_the_first_stage_model(files, tmp_path):
    vae_file = tmp_path / "vae.safetensors"
    vae_state = {k.removeprefix(VAE_PREFIX): v for k, v in vae_to_ldm(tiny_sd15_components(9).vae).items()}
    save_single_file(vae_file, vae_state, {})
    result = merge_checkpoints(files["a"], None, tmp_path / "baked.safetensors", method=NO_INTERPOLATION,
                               vae=vae_file)
    merged, a = state(result.path), state(files["a"])
    for key in (k for k in a if k.startswith(VAE_PREFIX)):
        assert torch.equal(merged[key], vae_state[key.removeprefix(VAE_PREFIX)].reshape(a[key].shape))
    assert torch.equal(merged[UNET_KEY], a[UNET_KEY])
    assert json.loads(result.metadata["sd_merge_recipe"])["bake_in_vae"] == "vae.safetensors"
    with pytest.raises(MergeError, match="not a VAE"):
        merge_checkpoints(files["a"], None, tmp_path / "bad.safetensors", method=NO_INTERPOLATION, vae=files["b"])


def test_default_output_name_follows_a1111():
    assert output_name(Path("a.safetensors"), Path("b.ckpt"), WEIGHTED_SUM, 0.3) == \
        "a_0.7-b_0.3-Weighted_sum-merged.safetensors"
    assert output_name(Path("a.safetensors"), None, WEIGHTED_SUM, 0.3, "my mix.ckpt") == "my mix.safetensors"
    with pytest.raises(MergeError):
        output_name(Path("a.safetensors"), None, WEIGHTED_SUM, 0.3, "../escape")


def test_merged_file_is_listed_loads_and_generates(tmp_path):
    models = tmp_path / "models" / "Stable-diffusion"
    write_tiny_sd15_single_file(models / "a.safetensors", seed=1)
    write_tiny_sd15_single_file(models / "b.safetensors", seed=2)
    app = create_app(parse_options(["--data-dir", str(tmp_path)]))
    try:
        result = merge_into_models(app, "a", "b.safetensors", method=WEIGHTED_SUM, multiplier=0.5,
                                   custom_name="mix")
        assert result.entry is not None and result.entry.name == "mix.safetensors" and result.entry.sha256
        assert "mix.safetensors" in [entry.name for entry in app.models.checkpoints]
        app.models.load(result.entry.name)
        request = GenerationRequest(prompt="a red circle", width=64, height=64, steps=2, seed=3, save_images=False)
        image = np.asarray(generate(app.models.model, request, options=EngineOptions()).images[0])
        assert image.shape == (64, 64, 3)
        with pytest.raises(MergeError, match="is the loaded checkpoint"):
            merge_into_models(app, "a", "b", custom_name="mix", overwrite=True)
        with pytest.raises(MergeError, match="already exists"):
            merge_into_models(app, "a", "b", custom_name="mix")
    finally:
        app.jobs.shutdown()
