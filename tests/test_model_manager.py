"""Model manager features beyond switching: VAE choice, sidecar overrides, TAESD previews, lookups, empty folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from modules.engine.generate import EngineOptions, generate
from modules.engine.request import GenerationRequest
from modules.models.ldm_export import VAE_PREFIX, save_single_file, vae_to_ldm
from modules.models.manager import ModelManager, NoCheckpointError
from modules.models.registry import HashCache, UnknownModelError
from tests.fixtures.tiny_models import tiny_sd15_components, write_tiny_sd15_single_file

REQUEST = GenerationRequest(prompt="a red circle", width=64, height=64, steps=3, seed=5, save_images=False)


def make_manager(root, **kwargs) -> ModelManager:
    return ModelManager(checkpoint_dirs=(root / "Stable-diffusion",), vae_dir=root / "VAE",
                        preview_dirs=(root / "VAE-taesd",), hash_cache=HashCache(root / "hashes.json"),
                        device=torch.device("cpu"), dtype=torch.float32, **kwargs)


def image(manager: ModelManager) -> np.ndarray:
    return np.asarray(generate(manager.model, REQUEST, options=EngineOptions()).images[0])


def write_vae_file(path, seed: int) -> None:
    """An A1111 models/VAE file: bare LDM VAE keys (no first_stage_model. prefix)."""
    state = {k.removeprefix(VAE_PREFIX): v for k, v in vae_to_ldm(tiny_sd15_components(seed).vae).items()}
    save_single_file(path, state, {})


@pytest.fixture
def root(tmp_path):
    for sub in ("Stable-diffusion", "VAE", "VAE-taesd"):
        (tmp_path / sub).mkdir()
    write_tiny_sd15_single_file(tmp_path / "Stable-diffusion" / "one.safetensors", seed=1)
    return tmp_path


def test_empty_folder_says_how_to_add_a_checkpoint(tmp_path):
    (tmp_path / "Stable-diffusion").mkdir()
    manager = make_manager(tmp_path)
    with pytest.raises(NoCheckpointError, match="Put a .safetensors or .ckpt file"):
        manager.model


def test_lookup_by_title_name_stem_and_hash(root):
    manager = make_manager(root)
    entry = manager.checkpoints[0]
    assert entry.title == f"one.safetensors [{entry.sha256[:10]}]"
    for query in (entry.title, "one.safetensors", "one", entry.short_hash, entry.sha256):
        assert manager.find_checkpoint(query) is entry
    with pytest.raises(UnknownModelError, match="available: one.safetensors"):
        manager.find_checkpoint("two")


def test_vae_choice_changes_only_the_vae(root):
    write_vae_file(root / "VAE" / "other.safetensors", seed=9)
    manager = make_manager(root)
    manager.load("one")
    unet = manager.model.components.unet
    own = image(manager)
    manager.set_vae("other.safetensors")
    assert manager.model.components.unet is unet  # the checkpoint was not reloaded
    with_other = image(manager)
    assert not np.array_equal(own, with_other)
    assert manager.model.vae_name == "other.safetensors" and len(manager.model.vae_hash) == 10
    manager.set_vae("None")
    assert np.array_equal(own, image(manager)) and manager.model.vae_name is None
    with pytest.raises(UnknownModelError):
        manager.set_vae("missing.safetensors")


def test_automatic_vae_uses_the_sidecar_file(root):
    write_vae_file(root / "Stable-diffusion" / "one.vae.safetensors", seed=9)
    manager = make_manager(root)
    assert [e.name for e in manager.checkpoints] == ["one.safetensors"]  # *.vae.* is not a checkpoint
    manager.load("one")
    assert manager.model.vae_name == "one.vae.safetensors"


def test_yaml_sidecar_sets_v_prediction(root):
    (root / "Stable-diffusion" / "one.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    manager = make_manager(root)
    manager.load("one")
    assert manager.model.scheduler_config["prediction_type"] == "v_prediction"


def test_taesd_decoder_is_used_for_previews(root):
    taesd = AutoencoderTiny()
    original_keys = {f"{int(k.split('.')[2]) + 1}.{k.split('.', 3)[3]}": v
                     for k, v in taesd.state_dict().items() if k.startswith("decoder.layers.")}
    torch.save(original_keys, root / "VAE-taesd" / "taesd_decoder.pth")
    manager = make_manager(root)
    manager.load("one")
    assert isinstance(manager.model.preview_decoder, AutoencoderTiny)
    preview = manager.model.preview(torch.randn(1, 4, 8, 8))
    assert preview.size == (64, 64)


def test_broken_taesd_file_falls_back_to_approximation(root):
    (root / "VAE-taesd" / "taesd_decoder.pth").write_bytes(b"not a model")
    manager = make_manager(root)
    manager.load("one")
    assert manager.model.preview_decoder is None
    assert manager.model.preview(torch.randn(1, 4, 8, 8)).size == (64, 64)


def test_low_memory_mode_slices_attention_and_tiles_the_vae(root):
    manager = make_manager(root, low_memory=True)
    manager.load("one")
    assert manager.model.components.vae.use_tiling
    assert image(manager).shape == (64, 64, 3)
