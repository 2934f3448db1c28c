"""GenerationRequest: the one typed object that UI, API, scripts and extensions build for the engine."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MAX_BATCH_SIZE = 8
MAX_STEPS = 150
MIN_SIZE, MAX_SIZE = 64, 2048


class RequestError(ValueError):
    """A request field is invalid; the message names the field and says what is allowed."""


@dataclass
class HiresOptions:
    """A1111 'Hires. fix': a second img2img pass at a larger size."""

    scale: float = 2.0
    upscaler: str = "Latent"
    steps: int = 0  # 0 = same as the first pass
    denoising_strength: float = 0.7
    resize_x: int = 0  # when both set, resize to this size instead of scaling
    resize_y: int = 0

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Second-pass size, snapped to multiples of 8 (A1111 rounds the same way)."""
        if self.resize_x and self.resize_y:
            return self.resize_x // 8 * 8, self.resize_y // 8 * 8
        return int(width * self.scale) // 8 * 8, int(height * self.scale) // 8 * 8


@dataclass
class GenerationRequest:
    """Everything one generation job needs. Defaults match the A1111 UI."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int | None = None  # None = the CLIP_stop_at_last_layers setting
    checkpoint: str | None = None  # None = the loaded checkpoint; else any checkpoint id
    vae: str | None = None  # None = the sd_vae setting
    hires: HiresOptions | None = None
    save_images: bool = True
    save_grid: bool = True
    mode: str = "txt2img"
    extra_params: dict[str, Any] = field(default_factory=dict)  # extra infotext key/values from scripts

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise RequestError for values the engine cannot run; called at every boundary."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
                raise RequestError(f"{name} must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE}, got {value}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise RequestError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {self.batch_size}")
        if not 1 <= self.n_iter <= 100:
            raise RequestError(f"n_iter (batch count) must be between 1 and 100, got {self.n_iter}")
        if not 0.0 <= self.cfg_scale <= 30.0:
            raise RequestError(f"cfg_scale must be between 0 and 30, got {self.cfg_scale}")
        if not 0.0 <= self.subseed_strength <= 1.0:
            raise RequestError(f"subseed_strength must be between 0 and 1, got {self.subseed_strength}")
        if self.clip_skip is not None and not 1 <= self.clip_skip <= 12:
            raise RequestError(f"clip_skip must be between 1 and 12, got {self.clip_skip}")
        if self.hires is not None:
            self._validate_hires(self.hires)

    def _validate_hires(self, hires: HiresOptions) -> None:
        if not 0.0 <= hires.denoising_strength <= 1.0:
            raise RequestError(f"hires denoising_strength must be between 0 and 1, got {hires.denoising_strength}")
        if not 0 <= hires.steps <= MAX_STEPS:
            raise RequestError(f"hires steps must be between 0 and {MAX_STEPS}, got {hires.steps}")
        width, height = hires.target_size(self.width, self.height)
        if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
            raise RequestError(f"hires size {width}x{height} is outside {MIN_SIZE}..{MAX_SIZE}")
