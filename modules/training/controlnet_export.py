"""Write a trained ControlNet as an A1111/lllyasviel single file (``control_model.*`` LDM keys, fp16).

The key mapping is the inverse of ``diffusers.loaders.single_file_utils.convert_controlnet_checkpoint``: the
encoder copy and middle block are named like the UNet's (``modules.models.ldm_export.unet_key_to_ldm``), and
- hint encoder: ``controlnet_cond_embedding.conv_in`` → ``input_hint_block.0``, ``blocks.i`` →
  ``input_hint_block.{2(i+1)}`` (the SiLUs between take the odd indices), ``conv_out`` → ``input_hint_block.14``;
- zero convolutions: ``controlnet_down_blocks.i`` → ``zero_convs.i.0``, ``controlnet_mid_block`` →
  ``middle_block_out.0``.
Export → ``convert_controlnet_checkpoint`` gives back the same tensors under the same names (tested).

The file's metadata carries what the weights cannot say (preprocessor, native size) and the diffusers config
(``controlnet.config``), so a loader can build the tiny architecture without guessing.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel
from torch import Tensor

from modules.models.ldm_export import save_single_file, unet_key_to_ldm

LDM_PREFIX = "control_model."
HINT_OUT_INDEX = 14  # lllyasviel's hint encoder: conv, then 6 convolutions, then this one (SiLUs between)


def controlnet_key_to_ldm(key: str, layers_per_block: int) -> str:
    """One diffusers ControlNetModel key → its lllyasviel name (without the ``control_model.`` prefix)."""
    if match := re.match(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)$", key):
        index = 0 if match[1] == "conv_in" else HINT_OUT_INDEX if match[1] == "conv_out" else 2 * (int(match[2]) + 1)
        return f"input_hint_block.{index}.{match[3]}"
    if match := re.match(r"controlnet_down_blocks\.(\d+)\.(weight|bias)$", key):
        return f"zero_convs.{match[1]}.0.{match[2]}"
    if match := re.match(r"controlnet_mid_block\.(weight|bias)$", key):
        return f"middle_block_out.0.{match[1]}"
    return unet_key_to_ldm(key, layers_per_block, up_has_attention=[])


def controlnet_to_ldm(controlnet: ControlNetModel) -> dict[str, Tensor]:
    """The ControlNet's state dict under ``control_model.*`` LDM keys (tensors shared with the module)."""
    config = controlnet.config
    if not isinstance(config.layers_per_block, int):
        raise ValueError("LDM export needs the same number of resblocks in every level")
    if len(config.conditioning_embedding_out_channels) != 4:
        raise ValueError("the LDM layout has exactly four hint-encoder levels (input_hint_block.14 is its output)")
    return {LDM_PREFIX + controlnet_key_to_ldm(key, config.layers_per_block): tensor
            for key, tensor in controlnet.state_dict().items()}


def controlnet_metadata(controlnet: ControlNetModel, *, preprocessor: str, native_size: int, title: str,
                        description: str, recipe: dict[str, Any]) -> dict[str, str]:
    """modelspec keys + the preprocessor it was trained on, the base model's native size, config and recipe."""
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/controlnet",
        "modelspec.implementation": "diffusers",
        "modelspec.title": title,
        "modelspec.description": description,
        "modelspec.resolution": f"{native_size}x{native_size}",
        "modelspec.license": "same as this project",
        "controlnet.preprocessor": preprocessor,
        "controlnet.config": json.dumps(dict(controlnet.config), sort_keys=True, default=list),
        "sd_native_size": str(native_size),
        "recipe": json.dumps(recipe, sort_keys=True),
        "trainer": "modules.training.train_controlnet (this project)",
    }


def export_controlnet(path: str | os.PathLike[str], controlnet: ControlNetModel,
                      metadata: dict[str, str]) -> Path:
    """Save as fp16 safetensors with lllyasviel keys (what A1111's ControlNet extension loads)."""
    return save_single_file(path, controlnet_to_ldm(controlnet), metadata, dtype=torch.float16)


def controlnet_from_ldm(state_dict: dict[str, Tensor], config: dict[str, Any],
                        dtype: torch.dtype = torch.float32) -> ControlNetModel:
    """Rebuild a ControlNetModel from lllyasviel keys with diffusers' own converter (the round-trip check)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    converted = convert_controlnet_checkpoint(state_dict, config)
    controlnet = ControlNetModel.from_config(config)
    controlnet.load_state_dict(converted, strict=True)
    return controlnet.to(dtype)
