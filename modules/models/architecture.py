"""Component configs read from the weights of an LDM/A1111 checkpoint (the ComfyUI way).

The family folder in ``modules/configs/<family>/`` supplies only what weights cannot say (scheduler,
prediction type, activation, head layout, scaling factor); channels, block counts, transformer depths,
widths and layer counts come from tensor shapes and key structure. So pruned or distilled models
(SSD-1B, Vega, BK-SDM: fewer blocks or transformer layers) and tiny test checkpoints load with the
right shapes instead of failing on a fixed config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from modules.models.detect import (
    REFINER_BIG_G_PREFIX, SD1_TEXT_PREFIX, SD2_TEXT_PREFIX, SDXL_BIG_G_PREFIX, SDXL_CLIP_L_PREFIX, UNET_PREFIX,
    VAE_PREFIX,
    ModelFamilyInfo, UnsupportedModelError,
)

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
HEAD_WIDTH = 64  # channels per attention head in SD2/SDXL UNets and in every CLIP text encoder


@dataclass(frozen=True)
class ComponentConfigs:
    """diffusers ``config.json`` dicts (UNet, VAE) and ``CLIPTextConfig`` kwargs (text encoders)."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any] | None
    text_encoder_2: dict[str, Any] | None
    # where each encoder's weights sit in the single file and in which layout ("hf" or "open_clip")
    text_encoder_source: tuple[str, str] | None
    text_encoder_2_source: tuple[str, str] | None


def family_config(family: str, relative_path: str) -> dict[str, Any]:
    """A JSON file of ``modules/configs/<family>/``."""
    return json.loads((CONFIG_ROOT / family / relative_path).read_text(encoding="utf-8"))


def indices_under(state_dict: Mapping[str, Tensor], prefix: str) -> list[int]:
    """Sorted N of keys ``{prefix}{N}.…``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(match.group(1)) for key in state_dict if (match := pattern.match(key))})


def heads_for_width(channels: int, head_width: int = HEAD_WIDTH) -> int:
    """channels // head_width heads, lowered to a divisor of channels (tiny models: at least 1)."""
    heads = max(1, channels // head_width)
    while channels % heads:
        heads -= 1
    return heads


def transformer_depth(state_dict: Mapping[str, Tensor], block_prefix: str) -> int:
    """Number of ``transformer_blocks`` in one SpatialTransformer (0 = no attention here)."""
    return len(indices_under(state_dict, block_prefix + "transformer_blocks."))


# ---------------------------------------------------------------- UNet


def read_unet_levels(state_dict: Mapping[str, Tensor]) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """(channels per level, transformer depth per down resblock, per up resblock), from LDM keys.

    LDM layout: ``input_blocks.0`` = conv_in, then per level ``layers_per_block`` resblocks
    (``.0``) each with an optional SpatialTransformer (``.1``), then a downsampler (``.0.op``);
    output blocks mirror it with ``layers_per_block + 1`` blocks, the last of a level upsampling.
    """
    channels: list[int] = []
    down_levels: list[list[int]] = [[]]
    for index in indices_under(state_dict, UNET_PREFIX + "input_blocks.")[1:]:
        block = f"{UNET_PREFIX}input_blocks.{index}."
        if block + "0.op.weight" in state_dict:
            down_levels.append([])
            continue
        if not down_levels[-1]:
            channels.append(int(state_dict[block + "0.out_layers.3.weight"].shape[0]))
        down_levels[-1].append(transformer_depth(state_dict, block + "1."))
    up_levels: list[list[int]] = [[]]
    output_indices = indices_under(state_dict, UNET_PREFIX + "output_blocks.")
    for index in output_indices:
        block = f"{UNET_PREFIX}output_blocks.{index}."
        up_levels[-1].append(transformer_depth(state_dict, block + "1."))
        upsamples = block + "1.conv.weight" in state_dict or block + "2.conv.weight" in state_dict
        if upsamples and index != output_indices[-1]:
            up_levels.append([])
    return channels, down_levels, up_levels


def uniform_layers_per_block(down_levels: list[list[int]], up_levels: list[list[int]]) -> int:
    layers = len(down_levels[0])
    if any(len(level) != layers for level in down_levels) or any(len(level) != layers + 1 for level in up_levels) \
            or len(down_levels) != len(up_levels):
        raise UnsupportedModelError(
            f"UNet with uneven blocks (down {[len(x) for x in down_levels]}, up {[len(x) for x in up_levels]})")
    return layers


def block_types(levels: list[list[int]], attention: str, plain: str) -> list[str]:
    types = []
    for depths in levels:
        if any(depths) and not all(depths):
            raise UnsupportedModelError("UNet level mixing blocks with and without attention")
        types.append(attention if all(depths) else plain)
    return types


def transformer_layout(down_levels: list[list[int]], up_levels: list[list[int]],
                       mid_depth: int) -> dict[str, Any]:
    """``transformer_layers_per_block`` (+ ``reverse_…`` for asymmetric models such as SSD-1B).

    diffusers gives the mid block ``transformer_layers_per_block[-1]``: a last level without
    attention carries the mid depth; other attention-free levels take a placeholder 1 (unused).
    """
    per_level: list[Any] = []
    for index, depths in enumerate(down_levels):
        if not any(depths):
            per_level.append(mid_depth if index == len(down_levels) - 1 else 1)
        else:
            per_level.append(depths[0] if len(set(depths)) == 1 else list(depths))
    if mid_depth and any(down_levels[-1]) and per_level[-1] != mid_depth:
        raise UnsupportedModelError(f"mid block depth {mid_depth} differs from the last level's {per_level[-1]}")
    layout: dict[str, Any] = {"transformer_layers_per_block": per_level}
    expected_up = [[d if isinstance(d, int) else d[0]] * len(up) for d, up in zip(reversed(per_level), up_levels)]
    actual_up = [[depth or 1 for depth in depths] for depths in up_levels]
    symmetric = all(isinstance(d, int) for d in per_level) and all(
        actual == expected or not any(raw) for actual, expected, raw in zip(actual_up, expected_up, up_levels))
    used_depths = [d for d, raw in zip(per_level, down_levels) if any(raw)] + ([mid_depth] if mid_depth else [])
    if not symmetric:
        layout["reverse_transformer_layers_per_block"] = actual_up
    elif len(used_depths) > 0 and all(isinstance(d, int) and d == used_depths[0] for d in used_depths):
        layout["transformer_layers_per_block"] = used_depths[0]  # one depth everywhere (SD1, SD2, refiner)
    return layout


def unet_config_from_weights(state_dict: Mapping[str, Tensor], family_unet: dict[str, Any],
                             native_size: int, pooled_width: int | None) -> dict[str, Any]:
    channels, down_levels, up_levels = read_unet_levels(state_dict)
    layers_per_block = uniform_layers_per_block(down_levels, up_levels)
    has_mid = any(key.startswith(UNET_PREFIX + "middle_block.") for key in state_dict)
    mid_depth = transformer_depth(state_dict, UNET_PREFIX + "middle_block.1.") if has_mid else 0
    if has_mid and mid_depth == 0:
        raise UnsupportedModelError("UNet mid block without attention is not supported")
    conv_in = state_dict[UNET_PREFIX + "input_blocks.0.0.weight"]
    config = dict(family_unet)
    config.update(
        in_channels=int(conv_in.shape[1]),
        out_channels=int(state_dict[UNET_PREFIX + "out.2.weight"].shape[0]),
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=block_types(down_levels, "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=block_types(up_levels, "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn" if has_mid else None,
        sample_size=native_size // 8,  # latents are 8× smaller than pixels
        **transformer_layout(down_levels, up_levels, mid_depth),
    )
    config.update(attention_layout(state_dict, family_unet, channels))
    time_width = int(state_dict[UNET_PREFIX + "time_embed.0.weight"].shape[0])
    config["time_embedding_dim"] = None if time_width == 4 * channels[0] else time_width
    config.update(addition_embedding(state_dict, family_unet, pooled_width))
    return config


def attention_layout(state_dict: Mapping[str, Tensor], family_unet: dict[str, Any],
                     channels: list[int]) -> dict[str, Any]:
    """Cross-attention width and projection type from weights; head counts by the family's style.

    diffusers' ``attention_head_dim`` holds the number of heads (a historical misnomer): SD1 uses
    8 heads everywhere, SD2/SDXL use 64 channels per head (320 → 5 heads).
    """
    layout: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            layout["cross_attention_dim"] = int(tensor.shape[1])
        if key.startswith(UNET_PREFIX) and key.endswith(".proj_in.weight"):
            layout["use_linear_projection"] = tensor.ndim == 2
    if isinstance(family_unet["attention_head_dim"], int):
        heads = family_unet["attention_head_dim"]
        layout["attention_head_dim"] = heads if all(c % heads == 0 for c in channels) \
            else [heads_for_width(c, c // heads or 1) for c in channels]
    else:
        layout["attention_head_dim"] = [heads_for_width(c) for c in channels]
    return layout


def addition_embedding(state_dict: Mapping[str, Tensor], family_unet: dict[str, Any],
                       pooled_width: int | None) -> dict[str, Any]:
    """SDXL ``text_time`` embedding: input = pooled text width + time_ids × Fourier width."""
    key = UNET_PREFIX + "label_emb.0.0.weight"
    if key not in state_dict:
        return {"addition_embed_type": None, "projection_class_embeddings_input_dim": None}
    input_width = int(state_dict[key].shape[1])
    family_time_width = family_unet.get("addition_time_embed_dim") or 256
    time_id_count = (family_unet["projection_class_embeddings_input_dim"] - 1280) // family_time_width  # 6 or 5
    pooled = pooled_width if pooled_width is not None else 1280
    time_width, remainder = divmod(input_width - pooled, time_id_count)
    if remainder or time_width <= 0 or time_width % 2:
        raise UnsupportedModelError(f"cannot split the addition embedding input {input_width} (pooled {pooled})")
    return {"addition_embed_type": "text_time", "addition_time_embed_dim": time_width,
            "projection_class_embeddings_input_dim": input_width,
            "addition_embed_type_num_heads": family_unet.get("addition_embed_type_num_heads", 64)}


# ---------------------------------------------------------------- VAE


def vae_config_from_weights(vae_state_dict: Mapping[str, Tensor], family_vae: dict[str, Any]) -> dict[str, Any]:
    """AutoencoderKL config from prefix-less LDM VAE keys (``encoder.down.0.block.0…``)."""
    levels = indices_under(vae_state_dict, "encoder.down.")
    if not levels:
        raise UnsupportedModelError("VAE weights without encoder.down blocks")
    channels = [int(vae_state_dict[f"encoder.down.{level}.block.0.conv2.weight"].shape[0]) for level in levels]
    layers = len(indices_under(vae_state_dict, "encoder.down.0.block."))
    decoder_layers = len(indices_under(vae_state_dict, "decoder.up.0.block."))
    if decoder_layers != layers + 1:
        raise UnsupportedModelError(f"VAE decoder has {decoder_layers} resblocks per level, expected {layers + 1}")
    config = dict(family_vae)
    config.update(
        block_out_channels=channels, layers_per_block=layers,
        down_block_types=["DownEncoderBlock2D"] * len(levels), up_block_types=["UpDecoderBlock2D"] * len(levels),
        in_channels=int(vae_state_dict["encoder.conv_in.weight"].shape[1]),
        out_channels=int(vae_state_dict["decoder.conv_out.weight"].shape[0]),
        latent_channels=int(vae_state_dict["decoder.conv_in.weight"].shape[1]),
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in vae_state_dict,
        use_quant_conv="quant_conv.weight" in vae_state_dict,
        use_post_quant_conv="post_quant_conv.weight" in vae_state_dict,
    )
    return config


# ---------------------------------------------------------------- text encoders


def hf_clip_config(state_dict: Mapping[str, Tensor], prefix: str, family_te: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextConfig kwargs for a Hugging Face-layout CLIP (``…transformer.text_model.*``)."""
    inner = prefix + "text_model." if any(k.startswith(prefix + "text_model.") for k in state_dict) else prefix
    tokens = state_dict[inner + "embeddings.token_embedding.weight"]
    hidden = int(tokens.shape[1])
    return clip_config(family_te, vocab=int(tokens.shape[0]), hidden=hidden,
                       positions=int(state_dict[inner + "embeddings.position_embedding.weight"].shape[0]),
                       layers=len(indices_under(state_dict, inner + "encoder.layers.")),
                       intermediate=int(state_dict[inner + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
                       projection=hidden)


def open_clip_config(state_dict: Mapping[str, Tensor], prefix: str, family_te: dict[str, Any],
                     drop_last_layer: bool) -> dict[str, Any]:
    """CLIPTextConfig kwargs for an OpenCLIP-layout encoder (``…model.transformer.resblocks.*``).

    SD2 conditions on the penultimate layer, so its encoder is built without the last block.
    """
    tokens = state_dict[prefix + "token_embedding.weight"]
    hidden = int(tokens.shape[1])
    projection = state_dict.get(prefix + "text_projection")
    layers = len(indices_under(state_dict, prefix + "transformer.resblocks."))
    return clip_config(family_te, vocab=int(tokens.shape[0]), hidden=hidden,
                       positions=int(state_dict[prefix + "positional_embedding"].shape[0]),
                       layers=layers - 1 if drop_last_layer else layers,
                       intermediate=int(state_dict[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                       projection=int(projection.shape[1]) if projection is not None else hidden)


def clip_config(family_te: dict[str, Any], *, vocab: int, hidden: int, positions: int, layers: int,
                intermediate: int, projection: int) -> dict[str, Any]:
    config = {key: value for key, value in family_te.items() if key != "architectures"}
    config.update(vocab_size=vocab, hidden_size=hidden, max_position_embeddings=positions,
                  num_hidden_layers=layers, intermediate_size=intermediate,
                  num_attention_heads=heads_for_width(hidden), projection_dim=projection)
    return config


# ---------------------------------------------------------------- all components


def text_encoder_sources(info: ModelFamilyInfo) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(prefix, layout) of the first and second text encoder in a single file of this family."""
    if info.base == "sd1":
        return (SD1_TEXT_PREFIX, "hf"), None
    if info.base == "sd2":
        return (SD2_TEXT_PREFIX, "open_clip"), None
    if info.base == "sdxl":
        return (SDXL_CLIP_L_PREFIX, "hf"), (SDXL_BIG_G_PREFIX, "open_clip")
    return None, (REFINER_BIG_G_PREFIX, "open_clip")


def text_encoder_config(state_dict: Mapping[str, Tensor], source: tuple[str, str], family_te: dict[str, Any],
                        info: ModelFamilyInfo) -> dict[str, Any]:
    prefix, layout = source
    if layout == "hf":
        return hf_clip_config(state_dict, prefix, family_te)
    return open_clip_config(state_dict, prefix, family_te, drop_last_layer=info.base == "sd2")


def read_component_configs(state_dict: Mapping[str, Tensor], info: ModelFamilyInfo,
                           native_size: int) -> ComponentConfigs:
    """All component configs of a single-file checkpoint of the given family."""
    try:
        return component_configs(state_dict, info, native_size)
    except KeyError as error:
        raise UnsupportedModelError(f"incomplete {info.family} checkpoint: missing weight {error}") from error


def component_configs(state_dict: Mapping[str, Tensor], info: ModelFamilyInfo, native_size: int) -> ComponentConfigs:
    te1_source, te2_source = text_encoder_sources(info)
    if info.base == "sd2" and not any(k.startswith(SD2_TEXT_PREFIX) for k in state_dict):
        te1_source = (SD1_TEXT_PREFIX, "hf")  # SD2 UNet with a Hugging Face-layout text encoder
    te1 = text_encoder_config(state_dict, te1_source, family_config(info.family, "text_encoder/config.json"), info) \
        if te1_source else None
    te2 = text_encoder_config(state_dict, te2_source, family_config(info.family, "text_encoder_2/config.json"),
                              info) if te2_source else None
    pooled_width = te2["projection_dim"] if te2 else None
    unet = unet_config_from_weights(state_dict, family_config(info.family, "unet/config.json"), native_size,
                                    pooled_width)
    vae_weights = {k.removeprefix(VAE_PREFIX): v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    if not vae_weights:
        raise UnsupportedModelError("checkpoint without a VAE (no first_stage_model.* weights)")
    vae = vae_config_from_weights(vae_weights, family_config(info.family, "vae/config.json"))
    return ComponentConfigs(unet=unet, vae=vae, text_encoder=te1, text_encoder_2=te2,
                            text_encoder_source=te1_source, text_encoder_2_source=te2_source)
