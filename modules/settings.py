"""Typed settings with A1111 names and defaults, persisted atomically to config.yaml."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting name is unknown or its value has the wrong type."""


@dataclass
class Settings:
    """User-changeable options. Field names are A1111's option keys (the API exposes them as-is)."""

    sd_model_checkpoint: str = ""
    sd_vae: str = "Automatic"
    sd_checkpoints_limit: int = 2
    CLIP_stop_at_last_layers: int = 1
    emphasis: str = "Original"
    samples_save: bool = True
    samples_format: str = "png"
    grid_save: bool = True
    grid_only_if_multiple: bool = True
    return_grid: bool = True
    save_to_dirs: bool = True
    enable_pnginfo: bool = True
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = 3
    send_seed: bool = True
    send_size: bool = True
    outdir_txt2img_samples: str = ""
    outdir_txt2img_grids: str = ""
    outdir_img2img_samples: str = ""
    outdir_img2img_grids: str = ""
    outdir_extras_samples: str = ""
    img2img_fix_steps: bool = False  # A1111: run exactly `steps` steps in img2img instead of steps × denoising
    initial_noise_multiplier: float = 1.0
    img2img_color_correction: bool = False
    inpainting_mask_weight: float = 1.0  # inpainting checkpoints: how much of the source conditions img2img
    mask_apply_overlay: bool = True  # paste the result back over the source through the blurred mask
    ESRGAN_tile: int = 192  # upscaler tile size in pixels (0 = no tiling)
    ESRGAN_tile_overlap: int = 8
    upscaler_for_img2img: str = "None"  # resize modes that enlarge use this upscaler (None = Lanczos)
    save_init_img: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A copy with `changes` applied; unknown keys or wrong types raise SettingsError."""
        known = {f.name: f for f in fields(self)}
        values = self.as_dict()
        for key, value in changes.items():
            if key not in known:
                raise SettingsError(f"unknown setting {key!r}")
            values[key] = _coerce(key, value, type(getattr(self, key)))
        return Settings(**values)


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(f"setting {key!r} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or int(value) != value:
            raise SettingsError(f"setting {key!r} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SettingsError(f"setting {key!r} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise SettingsError(f"setting {key!r} must be a string, got {value!r}")
        return value
    return value


def load_settings(path: Path) -> Settings:
    """Read config.yaml; a broken file is kept aside as .bak and defaults are used (never lose the user's file)."""
    if not path.exists():
        return Settings()
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
        known = {f.name for f in fields(Settings)}
        unknown = sorted(set(raw) - known)
        if unknown:
            log.warning("config.yaml: ignoring unknown settings %s", unknown)
        return Settings().updated({k: v for k, v in raw.items() if k in known})
    except Exception as error:  # a corrupt file must not stop the app from starting
        backup = path.with_suffix(".yaml.bak")
        os.replace(path, backup)
        log.error("config.yaml could not be read (%s); moved to %s, using defaults", error, backup)
        return Settings()


def save_settings(settings: Settings, path: Path) -> None:
    """Write config.yaml atomically: a temp file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(OmegaConf.create(settings.as_dict()))
    handle, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
