"""Write the trained components as one A1111-style ``.safetensors`` (LDM keys, fp16) with descriptive metadata."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modules.models.ldm_export import save_single_file, to_ldm_state_dict


def model_metadata(*, native_size: int, recipe: dict[str, Any], title: str, description: str,
                   prediction_type: str = "epsilon") -> dict[str, str]:
    """modelspec keys (architecture, prediction type, resolution) + our native size and the training recipe."""
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.implementation": "diffusers",
        "modelspec.prediction_type": prediction_type,
        "modelspec.resolution": f"{native_size}x{native_size}",
        "modelspec.title": title,
        "modelspec.description": description,
        "modelspec.license": "same as this project",
        "sd_native_size": str(native_size),
        "training_recipe": json.dumps(recipe, sort_keys=True),
        "trainer": "modules.training.train_default_model (this project)",
    }


def export_checkpoint(path: str | os.PathLike[str], unet: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                      metadata: dict[str, str]) -> Path:
    """Save the three components in fp16 under A1111/LDM key names; the app loads it like any user checkpoint."""
    state_dict = to_ldm_state_dict(unet, vae, text_encoder)
    return save_single_file(path, state_dict, metadata, dtype=torch.float16)
