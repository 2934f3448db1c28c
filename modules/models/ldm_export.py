"""diffusers components → an A1111/LDM single-file state dict (the reverse of the loader's conversion).

Used to ship the default model as one ``.safetensors`` that A1111, ComfyUI and Forge load, and by tests
to build A1111-form fixtures. The mapping mirrors ``diffusers.loaders.single_file_utils`` so that
export → ``read_checkpoint`` → ``detect_family`` → ``load_components`` gives bit-identical weights.
Layouts: SD1.x (``cond_stage_model.transformer.text_model.*``) and SDXL
(``conditioner.embedders.0.transformer.text_model.*`` + OpenCLIP ``conditioner.embedders.1.model.*``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from modules.models.detect import (
    REFINER_BIG_G_PREFIX, SD1_TEXT_PREFIX, SDXL_BIG_G_PREFIX, SDXL_CLIP_L_PREFIX, UNET_PREFIX, VAE_PREFIX,
)

UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
}
RESNET_PARTS = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "norm2.": "out_layers.0.",
                "conv2.": "out_layers.3.", "time_emb_proj.": "emb_layers.1.", "conv_shortcut.": "skip_connection."}
VAE_ATTENTION_PARTS = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
OPEN_CLIP_LAYER_PARTS = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.",
                         "mlp.fc2.": "mlp.c_proj.", "self_attn.out_proj.": "attn.out_proj."}


def replace_prefix(rest: str, parts: Mapping[str, str]) -> str:
    for new, old in parts.items():
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


# ---------------------------------------------------------------- UNet


def unet_key_to_ldm(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """One diffusers UNet key → its LDM name (blocks numbered as in the original ``openaimodel.py``)."""
    per_level = layers_per_block + 1  # LDM counts a down level's downsampler / an up level's extra resblock
    for new, old in UNET_FIXED.items():
        if key.startswith(new):
            return old + key[len(new):]
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = per_level * level + layer + 1
        return f"input_blocks.{index}." + (f"0.{replace_prefix(rest, RESNET_PARTS)}" if kind == "resnets" else f"1.{rest}")
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{per_level * (int(match[1]) + 1)}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(match[1])}.{replace_prefix(match[2], RESNET_PARTS)}"
    if match := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = per_level * level + layer
        return f"output_blocks.{index}." + (f"0.{replace_prefix(rest, RESNET_PARTS)}" if kind == "resnets" else f"1.{rest}")
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(match[1])
        slot = 2 if up_has_attention[level] else 1  # the upsampler follows the resblock (and its attention)
        return f"output_blocks.{per_level * level + layers_per_block}.{slot}.conv.{match[2]}"
    raise ValueError(f"no LDM name for UNet key {key!r}")


def unet_to_ldm(unet: nn.Module) -> dict[str, Tensor]:
    config = unet.config
    if not isinstance(config.layers_per_block, int):
        raise ValueError("LDM export needs the same number of resblocks in every level")
    up_has_attention = [block_type.startswith("CrossAttn") for block_type in config.up_block_types]
    return {UNET_PREFIX + unet_key_to_ldm(key, config.layers_per_block, up_has_attention): tensor
            for key, tensor in unet.state_dict().items()}


# ---------------------------------------------------------------- VAE


def vae_key_to_ldm(key: str, level_count: int) -> str:
    """One diffusers AutoencoderKL key → LDM (decoder levels are numbered from the bottom in LDM)."""
    key = key.replace("conv_norm_out.", "norm_out.")
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        level = level_count - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{level_count - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{match[1]}.mid.attn_1.{replace_prefix(match[2], VAE_ATTENTION_PARTS)}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def vae_to_ldm(vae: nn.Module) -> dict[str, Tensor]:
    level_count = len(vae.config.block_out_channels)
    exported = {}
    for key, tensor in vae.state_dict().items():
        ldm_key = vae_key_to_ldm(key, level_count)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1×1 convolutions
        exported[VAE_PREFIX + ldm_key] = tensor
    return exported


# ---------------------------------------------------------------- text encoders


def clip_to_ldm(text_encoder: nn.Module, prefix: str) -> dict[str, Tensor]:
    """Hugging Face CLIP keys under ``<prefix>text_model.`` (flat transformers-5 keys get it back)."""
    return {prefix + ("" if key.startswith("text_model.") else "text_model.") + key: tensor
            for key, tensor in text_encoder.state_dict().items()
            if not key.endswith("position_ids") and key != "text_projection.weight"}


def open_clip_to_ldm(text_encoder: nn.Module, prefix: str) -> dict[str, Tensor]:
    """``CLIPTextModelWithProjection`` → OpenCLIP keys (fused q/k/v ``in_proj``, transposed projection)."""
    state = {key.removeprefix("text_model."): tensor for key, tensor in text_encoder.state_dict().items()}
    exported = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
        prefix + "text_projection": state.pop("text_projection.weight").T.contiguous(),  # x @ P in OpenCLIP
        prefix + "logit_scale": torch.tensor(math.log(100.0)),  # present in the original files; unused
    }
    state.pop("embeddings.position_ids", None)
    for layer in range(text_encoder.config.num_hidden_layers):
        source, target = f"encoder.layers.{layer}.", f"{prefix}transformer.resblocks.{layer}."
        for suffix in ("weight", "bias"):
            parts = [state.pop(f"{source}self_attn.{name}_proj.{suffix}") for name in ("q", "k", "v")]
            exported[f"{target}attn.in_proj_{suffix}"] = torch.cat(parts, dim=0)
    for key, tensor in state.items():
        match = re.match(r"encoder\.layers\.(\d+)\.(.*)", key)
        if not match:
            raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
        exported[f"{prefix}transformer.resblocks.{match[1]}.{replace_prefix(match[2], OPEN_CLIP_LAYER_PARTS)}"] = tensor
    return exported


# ---------------------------------------------------------------- whole checkpoint


def to_ldm_state_dict(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module | None,
                      text_encoder_2: nn.Module | None = None) -> dict[str, Tensor]:
    """A1111/LDM keys for an SD1.x model (one CLIP), an SDXL base (CLIP-L + OpenCLIP-bigG) or a
    refiner (``text_encoder=None``). Tensors share storage with the modules: save or clone them."""
    exported = {**unet_to_ldm(unet), **vae_to_ldm(vae)}
    if text_encoder_2 is None:
        if text_encoder is None:
            raise ValueError("a checkpoint needs at least one text encoder")
        exported.update(clip_to_ldm(text_encoder, SD1_TEXT_PREFIX))
    elif text_encoder is None:
        exported.update(open_clip_to_ldm(text_encoder_2, REFINER_BIG_G_PREFIX))
    else:
        exported.update(clip_to_ldm(text_encoder, SDXL_CLIP_L_PREFIX))
        exported.update(open_clip_to_ldm(text_encoder_2, SDXL_BIG_G_PREFIX))
    return exported


def save_single_file(path: str | os.PathLike[str], state_dict: Mapping[str, Tensor], metadata: Mapping[str, str],
                     dtype: torch.dtype | None = None) -> Path:
    """Write ``state_dict`` as safetensors atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise TypeError(f"safetensors metadata must be str → str; offending keys: {bad}")
    tensors: dict[str, Tensor] = {}
    seen_storage: set[int] = set()
    for key, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        if tensor.untyped_storage().data_ptr() in seen_storage:  # safetensors refuses shared storage
            tensor = tensor.clone()
        seen_storage.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(temporary), metadata=dict(metadata))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
