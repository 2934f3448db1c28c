"""Which Stable Diffusion family a checkpoint belongs to, from its keys and metadata.

diffusers only guesses a Hub repository from the keys; the app needs a family name to pick
``modules/configs/<family>/`` and a prediction type for the scheduler. We read the key *structure*
(which text encoders exist, the UNet's input channels, the cross-attention width), never layer counts,
so tiny test models and pruned models (SSD-1B, Vega, BK-SDM) are detected like full ones.
Metadata (``modelspec.*``, kohya ``ss_*``, our own ``prediction_type``/``sd_native_size``) is trusted
for what the weights cannot say: v-prediction and SD2 768-v versus 512-base.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from torch import Tensor

Family = Literal["sd15", "sd15-inpaint", "sd2-v", "sd2-base", "sdxl", "sdxl-refiner", "sdxl-inpaint"]
PredictionType = Literal["epsilon", "v_prediction"]
Base = Literal["sd1", "sd2", "sdxl", "sdxl-refiner"]

FAMILIES: tuple[str, ...] = ("sd15", "sd15-inpaint", "sd2-v", "sd2-base", "sdxl", "sdxl-refiner", "sdxl-inpaint")
NATIVE_SIZE = {"sd15": 512, "sd15-inpaint": 512, "sd2-v": 768, "sd2-base": 512,
               "sdxl": 1024, "sdxl-refiner": 1024, "sdxl-inpaint": 1024}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_BIG_G_PREFIX = "conditioner.embedders.1.model."
REFINER_BIG_G_PREFIX = "conditioner.embedders.0.model."


class UnsupportedModelError(ValueError):
    """The file is not a Stable Diffusion 1.x/2.x/XL checkpoint we can load (the message says why)."""


@dataclass(frozen=True)
class ModelFamilyInfo:
    family: Family
    prediction_type: PredictionType
    is_inpaint: bool = False
    rescale_zero_snr: bool = False
    base: Base = "sd1"
    unet_in_channels: int = 4
    # which signals decided family and prediction type, for logs and the model manager's UI
    evidence: tuple[str, ...] = ()

    @property
    def is_sdxl(self) -> bool:
        return self.base in ("sdxl", "sdxl-refiner")

    @property
    def default_native_size(self) -> int:
        return NATIVE_SIZE[self.family]

    @property
    def tokenizer_pad_token(self) -> str:
        """Pad of the first tokenizer (SD2 pads with "!"; SDXL's second tokenizer always does)."""
        return "!" if self.base == "sd2" else "<|endoftext|>"


def with_prediction_type(info: ModelFamilyInfo, prediction_type: PredictionType) -> ModelFamilyInfo:
    """User override (SD2 768-v and 512-base cannot be told apart from weights)."""
    family = info.family
    if info.base == "sd2" and not info.is_inpaint:
        family = "sd2-v" if prediction_type == "v_prediction" else "sd2-base"
    return replace(info, family=family, prediction_type=prediction_type,
                   evidence=info.evidence + (f"prediction override {prediction_type}",))


def detect_family(state_dict: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> ModelFamilyInfo:
    """Family, prediction type and inpaint flag of an A1111/LDM single-file checkpoint."""
    metadata = metadata or {}
    reject_unsupported(state_dict, metadata)
    base, base_evidence = detect_base(state_dict)
    in_channels = int(state_dict[UNET_PREFIX + "input_blocks.0.0.weight"].shape[1])
    if in_channels == 8:
        raise UnsupportedModelError("instruct-pix2pix checkpoints (UNet with 8 input channels) are not supported")
    if in_channels not in (4, 9):
        raise UnsupportedModelError(f"unexpected UNet input channels {in_channels} (expected 4, or 9 for inpainting)")
    is_inpaint = in_channels == 9
    prediction, prediction_evidence = detect_prediction_type(state_dict, metadata, base)
    family = family_name(base, is_inpaint, prediction, metadata)
    if family is None:
        raise UnsupportedModelError(f"{base} inpainting checkpoints are not supported")
    return ModelFamilyInfo(
        family=family, prediction_type=prediction, is_inpaint=is_inpaint,
        rescale_zero_snr="ztsnr" in state_dict, base=base, unet_in_channels=in_channels,
        evidence=base_evidence + prediction_evidence,
    )


def reject_unsupported(state_dict: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Raise a clear error for EDM models, adapters and non-checkpoint files."""
    if "edm_mean" in state_dict or "edm_std" in state_dict or any(k.startswith("edm_vpred") for k in state_dict):
        raise UnsupportedModelError("EDM models (e.g. Playground v2.5) use a different noise schedule: not supported")
    architecture = metadata.get("modelspec.architecture", "")
    if "/" in architecture:  # "stable-diffusion-xl-v1-base/lora" etc.
        raise UnsupportedModelError(f"this file is an adapter ({architecture}), not a checkpoint")
    if UNET_PREFIX + "input_blocks.0.0.weight" in state_dict:
        return
    kind = detect_component_kind(state_dict)
    if kind == "checkpoint-diffusers":
        raise UnsupportedModelError("diffusers-keyed weights without LDM prefixes: load the diffusers folder instead")
    if kind != "unknown":
        raise UnsupportedModelError(f"this file is a {kind}, not a Stable Diffusion checkpoint")
    raise UnsupportedModelError("not a Stable Diffusion checkpoint (no 'model.diffusion_model.' UNet keys)")


def has_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in state_dict)


def detect_base(state_dict: Mapping[str, Tensor]) -> tuple[Base, tuple[str, ...]]:
    """SD1 / SD2 / SDXL / SDXL refiner from which text encoders the file holds."""
    if has_prefix(state_dict, SDXL_BIG_G_PREFIX):
        if not has_prefix(state_dict, SDXL_CLIP_L_PREFIX):
            raise UnsupportedModelError("SDXL checkpoint without its CLIP-L text encoder (embedders.0)")
        return "sdxl", ("OpenCLIP-bigG at conditioner.embedders.1 → SDXL base",)
    if has_prefix(state_dict, REFINER_BIG_G_PREFIX):
        return "sdxl-refiner", ("OpenCLIP-bigG at conditioner.embedders.0 → SDXL refiner",)
    if has_prefix(state_dict, SD2_TEXT_PREFIX):
        return "sd2", ("OpenCLIP-H at cond_stage_model.model → SD2.x",)
    if has_prefix(state_dict, SD1_TEXT_PREFIX):
        context_dim = cross_attention_width(state_dict)
        if context_dim == 1024:  # a SD2 UNet with a HF-format text encoder
            return "sd2", ("cross-attention width 1024 → SD2.x",)
        return "sd1", ("CLIP-L at cond_stage_model.transformer → SD1.x",)
    if has_prefix(state_dict, UNET_PREFIX + "label_emb."):
        raise UnsupportedModelError("SDXL UNet without text encoders: not a complete checkpoint")
    raise UnsupportedModelError("checkpoint without a text encoder (no cond_stage_model / conditioner keys)")


def cross_attention_width(state_dict: Mapping[str, Tensor]) -> int | None:
    """Last dim of the first cross-attention key projection (768 SD1, 1024 SD2, 2048 SDXL)."""
    for key, tensor in state_dict.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return int(tensor.shape[-1])
    return None


def detect_prediction_type(
    state_dict: Mapping[str, Tensor], metadata: Mapping[str, str], base: Base
) -> tuple[PredictionType, tuple[str, ...]]:
    """v-prediction from metadata or marker keys; SD2 non-inpaint defaults to 768-v (most SD2.x models)."""
    declared = metadata.get("modelspec.prediction_type") or metadata.get("modelspec.predict_key") \
        or metadata.get("prediction_type")
    if declared:
        value = declared.strip().lower()
        if value in ("v", "v_prediction", "v-prediction", "vpred", "v_pred"):
            return "v_prediction", (f"metadata prediction type '{declared}'",)
        if value in ("epsilon", "eps"):
            return "epsilon", (f"metadata prediction type '{declared}'",)
    architecture = metadata.get("modelspec.architecture", "")
    if architecture.endswith("-v") or architecture.endswith("768-v"):
        return "v_prediction", (f"modelspec.architecture {architecture}",)
    if metadata.get("ss_v_parameterization", "").lower() == "true":
        return "v_prediction", ("kohya ss_v_parameterization",)
    if "v_pred" in state_dict:
        return "v_prediction", ("marker key 'v_pred'",)
    if base == "sd2":
        return sd2_prediction_default(metadata)
    return "epsilon", ("default epsilon",)


def sd2_prediction_default(metadata: Mapping[str, str]) -> tuple[PredictionType, tuple[str, ...]]:
    """SD2 768-v vs 512-base cannot be told from weights: use size hints, else assume 768-v."""
    architecture = metadata.get("modelspec.architecture", "")
    if architecture.endswith("-512"):
        return "epsilon", (f"modelspec.architecture {architecture}",)
    native_size = metadata.get("sd_native_size") or metadata.get("modelspec.resolution", "").split("x")[0]
    if native_size.strip().isdigit():
        if int(native_size) >= 768:
            return "v_prediction", (f"native size {native_size} → SD2 768-v",)
        return "epsilon", (f"native size {native_size} → SD2 512-base",)
    global_step = metadata.get("global_step", "")
    if global_step.isdigit() and int(global_step) == 875000:  # the official 768-v run, as diffusers checks
        return "v_prediction", ("global_step 875000 → SD2 768-v",)
    return "v_prediction", ("SD2 default 768-v (override if the model is 512-base)",)


def family_name(base: Base, is_inpaint: bool, prediction: PredictionType, metadata: Mapping[str, str]) -> Family | None:
    if base == "sd1":
        return "sd15-inpaint" if is_inpaint else "sd15"
    if base == "sdxl":
        return "sdxl-inpaint" if is_inpaint else "sdxl"
    if base == "sdxl-refiner":
        return None if is_inpaint else "sdxl-refiner"
    if is_inpaint:  # SD2 inpainting (512, epsilon): SD2-base configs, in_channels read from the weights
        return "sd2-base"
    return "sd2-v" if prediction == "v_prediction" else "sd2-base"


def detect_component_kind(state_dict: Mapping[str, Tensor]) -> str:
    """What a single file holds: "checkpoint", "vae", "lora", "controlnet", "embedding",
    "checkpoint-diffusers" (diffusers-keyed UNet) or "unknown".

    A1111 ``models/VAE`` files have bare LDM VAE keys (``encoder.down.0.block.0…``), no prefix.
    """
    keys = list(state_dict)
    if UNET_PREFIX + "input_blocks.0.0.weight" in state_dict:
        return "checkpoint"
    if any(k.startswith(("lora_unet_", "lora_te", "lora.")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        return "lora"
    if any(k.startswith("control_model.") or k.startswith("controlnet_cond_embedding.") for k in keys) \
            or "input_hint_block.0.weight" in state_dict:
        return "controlnet"
    if "encoder.conv_in.weight" in state_dict and "decoder.conv_out.weight" in state_dict:
        return "vae"
    if any(k.startswith(VAE_PREFIX + "encoder.") for k in keys):
        return "vae"
    if "string_to_param" in state_dict or "emb_params" in state_dict or {"clip_l", "clip_g"} <= set(keys):
        return "embedding"
    if "conv_in.weight" in state_dict and any(k.startswith("down_blocks.") for k in keys):
        return "checkpoint-diffusers"
    return "unknown"


def strip_vae_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A VAE file's keys without ``first_stage_model.`` (some VAE files keep it)."""
    return {key.removeprefix(VAE_PREFIX): tensor for key, tensor in state_dict.items()
            if not key.startswith(("model_ema.", "loss."))}


def detect_family_from_diffusers_configs(model_index: Mapping[str, object], unet_config: Mapping[str, object],
                                         scheduler_config: Mapping[str, object]) -> ModelFamilyInfo:
    """Family of a diffusers folder from its ``model_index.json``, UNet and scheduler configs."""
    has_te1 = isinstance(model_index.get("text_encoder"), list) and model_index["text_encoder"][0] is not None
    has_te2 = isinstance(model_index.get("text_encoder_2"), list) and model_index["text_encoder_2"][0] is not None
    in_channels = int(unet_config.get("in_channels", 4))  # type: ignore[arg-type]
    if in_channels not in (4, 9):
        raise UnsupportedModelError(f"unexpected UNet input channels {in_channels} (expected 4, or 9 for inpainting)")
    is_inpaint = in_channels == 9
    if has_te2:
        base: Base = "sdxl" if has_te1 else "sdxl-refiner"
    elif unet_config.get("cross_attention_dim") == 1024:
        base = "sd2"
    else:
        base = "sd1"
    prediction: PredictionType = "v_prediction" if scheduler_config.get("prediction_type") == "v_prediction" \
        else "epsilon"
    family = family_name(base, is_inpaint, prediction, {})
    if family is None:
        raise UnsupportedModelError(f"{base} inpainting models are not supported")
    return ModelFamilyInfo(family=family, prediction_type=prediction, is_inpaint=is_inpaint,
                           rescale_zero_snr=bool(scheduler_config.get("rescale_betas_zero_snr", False)),
                           base=base, unet_in_channels=in_channels,
                           evidence=(f"diffusers folder: {base}, scheduler prediction {prediction}",))
