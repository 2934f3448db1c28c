"""ControlNet weights → a diffusers ControlNetModel, offline, built for the loaded checkpoint's UNet.

Accepted: lllyasviel/A1111 single files (``control_model.*`` or bare LDM keys ``time_embed.*``, SD1.x/SD2.x/SDXL),
diffusers-keyed single files, diffusers folders (``config.json`` + weights; union models only as folders).
Shapes (channels, levels, transformer depths, hint encoder, cross-attention width) come from the weights; what
weights cannot say (attention heads, Fourier widths, time-embedding flags) comes from the UNet it will drive, the
way the checkpoint loader takes it from ``modules/configs``. A ControlNet made for another architecture is
refused with a message naming both families.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, ControlNetUnionModel
from diffusers.loaders import single_file_utils
from omegaconf import OmegaConf
from torch import Tensor, nn

from modules.models.architecture import indices_under
from modules.models.loader import CheckpointLoadError, assign_weights, build_on_meta, read_checkpoint

LDM_PREFIX = "control_model."
CONFIG_FILE = "config.json"
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
# UNet config keys a ControlNet copies (ControlNetModel.from_unet): what the weights cannot say
UNET_KEYS = ("flip_sin_to_cos", "freq_shift", "only_cross_attention", "downsample_padding", "mid_block_scale_factor",
             "act_fn", "norm_num_groups", "norm_eps", "attention_head_dim", "num_attention_heads", "class_embed_type",
             "num_class_embeds", "upcast_attention", "resnet_time_scale_shift", "encoder_hid_dim",
             "encoder_hid_dim_type", "addition_time_embed_dim", "addition_embed_type_num_heads")


class ControlNetMismatchError(ValueError):
    """The ControlNet was made for another model architecture than the loaded checkpoint."""


@dataclass(frozen=True)
class ControlNetShape:
    """What the weights say about the architecture a ControlNet belongs to."""

    family: str  # "sd1", "sd2", "sdxl"
    cross_attention_dim: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int


def family_of(cross_attention_dim: int, has_addition_embedding: bool) -> str:
    """SDXL has the text_time addition embedding; SD2 attends to 1024-wide OpenCLIP-H text; the rest is SD1-like
    (768 for real SD1.x; tiny and in-repo models have their own width)."""
    if has_addition_embedding:
        return "sdxl"
    return "sd2" if cross_attention_dim == 1024 else "sd1"


def unet_family(unet_config: Mapping[str, Any]) -> str:
    return family_of(int(unet_config["cross_attention_dim"]), unet_config.get("addition_embed_type") == "text_time")


# ---------------------------------------------------------------- keys


def reject_unsupported(state_dict: Mapping[str, Tensor], name: str) -> None:
    keys = list(state_dict)
    if any("lora" in key for key in keys[:200]):
        raise CheckpointLoadError(f"{name}: a Control-LoRA, which is not supported; use a full ControlNet")
    if any("lllite" in key for key in keys[:200]):
        raise CheckpointLoadError(f"{name}: a ControlNet-LLLite, which is not supported")
    if any(key.startswith("adapter.") or key.startswith("body.") for key in keys[:50]):
        raise CheckpointLoadError(f"{name}: a T2I-Adapter, not a ControlNet (T2I-Adapters are not supported)")


def to_diffusers_keys(state_dict: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """Any single-file ControlNet layout → diffusers ControlNetModel keys."""
    reject_unsupported(state_dict, name)
    if any(key.startswith(LDM_PREFIX) for key in state_dict):  # full lllyasviel files may carry the SD model too
        state_dict = {key[len(LDM_PREFIX):]: value for key, value in state_dict.items() if key.startswith(LDM_PREFIX)}
    if "controlnet_cond_embedding.conv_in.weight" in state_dict:
        return dict(state_dict)
    if "time_embed.0.weight" not in state_dict or "input_hint_block.0.weight" not in state_dict:
        raise CheckpointLoadError(f"{name}: not a ControlNet (no control_model.* / controlnet_cond_embedding.* keys)")
    return ldm_to_diffusers(state_dict)


def ldm_to_diffusers(ldm: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """lllyasviel keys → diffusers. diffusers converts the encoder copy; the hint encoder (its converter assumes
    exactly 4 levels, index 14 = conv_out) and the SDXL label embedding are mapped here."""
    downsamplers = [i for i in indices_under(ldm, "input_blocks.") if f"input_blocks.{i}.0.op.weight" in ldm]
    layers = downsamplers[0] - 1 if downsamplers else len(indices_under(ldm, "input_blocks.")) - 1
    converted = single_file_utils.convert_controlnet_checkpoint(dict(ldm), {"layers_per_block": layers})
    converted = {k: v for k, v in converted.items() if v is not None and not k.startswith("controlnet_cond_embedding.")}
    hint = [i for i in indices_under(ldm, "input_hint_block.") if f"input_hint_block.{i}.weight" in ldm]
    targets = ["conv_in"] + [f"blocks.{n}" for n in range(len(hint) - 2)] + ["conv_out"]  # conv, SiLU, conv, ...
    for index, target in zip(hint, targets):
        for part in ("weight", "bias"):
            converted[f"controlnet_cond_embedding.{target}.{part}"] = ldm[f"input_hint_block.{index}.{part}"]
    for ldm_name, diffusers_name in (("label_emb.0.0", "add_embedding.linear_1"),
                                     ("label_emb.0.2", "add_embedding.linear_2")):
        for part in ("weight", "bias"):
            if f"{ldm_name}.{part}" in ldm:
                converted[f"{diffusers_name}.{part}"] = ldm[f"{ldm_name}.{part}"]
    return converted


# ---------------------------------------------------------------- config


def shape_of(weights: Mapping[str, Tensor]) -> ControlNetShape:
    levels = indices_under(weights, "down_blocks.")
    channels = tuple(int(weights[f"down_blocks.{level}.resnets.0.conv2.weight"].shape[0]) for level in levels)
    cross = next((int(t.shape[1]) for k, t in weights.items() if k.endswith("attn2.to_k.weight")), 0)
    layers = len(indices_under(weights, "down_blocks.0.resnets."))
    return ControlNetShape(family_of(cross, "add_embedding.linear_1.weight" in weights), cross, channels, layers)


def check_compatible(shape: ControlNetShape, unet_config: Mapping[str, Any], name: str, model_name: str) -> None:
    """Refuse a ControlNet whose residuals cannot be added to this UNet, naming what it was made for."""
    target = unet_family(unet_config)
    unet_cross = int(unet_config["cross_attention_dim"])
    if shape.family != target or shape.cross_attention_dim != unet_cross:
        raise ControlNetMismatchError(
            f"ControlNet {name} is for {FAMILY_LABELS[shape.family]} models (cross-attention width "
            f"{shape.cross_attention_dim}), but the loaded checkpoint {model_name} is {FAMILY_LABELS[target]} "
            f"(width {unet_cross}); choose a ControlNet made for {FAMILY_LABELS[target]}")
    unet_channels = tuple(unet_config["block_out_channels"])
    if shape.block_out_channels != unet_channels or shape.layers_per_block != unet_config["layers_per_block"]:
        raise ControlNetMismatchError(
            f"ControlNet {name} was made for a different {FAMILY_LABELS[target]} architecture (channels "
            f"{list(shape.block_out_channels)} × {shape.layers_per_block} layers) than the loaded checkpoint "
            f"{model_name} ({list(unet_channels)} × {unet_config['layers_per_block']})")


def config_from_weights(weights: Mapping[str, Tensor], unet_config: Mapping[str, Any],
                        global_pool: bool = False) -> dict[str, Any]:
    """ControlNetModel config: shapes from the weights, the rest from the UNet it drives."""
    shape = shape_of(weights)
    levels = range(len(shape.block_out_channels))
    depths = [len(indices_under(weights, f"down_blocks.{level}.attentions.0.transformer_blocks.")) for level in levels]
    mid_depth = len(indices_under(weights, "mid_block.attentions.0.transformer_blocks."))
    hint_blocks = indices_under(weights, "controlnet_cond_embedding.blocks.")
    hint_channels = [int(weights["controlnet_cond_embedding.conv_in.weight"].shape[0])] + [
        int(weights[f"controlnet_cond_embedding.blocks.{n}.weight"].shape[0]) for n in hint_blocks[1::2]]
    config = {key: unet_config[key] for key in UNET_KEYS if key in unet_config}
    config.update(
        in_channels=int(weights["conv_in.weight"].shape[1]),
        conditioning_channels=int(weights["controlnet_cond_embedding.conv_in.weight"].shape[1]),
        block_out_channels=list(shape.block_out_channels), layers_per_block=shape.layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if depth else "DownBlock2D" for depth in depths],
        # diffusers gives the mid block the last level's depth; attention-free levels take a placeholder 1
        transformer_layers_per_block=[depth or 1 for depth in depths[:-1]] + [mid_depth or depths[-1] or 1],
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_depth else None,
        cross_attention_dim=shape.cross_attention_dim,
        use_linear_projection=next((t.ndim == 2 for k, t in weights.items() if k.endswith(".proj_in.weight")), False),
        conditioning_embedding_out_channels=hint_channels, global_pool_conditions=global_pool,
        controlnet_conditioning_channel_order="rgb")
    if "add_embedding.linear_1.weight" in weights:
        config.update(addition_embed_type="text_time",
                      projection_class_embeddings_input_dim=int(weights["add_embedding.linear_1.weight"].shape[1]))
    else:
        config.update(addition_embed_type=None, projection_class_embeddings_input_dim=None)
    return config


def sidecar_global_pool(path: Path) -> bool:
    """lllyasviel's shuffle model ships `<name>.yaml` with global_average_pooling: True (A1111 reads it too)."""
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return False
    try:
        config = OmegaConf.load(sidecar)
    except Exception:  # an unreadable sidecar is ignored, as A1111 falls back to the default config
        return False
    value = OmegaConf.select(config, "model.params.control_stage_config.params.global_average_pooling", default=None)
    return bool(value) if value is not None else bool(re.search(r"global_average_pooling:\s*true", str(config), re.I))


# ---------------------------------------------------------------- loading


def load_single_file(path: Path, unet_config: Mapping[str, Any], dtype: torch.dtype, model_name: str) -> nn.Module:
    state_dict, _ = read_checkpoint(path)
    weights = to_diffusers_keys(state_dict, path.name)
    check_compatible(shape_of(weights), unet_config, path.stem, model_name)
    config = config_from_weights(weights, unet_config, sidecar_global_pool(path))
    network = build_on_meta(lambda: ControlNetModel.from_config(config))
    return assign_weights(network, weights, dtype, f"ControlNet {path.name}")


def load_folder(folder: Path, unet_config: Mapping[str, Any], dtype: torch.dtype, model_name: str) -> nn.Module:
    """A diffusers ControlNet folder (ControlNetModel or ControlNetUnionModel), local files only."""
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    model_class = ControlNetUnionModel if config.get("_class_name") == "ControlNetUnionModel" else ControlNetModel
    cross = int(config["cross_attention_dim"])
    shape = ControlNetShape(family_of(cross, config.get("addition_embed_type") == "text_time"), cross,
                            tuple(config["block_out_channels"]), int(config["layers_per_block"]))
    check_compatible(shape, unet_config, folder.name, model_name)
    try:
        network = model_class.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointLoadError(f"ControlNet folder {folder.name}: cannot load ({error})") from error
    return network.eval()


def load_controlnet(path: Path, unet_config: Mapping[str, Any], dtype: torch.dtype, model_name: str) -> nn.Module:
    """The ControlNet at `path` (file or folder) built for a UNet with `unet_config`, on the CPU."""
    if path.is_dir():
        return load_folder(path, unet_config, dtype, model_name)
    return load_single_file(path, unet_config, dtype, model_name)
