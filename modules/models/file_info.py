"""What a model file is, from its safetensors header or diffusers configs only: no weights read, no pickle opened.

Used by the Models tab (family column), the downloader ("auto" folder from the file's content) and the merger
(family check before reading gigabytes).
"""
from __future__ import annotations

import json
from pathlib import Path

from modules.models.detect import (
    ModelFamilyInfo, UnsupportedModelError, detect_component_kind, detect_family, detect_family_from_diffusers_configs,
)
from modules.models.safetensors_stream import SafetensorsHeaderError, read_header

FAMILY_LABELS = {"sd15": "SD 1.5", "sd15-inpaint": "SD 1.5 inpaint", "sd2-v": "SD 2.x (768-v)",
                 "sd2-base": "SD 2.x (512)", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner",
                 "sdxl-inpaint": "SDXL inpaint"}
BASE_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner"}


def is_safetensors(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".safetensors"


def family_from_header(path: Path) -> ModelFamilyInfo:
    """Family of a single-file `.safetensors` checkpoint; raises UnsupportedModelError / SafetensorsHeaderError."""
    tensors, metadata = read_header(path)
    return detect_family(tensors, metadata)  # detect.py only reads key names and `.shape`


def family_of_folder(path: Path) -> ModelFamilyInfo:
    """Family of a diffusers folder from model_index.json and the UNet/scheduler configs."""
    def load(relative: str) -> dict:
        file = path / relative
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}

    return detect_family_from_diffusers_configs(load("model_index.json"), load("unet/config.json"),
                                                load("scheduler/scheduler_config.json"))


def family_of(path: Path) -> ModelFamilyInfo | None:
    """Family of a checkpoint file or folder when it can be told without loading; None for pickles/unreadable."""
    try:
        if path.is_dir():
            return family_of_folder(path)
        if is_safetensors(path):
            return family_from_header(path)
    except (UnsupportedModelError, SafetensorsHeaderError, OSError, ValueError):
        return None
    return None  # .ckpt/.pt: reading it means unpickling; the family shows once it is loaded


def component_kind_of(path: Path) -> str:
    """"checkpoint", "vae", "lora", "controlnet", "embedding", ... for a `.safetensors` file, else "unknown"."""
    if not is_safetensors(path):
        return "unknown"
    try:
        tensors, _ = read_header(path)
    except (SafetensorsHeaderError, OSError):
        return "unknown"
    return detect_component_kind(tensors)
