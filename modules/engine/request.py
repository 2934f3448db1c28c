"""GenerationRequest: the one typed object that UI, API, scripts and extensions build for the engine."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

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


# A1111's resize_mode ids (API ints) and labels (UI radio), in order.
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# A1111's inpainting_fill ids and labels: what the masked area starts from.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")  # A1111's inpaint_full_res False / True
MASK_MODES = ("Inpaint masked", "Inpaint not masked")  # inpainting_mask_invert 0 / 1


@dataclass
class InpaintOptions:
    """What to repaint and how. The mask is white where the image is repainted (values > 128 count, as A1111)."""

    mask: Image.Image
    mask_blur_x: int = 4  # Gaussian blur of the mask edge, in pixels (A1111 "Mask blur"; the API may set x, y apart)
    mask_blur_y: int = 4
    invert: bool = False  # "Inpaint not masked": repaint what the mask leaves black
    masked_content: str = "original"  # one of MASKED_CONTENT
    full_res: bool = False  # "Only masked": repaint a crop around the mask at the full request size
    full_res_padding: int = 32  # pixels of context around the mask's box for "Only masked"


@dataclass
class Img2ImgOptions:
    """Image input of img2img, sketch (strokes already composited into the image) and inpaint jobs."""

    init_images: list[Image.Image]  # used cyclically across the batch, as A1111 does
    denoising_strength: float = 0.75
    resize_mode: int = 0  # index into RESIZE_MODES; the target size is the request's width × height
    inpaint: InpaintOptions | None = None
    initial_noise_multiplier: float = 1.0  # A1111 "Noise multiplier for img2img"
    source_label: str = "img2img"  # UI mode it came from ("img2img", "sketch", "inpaint", "outpaint", ...)


# The A1111 ControlNet extension's names (API ints index these).
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
CONTROL_RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
HR_OPTIONS = ("Both", "Low res only", "High res only")  # which passes of a hires-fix job a unit controls
MAX_CONTROLNET_UNITS = 8


@dataclass
class ControlNetUnit:
    """One enabled ControlNet unit (disabled units never reach the engine)."""

    model: str  # a ControlNet id from models/ControlNet (name, or title with hash)
    image: Image.Image | None = None  # None = the img2img input image
    mask: Image.Image | None = None  # optional: where the control applies (inpaint-style units)
    module: str = "none"  # preprocessor name ("none" = the image is already a control map)
    weight: float = 1.0
    guidance_start: float = 0.0  # fraction of the sampling steps where control starts / ends
    guidance_end: float = 1.0
    control_mode: int = 0  # index into CONTROL_MODES
    resize_mode: int = 1  # index into CONTROL_RESIZE_MODES
    processor_res: int = 512
    threshold_a: float | None = None  # preprocessor-specific (canny: low threshold); None = its default
    threshold_b: float | None = None
    pixel_perfect: bool = False  # processor_res follows the generation size
    hr_option: int = 0  # index into HR_OPTIONS; only matters with hires fix (without it the unit always runs)


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
    controlnet_no_detectmap: bool | None = None  # None = the control_net_no_detectmap setting
    hires: HiresOptions | None = None
    img2img: Img2ImgOptions | None = None  # set ⇒ an img2img / inpaint job (mode "img2img")
    controlnet_units: list[ControlNetUnit] = field(default_factory=list)
    extension_args: dict[str, Any] = field(default_factory=dict)  # always-on script / extension name → its args
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
        if self.img2img is not None:
            self._validate_img2img(self.img2img)
        if len(self.controlnet_units) > MAX_CONTROLNET_UNITS:
            raise RequestError(f"at most {MAX_CONTROLNET_UNITS} ControlNet units, got {len(self.controlnet_units)}")
        for index, unit in enumerate(self.controlnet_units):
            self._validate_controlnet_unit(index, unit)

    def _validate_controlnet_unit(self, index: int, unit: ControlNetUnit) -> None:
        where = f"ControlNet unit {index}"
        if not -2.0 <= unit.weight <= 2.0:
            raise RequestError(f"{where}: weight must be between -2 and 2, got {unit.weight}")
        if not 0.0 <= unit.guidance_start <= unit.guidance_end <= 1.0:
            raise RequestError(f"{where}: need 0 <= guidance_start <= guidance_end <= 1, "
                               f"got {unit.guidance_start}, {unit.guidance_end}")
        if unit.control_mode not in range(len(CONTROL_MODES)):
            raise RequestError(f"{where}: control_mode must be 0..2 ({', '.join(CONTROL_MODES)}), got {unit.control_mode}")
        if unit.resize_mode not in range(len(CONTROL_RESIZE_MODES)):
            raise RequestError(f"{where}: resize_mode must be 0..2 ({', '.join(CONTROL_RESIZE_MODES)}), "
                               f"got {unit.resize_mode}")
        if unit.hr_option not in range(len(HR_OPTIONS)):
            raise RequestError(f"{where}: hr_option must be 0..2 ({', '.join(HR_OPTIONS)}), got {unit.hr_option}")
        if not 64 <= unit.processor_res <= MAX_SIZE:
            raise RequestError(f"{where}: processor_res must be between 64 and {MAX_SIZE}, got {unit.processor_res}")
        if unit.image is None and self.img2img is None:
            raise RequestError(f"{where}: no control image (txt2img has no input image to fall back on)")

    def _validate_img2img(self, options: Img2ImgOptions) -> None:
        if not options.init_images:
            raise RequestError("img2img needs at least one init image")
        if not 0.0 <= options.denoising_strength <= 1.0:
            raise RequestError(f"denoising_strength must be between 0 and 1, got {options.denoising_strength}")
        if options.resize_mode not in range(len(RESIZE_MODES)):
            raise RequestError(f"resize_mode must be 0..{len(RESIZE_MODES) - 1} "
                               f"({', '.join(RESIZE_MODES)}), got {options.resize_mode}")
        if not 0.0 <= options.initial_noise_multiplier <= 1.5:
            raise RequestError(f"initial_noise_multiplier must be between 0 and 1.5, "
                               f"got {options.initial_noise_multiplier}")
        inpaint = options.inpaint
        if inpaint is None:
            return
        if inpaint.masked_content not in MASKED_CONTENT:
            raise RequestError(f"masked content must be one of {', '.join(MASKED_CONTENT)}, got {inpaint.masked_content!r}")
        for name in ("mask_blur_x", "mask_blur_y"):
            if not 0 <= getattr(inpaint, name) <= 64:
                raise RequestError(f"{name} must be between 0 and 64 pixels, got {getattr(inpaint, name)}")
        if not 0 <= inpaint.full_res_padding <= 256:
            raise RequestError(f"inpaint_full_res_padding must be between 0 and 256 pixels, got {inpaint.full_res_padding}")
        for index, image in enumerate(options.init_images):
            if image.size != inpaint.mask.size:
                raise RequestError(f"mask size {inpaint.mask.size[0]}x{inpaint.mask.size[1]} does not match init "
                                   f"image {index} size {image.size[0]}x{image.size[1]}")

    def _validate_hires(self, hires: HiresOptions) -> None:
        if not 0.0 <= hires.denoising_strength <= 1.0:
            raise RequestError(f"hires denoising_strength must be between 0 and 1, got {hires.denoising_strength}")
        if not 0 <= hires.steps <= MAX_STEPS:
            raise RequestError(f"hires steps must be between 0 and {MAX_STEPS}, got {hires.steps}")
        width, height = hires.target_size(self.width, self.height)
        if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
            raise RequestError(f"hires size {width}x{height} is outside {MIN_SIZE}..{MAX_SIZE}")
