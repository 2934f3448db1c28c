"""Offline construction of Stable Diffusion components from an A1111 single file or a diffusers folder.

Never touches the network: configs come from ``modules/configs/`` and from the weights themselves
(``architecture.py``), the tokenizer from the bundled CLIP files, and diffusers folders load with
``local_files_only=True``. Modules are built with empty (meta) parameters and receive the converted
tensors with ``load_state_dict(assign=True)``, so weights are initialised once, not twice.

LDM → diffusers key conversion uses ``diffusers.loaders.single_file_utils``; transformers 5 flattened
``CLIPTextModel`` (no ``text_model.`` level), so converted text-encoder keys are adjusted here.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import safetensors
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from modules.models.architecture import (
    ComponentConfigs, family_config, read_component_configs, vae_config_from_weights,
)
from modules.models.detect import (
    ModelFamilyInfo, detect_component_kind, detect_family, detect_family_from_diffusers_configs, strip_vae_prefix,
)
from modules.models.tokenizer import OPEN_CLIP_PAD, load_clip_tokenizer

TEXT_ENCODER_BUFFERS = ("position_ids",)  # non-persistent buffers, built by the module itself


class CheckpointLoadError(ValueError):
    """A weights file could not be read or does not fit the model built for it."""


@dataclass
class ModelComponents:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | None  # None for the SDXL refiner
    tokenizer: CLIPTokenizer | None
    text_encoder_2: CLIPTextModelWithProjection | None
    tokenizer_2: CLIPTokenizer | None
    scheduler_config: dict[str, Any]
    info: ModelFamilyInfo
    native_size: int
    configs: ComponentConfigs | None = field(default=None, repr=False)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``StableDiffusion[XL]…Pipeline(**kwargs, scheduler=…)``."""
        kwargs: dict[str, Any] = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                                  "tokenizer": self.tokenizer}
        if self.info.is_sdxl:
            kwargs.update(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2, add_watermarker=False,
                          force_zeros_for_empty_prompt=self.info.base == "sdxl")
            if self.info.base == "sdxl-refiner":
                kwargs["requires_aesthetics_score"] = True
        else:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return kwargs


# ---------------------------------------------------------------- reading files


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict and ``__metadata__`` of a ``.safetensors`` or (weights-only) ``.ckpt``/``.pt`` file."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        return read_pickled_weights(path)
    raise CheckpointLoadError(f"{path.name}: unsupported file type {path.suffix!r} (use .safetensors or .ckpt)")


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = dict(file.metadata() or {})
            state_dict = {key: file.get_tensor(key) for key in file.keys()}
    except (OSError, safetensors.SafetensorError, ValueError) as error:
        raise CheckpointLoadError(f"{path.name}: not a readable safetensors file ({error})") from error
    return state_dict, metadata


def read_pickled_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``torch.load`` restricted to tensors and plain containers: a pickle with code is refused."""
    return unwrap_state_dict(load_weights_only(path), path)


def load_weights_only(path: Path, stand_ins: Sequence[tuple[type, str]] = ()) -> Any:
    """The one ``torch.load`` of the app: weights-only (tensors and plain containers; a pickle with code is
    refused). ``stand_ins``: (inert class, qualified name) pairs allowed for this call only, e.g. an old
    container class whose state is plain data (security notes §2.3)."""
    try:
        with torch.serialization.safe_globals(list(stand_ins)):
            try:
                loaded = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                # legacy (pre-zip) torch files cannot be memory-mapped; still weights-only
                loaded = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise CheckpointLoadError(
            f"{path.name}: refused, the pickle contains objects other than tensors (only weights-only loading "
            f"is allowed; convert it to .safetensors with a trusted tool). Detail: {str(error).splitlines()[0]}"
        ) from error
    except (OSError, RuntimeError, EOFError) as error:
        raise CheckpointLoadError(f"{path.name}: cannot read the checkpoint ({error})") from error
    return loaded


def unwrap_state_dict(loaded: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Strip Lightning's ``state_dict`` wrapper; keep ``global_step`` as metadata (SD2 768-v hint)."""
    metadata: dict[str, str] = {}
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        if isinstance(loaded.get("global_step"), int):
            metadata["global_step"] = str(loaded["global_step"])
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CheckpointLoadError(f"{path.name}: expected a dict of tensors, found {type(loaded).__name__}")
    state_dict = {key: value for key, value in loaded.items() if isinstance(value, Tensor)}
    if not state_dict:
        raise CheckpointLoadError(f"{path.name}: holds no tensors")
    return state_dict, metadata


# ---------------------------------------------------------------- conversion


def convert_components_state(
    state_dict: Mapping[str, Tensor], components_or_configs: ModelComponents | ComponentConfigs,
    dtype: torch.dtype | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Per-component diffusers state dicts (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``).

    Tensors may share storage with ``state_dict`` unless ``dtype`` converts them; load them into live
    modules with ``module.load_state_dict(sd)`` (copies) for an in-place checkpoint swap.
    """
    configs = components_or_configs.configs if isinstance(components_or_configs, ModelComponents) \
        else components_or_configs
    if configs is None:
        raise ValueError("these components were not built from a single file: pass ComponentConfigs")
    converted = {
        "unet": single_file_utils.convert_ldm_unet_checkpoint(state_dict, configs.unet),
        "vae": single_file_utils.convert_ldm_vae_checkpoint(state_dict, configs.vae),
    }
    for name, config, source in (("text_encoder", configs.text_encoder, configs.text_encoder_source),
                                 ("text_encoder_2", configs.text_encoder_2, configs.text_encoder_2_source)):
        if config is not None and source is not None:
            converted[name] = convert_text_encoder(state_dict, config, source, with_projection=name.endswith("2"))
    if dtype is not None:
        converted = {name: {k: cast(v, dtype) for k, v in sd.items()} for name, sd in converted.items()}
    return converted


def convert_text_encoder(state_dict: Mapping[str, Tensor], config: dict[str, Any], source: tuple[str, str],
                         with_projection: bool) -> dict[str, Tensor]:
    """LDM text-encoder keys → transformers keys (flat ``CLIPTextModel`` or ``…WithProjection``)."""
    prefix, layout = source
    if layout == "hf":
        only_this = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        converted = single_file_utils.convert_ldm_clip_checkpoint(only_this, remove_prefix=prefix)
        converted = {("" if k.startswith("text_model.") else "text_model.") + k: v for k, v in converted.items()}
    else:
        hidden = SimpleNamespace(config=SimpleNamespace(hidden_size=config["hidden_size"]))
        converted = single_file_utils.convert_open_clip_checkpoint(hidden, state_dict, prefix=prefix)
    # SD2 drops OpenCLIP's last block (penultimate-layer conditioning): keep only built layers
    layers = config["num_hidden_layers"]
    converted = {k: v for k, v in converted.items()
                 if not k.startswith("text_model.encoder.layers.") or int(k.split(".")[3]) < layers}
    converted = {k: v for k, v in converted.items() if not k.endswith(TEXT_ENCODER_BUFFERS)}
    if with_projection:
        return converted
    return {k.removeprefix("text_model."): v for k, v in converted.items() if k != "text_projection.weight"}


def cast(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


# ---------------------------------------------------------------- building modules


def build_on_meta(factory: Any) -> nn.Module:
    """Construct a module with meta parameters (real buffers): no random init, no memory."""
    with init_empty_weights(include_buffers=False):
        return factory()


def assign_weights(module: nn.Module, state_dict: Mapping[str, Tensor], dtype: torch.dtype, name: str,
                   copy_weights: bool = False) -> nn.Module:
    """Make ``state_dict`` (cast to ``dtype``) the module's parameters; fail on any mismatch.

    Without ``copy_weights`` a tensor already in ``dtype`` is used as is (zero-copy, as diffusers'
    ``from_single_file``): the parameter then shares storage with ``state_dict`` (for safetensors a
    private memory map of the file: pages load on first use, writes never reach the file).
    """
    assigned = {key: tensor.to(dtype=dtype, copy=copy_weights) if tensor.is_floating_point()
                else (tensor.clone() if copy_weights else tensor)
                for key, tensor in state_dict.items()}
    missing, unexpected = module.load_state_dict(assigned, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointLoadError(
            f"{name}: weights do not fit the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})")
    still_empty = [key for key, param in module.named_parameters() if param.is_meta]
    if still_empty:
        raise CheckpointLoadError(f"{name}: parameters without weights: {still_empty[:5]}")
    return module.eval()


def build_unet(config: dict[str, Any], weights: Mapping[str, Tensor], dtype: torch.dtype,
               copy_weights: bool = False) -> UNet2DConditionModel:
    unet = build_on_meta(lambda: UNet2DConditionModel.from_config(config))
    return assign_weights(unet, weights, dtype, "UNet", copy_weights)


def build_vae(config: dict[str, Any], weights: Mapping[str, Tensor], dtype: torch.dtype,
              copy_weights: bool = False) -> AutoencoderKL:
    vae = build_on_meta(lambda: AutoencoderKL.from_config(config))
    return assign_weights(vae, weights, dtype, "VAE", copy_weights)


def build_text_encoder(config: dict[str, Any], weights: Mapping[str, Tensor], dtype: torch.dtype,
                       with_projection: bool, copy_weights: bool = False) -> nn.Module:
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    text_config = CLIPTextConfig(**config)
    encoder = build_on_meta(lambda: model_class(text_config))
    return assign_weights(encoder, weights, dtype, model_class.__name__, copy_weights)


def scheduler_config_for(info: ModelFamilyInfo) -> dict[str, Any]:
    config = family_config(info.family, "scheduler/scheduler_config.json")
    config.update(prediction_type=info.prediction_type, rescale_betas_zero_snr=info.rescale_zero_snr)
    return config


def native_size_for(info: ModelFamilyInfo, metadata: Mapping[str, str] | None) -> int:
    """Our ``sd_native_size`` metadata key if present, else the family's training size."""
    value = (metadata or {}).get("sd_native_size", "")
    return int(value) if value.strip().isdigit() else info.default_native_size


def load_components(state_dict: Mapping[str, Tensor], info: ModelFamilyInfo, dtype: torch.dtype = torch.float32,
                    metadata: Mapping[str, str] | None = None, *, copy_weights: bool = False) -> ModelComponents:
    """Build every component of a single-file checkpoint on the CPU.

    Weights already in ``dtype`` are shared with ``state_dict`` unless ``copy_weights`` (see
    ``assign_weights``). Pass ``copy_weights=True`` when the modules will be changed in place on the CPU
    (in-place checkpoint swap with ``assign=False``, fused LoRA) while ``state_dict`` stays cached.
    """
    native_size = native_size_for(info, metadata)
    configs = read_component_configs(state_dict, info, native_size)
    converted = convert_components_state(state_dict, configs)
    text_encoder = tokenizer = text_encoder_2 = tokenizer_2 = None
    if configs.text_encoder is not None:
        text_encoder = build_text_encoder(configs.text_encoder, converted["text_encoder"], dtype, False, copy_weights)
        tokenizer = load_clip_tokenizer(info.tokenizer_pad_token)
    if configs.text_encoder_2 is not None:
        text_encoder_2 = build_text_encoder(configs.text_encoder_2, converted["text_encoder_2"], dtype, True,
                                            copy_weights)
        tokenizer_2 = load_clip_tokenizer(OPEN_CLIP_PAD)
    return ModelComponents(
        unet=build_unet(configs.unet, converted["unet"], dtype, copy_weights),
        vae=build_vae(configs.vae, converted["vae"], dtype, copy_weights),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        scheduler_config=scheduler_config_for(info), info=info, native_size=native_size, configs=configs,
    )


def load_checkpoint_file(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> ModelComponents:
    """A single-file checkpoint → its components, family detected from its weights and metadata (for tools,
    benchmarks and tests; the app goes through the model manager, which also caches and hashes)."""
    state_dict, metadata = read_checkpoint(path)
    return load_components(state_dict, detect_family(state_dict, metadata), dtype, metadata=metadata)


def load_vae_file(path: str | os.PathLike[str], family_info: ModelFamilyInfo,
                  dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """An A1111 ``models/VAE`` file (bare LDM VAE keys; also diffusers-keyed VAE files)."""
    state_dict, _ = read_checkpoint(path)
    kind = detect_component_kind(state_dict)
    if kind != "vae":
        raise CheckpointLoadError(f"{Path(path).name}: not a VAE file (looks like: {kind})")
    weights = strip_vae_prefix(state_dict)
    family_vae = family_config(family_info.family, "vae/config.json")
    if any(key.startswith("encoder.down_blocks.") for key in weights):  # already diffusers-keyed
        config = dict(family_vae)
        config["block_out_channels"] = [int(weights[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0])
                                        for i in range(len(family_vae["block_out_channels"]))]
        return build_vae(config, weights, dtype)
    config = vae_config_from_weights(weights, family_vae)
    return build_vae(config, single_file_utils.convert_ldm_vae_checkpoint(weights, config), dtype)


# ---------------------------------------------------------------- diffusers folders


def load_diffusers_folder(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> ModelComponents:
    """Components of a local diffusers-format pipeline folder (``model_index.json`` + subfolders)."""
    folder = Path(path)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise CheckpointLoadError(f"{folder.name}: no model_index.json, not a diffusers folder")
    model_index = json.loads(index_file.read_text(encoding="utf-8"))
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text(encoding="utf-8")) if scheduler_file.is_file() else {}
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True, dtype=dtype,
                                                variant=weights_variant(folder / "unet"))
    info = detect_family_from_diffusers_configs(model_index, dict(unet.config), scheduler_config)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, dtype=dtype,
                                        variant=weights_variant(folder / "vae"))
    text_encoder = tokenizer = text_encoder_2 = tokenizer_2 = None
    if (folder / "text_encoder").is_dir() and model_index.get("text_encoder", [None])[0] is not None:
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True, dtype=dtype)
        tokenizer = folder_tokenizer(folder / "tokenizer", info.tokenizer_pad_token)
    if (folder / "text_encoder_2").is_dir():
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2",
                                                                     local_files_only=True, dtype=dtype)
        tokenizer_2 = folder_tokenizer(folder / "tokenizer_2", OPEN_CLIP_PAD)
    if not scheduler_config:
        scheduler_config = scheduler_config_for(info)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    return ModelComponents(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, scheduler_config=dict(scheduler_config),
        info=info, native_size=int(unet.config.sample_size) * vae_scale,
    )


def weights_variant(subfolder: Path) -> str | None:
    """"fp16" when a subfolder only holds ``*.fp16.safetensors`` weights."""
    names = {child.name for child in subfolder.glob("diffusion_pytorch_model*")}
    if names & {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"}:
        return None
    return "fp16" if any(".fp16." in name for name in names) else None


def folder_tokenizer(tokenizer_dir: Path, default_pad: str) -> CLIPTokenizer:
    """The folder's own tokenizer files if it has them, else the bundled vocabulary with its pad token."""
    if (tokenizer_dir / "vocab.json").is_file() or (tokenizer_dir / "tokenizer.json").is_file():
        return CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config_file = tokenizer_dir / "tokenizer_config.json"
    pad = default_pad
    if config_file.is_file():
        pad_value = json.loads(config_file.read_text(encoding="utf-8")).get("pad_token", default_pad)
        pad = pad_value.get("content", default_pad) if isinstance(pad_value, dict) else pad_value
    return load_clip_tokenizer(pad)
