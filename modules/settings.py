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


EXTENSION_KEY_SEPARATOR = "."  # extension settings are "<extension>.<key>", apart from A1111's names


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
    # Extra networks panel (cards in txt2img/img2img): what a LoRA card inserts when it has no preferred weight,
    # and the text put between the prompt and an inserted tag (A1111 names and defaults)
    extra_networks_default_multiplier: float = dataclasses.field(
        default=1.0, metadata={"label": "Default multiplier for extra networks"})
    extra_networks_add_text_separator: str = dataclasses.field(
        default=" ", metadata={"label": "Extra networks separator: text inserted before a card's text in the prompt"})
    # ControlNet (issue 6): A1111 extension names. Units per txt2img/img2img tab (UI, /controlnet/settings), and
    # loaded ControlNet models kept in memory (read at start-up, as the extension's "requires restart").
    control_net_unit_count: int = dataclasses.field(default=3, metadata={"label": "ControlNet unit number"})
    control_net_model_cache_size: int = dataclasses.field(
        default=2, metadata={"label": "ControlNet model cache size (requires restart)"})
    # ControlNet detected maps (issue 6, the extension's name and label): each unit's preprocessor output is shown
    # after the images in the txt2img/img2img gallery and returned by the API (shown, never saved); this drops them.
    control_net_no_detectmap: bool = dataclasses.field(
        default=False, metadata={"label": "Do not append detectmap to output"})

    # Extension settings (issue 7): "<extension>.<key>" → value, typed by the defaults the extension registers
    # (with_extension_defaults); kept while the extension is off; flat beside the A1111 names in config.yaml and
    # /options.
    extension_values: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"internal": True})

    def as_dict(self) -> dict[str, Any]:
        """Every setting, flat: the A1111 names, then the extension keys."""
        return {**{f.name: getattr(self, f.name) for f in setting_fields()}, **self.extension_values}

    def value(self, key: str) -> Any:
        """One setting by its A1111 name or "<extension>.<key>"."""
        if key in self.extension_values:
            return self.extension_values[key]
        if key in {f.name for f in setting_fields()}:
            return getattr(self, key)
        raise SettingsError(f"unknown setting {key!r}")

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A copy with `changes` applied; unknown keys or wrong types raise SettingsError."""
        values = {f.name: getattr(self, f.name) for f in setting_fields()}
        extension_values = dict(self.extension_values)
        for key, value in changes.items():
            if key in values:
                values[key] = _coerce(key, value, type(getattr(self, key)))
            elif key in extension_values:
                extension_values[key] = _coerce(key, value, type(extension_values[key]))
            else:
                raise SettingsError(f"unknown setting {key!r}")
        return Settings(**values, extension_values=extension_values)

    def with_extension_defaults(self, defaults: dict[str, Any]) -> Settings:
        """Register extension settings: each key keeps its saved value when that fits the default's type."""
        extension_values = dict(self.extension_values)
        for key, default in defaults.items():
            if EXTENSION_KEY_SEPARATOR not in key:
                raise SettingsError(f"extension setting {key!r} must be named '<extension>.<key>'")
            try:
                extension_values[key] = _coerce(key, extension_values.get(key, default), type(default))
            except SettingsError as error:
                log.warning("config.yaml: %s; using the default %r", error, default)
                extension_values[key] = default
        return dataclasses.replace(self, extension_values=extension_values)


def setting_fields() -> list[dataclasses.Field]:
    """The fields named like A1111's options (not the extension-settings store)."""
    return [f for f in fields(Settings) if not f.metadata.get("internal")]


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
        known = {f.name for f in setting_fields()}
        extension_values = {k: v for k, v in raw.items() if isinstance(k, str) and EXTENSION_KEY_SEPARATOR in k}
        unknown = sorted(set(raw) - known - set(extension_values))
        if unknown:
            log.warning("config.yaml: ignoring unknown settings %s", unknown)
        settings = Settings().updated({k: v for k, v in raw.items() if k in known})
        return dataclasses.replace(settings, extension_values=extension_values)
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
