"""Offline model loading: tokenizer, family detection, single files, diffusers folders, LDM export."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modules.models.detect import (
    UnsupportedModelError, detect_component_kind, detect_family, with_prediction_type,
)
from modules.models.ldm_export import save_single_file, to_ldm_state_dict
from modules.models.loader import (
    CheckpointLoadError, ModelComponents, convert_components_state, load_components, load_diffusers_folder,
    load_vae_file, read_checkpoint,
)
from modules.models.tokenizer import load_clip_tokenizer
from tests.fixtures.tiny_models import (
    tiny_sd15_components, tiny_sdxl_components, write_single_file, write_tiny_sd15_diffusers_folder,
    write_tiny_sd15_single_file, write_tiny_sdxl_diffusers_folder, write_tiny_sdxl_single_file,
)

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


class NotAWeight:
    """An arbitrary object: a weights-only unpickler must refuse it."""


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted during model loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sd15_single_file(tmp_path_factory.mktemp("sd15") / "tiny-sd15.safetensors", seed=0)


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sdxl_single_file(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl.safetensors", seed=0)


def assert_same_weights(expected: ModelComponents, actual: ModelComponents) -> None:
    for part in PARTS:
        reference, loaded = getattr(expected, part), getattr(actual, part)
        if reference is None:
            assert loaded is None, part
            continue
        reference_state, loaded_state = reference.state_dict(), loaded.state_dict()
        assert reference_state.keys() == loaded_state.keys(), part
        for key, tensor in reference_state.items():
            assert torch.equal(tensor, loaded_state[key]), f"{part}.{key} differs"


def test_tokenizer_matches_openai_reference() -> None:
    tokenizer = load_clip_tokenizer()
    ids = tokenizer("a photo of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == 49407
    assert load_clip_tokenizer("!").pad_token_id == 0
    padded = load_clip_tokenizer("!")("hi", padding="max_length").input_ids
    assert len(padded) == 77 and padded[-1] == 0


def test_detects_tiny_sd15_and_sdxl(sd15_file: Path, sdxl_file: Path) -> None:
    sd15 = detect_family(*read_checkpoint(sd15_file))
    assert (sd15.family, sd15.prediction_type, sd15.is_inpaint, sd15.base) == ("sd15", "epsilon", False, "sd1")
    sdxl = detect_family(*read_checkpoint(sdxl_file))
    assert (sdxl.family, sdxl.prediction_type, sdxl.is_sdxl) == ("sdxl", "epsilon", True)


def test_detects_inpaint_from_unet_input_channels(tmp_path: Path) -> None:
    path = write_tiny_sd15_single_file(tmp_path / "inpaint.safetensors", in_channels=9)
    info = detect_family(*read_checkpoint(path))
    assert info.family == "sd15-inpaint" and info.is_inpaint and info.unet_in_channels == 9
    path = write_tiny_sdxl_single_file(tmp_path / "xl-inpaint.safetensors", in_channels=9)
    assert detect_family(*read_checkpoint(path)).family == "sdxl-inpaint"


def test_v_prediction_from_metadata_and_marker_keys(sd15_file: Path) -> None:
    state_dict, metadata = read_checkpoint(sd15_file)
    assert detect_family(state_dict, {**metadata, "modelspec.prediction_type": "v"}).prediction_type == "v_prediction"
    marked = {**state_dict, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
    info = detect_family(marked, metadata)
    assert info.prediction_type == "v_prediction" and info.rescale_zero_snr
    assert with_prediction_type(info, "epsilon").prediction_type == "epsilon"


def test_rejects_edm_adapters_and_other_files(sd15_file: Path) -> None:
    state_dict, _ = read_checkpoint(sd15_file)
    with pytest.raises(UnsupportedModelError, match="EDM"):
        detect_family({**state_dict, "edm_mean": torch.zeros(4)}, None)
    with pytest.raises(UnsupportedModelError, match="adapter"):
        detect_family(state_dict, {"modelspec.architecture": "stable-diffusion-v1/lora"})
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in state_dict.items()
                if k.startswith("first_stage_model.")}
    assert detect_component_kind(vae_only) == "vae"
    with pytest.raises(UnsupportedModelError, match="vae"):
        detect_family(vae_only, None)
    with pytest.raises(UnsupportedModelError, match="not a Stable Diffusion"):
        detect_family({"weight": torch.zeros(1)}, None)


@pytest.mark.parametrize("build, write", [(tiny_sd15_components, write_tiny_sd15_single_file),
                                          (tiny_sdxl_components, write_tiny_sdxl_single_file)])
def test_single_file_round_trip_is_bit_identical(tmp_path: Path, no_network: None, build, write) -> None:
    path = write(tmp_path / "model.safetensors", seed=1)
    state_dict, metadata = read_checkpoint(path)
    loaded = load_components(state_dict, detect_family(state_dict, metadata), metadata=metadata)
    expected = build(1)
    assert_same_weights(expected, loaded)
    assert loaded.native_size == expected.native_size
    for name, value in expected.unet.config.items():
        if not name.startswith("_"):
            assert loaded.unet.config[name] == value, name
    assert (loaded.tokenizer_2 is None) == (expected.tokenizer_2 is None)


def test_sdxl_tokenizers_pad_as_the_original_encoders(sdxl_file: Path) -> None:
    state_dict, metadata = read_checkpoint(sdxl_file)
    loaded = load_components(state_dict, detect_family(state_dict, metadata), metadata=metadata)
    assert loaded.tokenizer.pad_token == "<|endoftext|>" and loaded.tokenizer_2.pad_token == "!"
    assert loaded.text_encoder.config.hidden_size != loaded.text_encoder_2.config.hidden_size
    assert loaded.scheduler_config["_class_name"] == "EulerDiscreteScheduler"


@pytest.mark.parametrize("build, write", [(tiny_sd15_components, write_tiny_sd15_diffusers_folder),
                                          (tiny_sdxl_components, write_tiny_sdxl_diffusers_folder)])
def test_diffusers_folder_loads_offline(tmp_path: Path, no_network: None, build, write) -> None:
    folder = write(tmp_path / "model", seed=2)
    loaded = load_diffusers_folder(folder)
    expected = build(2)
    assert_same_weights(expected, loaded)
    assert loaded.info.family == expected.info.family and loaded.native_size == expected.native_size
    assert loaded.tokenizer("a photo").input_ids == [49406, 320, 1125, 49407]


def test_architecture_is_read_from_the_weights(tmp_path: Path) -> None:
    """Deeper transformers, other widths and an asymmetric up path than any family config."""
    expected = tiny_sd15_components(3, block_out_channels=[64, 96], transformer_layers_per_block=2,
                                    reverse_transformer_layers_per_block=[[1, 1], [3, 1]],
                                    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                                    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
    path = write_single_file(expected, tmp_path / "odd.safetensors")
    state_dict, metadata = read_checkpoint(path)
    loaded = load_components(state_dict, detect_family(state_dict, metadata), metadata=metadata)
    assert list(loaded.unet.config.block_out_channels) == [64, 96]
    assert_same_weights(expected, loaded)


def test_ckpt_loads_weights_only_and_refuses_code(tmp_path: Path, sd15_file: Path) -> None:
    state_dict, _ = read_checkpoint(sd15_file)
    good = tmp_path / "model.ckpt"
    torch.save({"state_dict": state_dict, "global_step": 875000}, good)
    loaded, metadata = read_checkpoint(good)
    assert loaded.keys() == state_dict.keys() and metadata["global_step"] == "875000"
    assert all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state_dict, "callback": NotAWeight()}, evil)
    with pytest.raises(CheckpointLoadError, match="evil.ckpt.*refused"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointLoadError, match="broken.safetensors"):
        (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
        read_checkpoint(tmp_path / "broken.safetensors")


def test_a1111_vae_file_loads(tmp_path: Path, sd15_file: Path) -> None:
    state_dict, _ = read_checkpoint(sd15_file)
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in state_dict.items()
                if k.startswith("first_stage_model.")}
    path = save_single_file(tmp_path / "my.vae.safetensors", vae_only, {})
    info = detect_family(*read_checkpoint(sd15_file))
    vae = load_vae_file(path, info)
    expected = tiny_sd15_components(0).vae.state_dict()
    assert all(torch.equal(tensor, vae.state_dict()[key]) for key, tensor in expected.items())


def test_swap_in_place_keeps_storage(sd15_file: Path, tmp_path: Path) -> None:
    state_dict, metadata = read_checkpoint(sd15_file)
    components = load_components(state_dict, detect_family(state_dict, metadata), metadata=metadata)
    pointers = {name: param.data_ptr() for name, param in components.unet.named_parameters()}
    other = write_tiny_sd15_single_file(tmp_path / "other.safetensors", seed=5)
    converted = convert_components_state(read_checkpoint(other)[0], components)
    for part, weights in converted.items():
        getattr(components, part).load_state_dict(weights)
    assert pointers == {name: param.data_ptr() for name, param in components.unet.named_parameters()}
    assert_same_weights(tiny_sd15_components(5), components)


def test_export_writes_a1111_layout(tmp_path: Path) -> None:
    components = tiny_sdxl_components(0)
    path = save_single_file(tmp_path / "xl.safetensors",
                            to_ldm_state_dict(components.unet, components.vae, components.text_encoder,
                                              components.text_encoder_2), {"note": "x"}, dtype=torch.float16)
    keys = load_file(path).keys()
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert load_file(path)["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert not list(tmp_path.glob(".*.tmp"))


def full_size_ldm_keys(family: str) -> dict[str, torch.Tensor]:
    """LDM-keyed meta tensors (shapes only, no memory) of a real-size model of ``family``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.models.architecture import family_config
    from modules.models.ldm_export import open_clip_to_ldm, unet_to_ldm, vae_to_ldm

    def text_encoder(subfolder: str, model_class: type, **changes: int) -> torch.nn.Module:
        config = {k: v for k, v in family_config(family, f"{subfolder}/config.json").items() if k != "architectures"}
        return model_class(CLIPTextConfig(**{**config, **changes}))

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(family_config(family, "unet/config.json"))
        vae = AutoencoderKL.from_config(family_config(family, "vae/config.json"))
        if family.startswith("sd2"):  # the file holds all 24 OpenCLIP-H blocks; the loader drops the last
            encoder = text_encoder("text_encoder", CLIPTextModelWithProjection, num_hidden_layers=24)
            return {**unet_to_ldm(unet), **vae_to_ldm(vae), **open_clip_to_ldm(encoder, "cond_stage_model.model.")}
        te1 = None if family == "sdxl-refiner" else text_encoder("text_encoder", CLIPTextModel)
        te2 = text_encoder("text_encoder_2", CLIPTextModelWithProjection) if family.startswith("sdxl") else None
        return to_ldm_state_dict(unet, vae, te1, te2)


@pytest.mark.parametrize("family", ["sd15", "sd2-v", "sdxl", "sdxl-refiner"])
def test_real_shapes_derive_the_shipped_configs(family: str) -> None:
    """Weights-derived configs of full-size models equal modules/configs/<family>/ (shapes on meta)."""
    from modules.models.architecture import family_config, read_component_configs

    state_dict = full_size_ldm_keys(family)
    info = detect_family(state_dict, None)
    assert info.family == family
    configs = read_component_configs(state_dict, info, info.default_native_size)
    derived = {"unet": configs.unet, "vae": configs.vae, "text_encoder": configs.text_encoder,
               "text_encoder_2": configs.text_encoder_2}
    for subfolder, config in derived.items():
        if config is None:
            continue
        shipped = family_config(family, f"{subfolder}/config.json")
        for key, value in shipped.items():
            if not key.startswith("_") and key != "architectures":
                assert config[key] == value, f"{family} {subfolder}.{key}: {config[key]} != {value}"
