"""ControlNet units → control maps → residuals added to the UNet, A1111 ControlNet-extension semantics.

    prepare_control   per unit (weight 0 = no unit at all): input image (the unit's, or the img2img input; with
                      "Only masked" inpainting the same crop as the image) → preprocessor at the processor
                      resolution (pixel perfect: derived from the output size) → detected map; network loaded for
                      the resident UNet
    attach            for one pipeline call: the map fitted to that pass's size (hires passes refit the detected
                      map), and a forward pre-hook on the UNet that runs every active network on the UNet's own
                      inputs and passes their summed residuals as down/mid additional residuals; removed afterwards
The hook works for every pipeline the engine runs (txt2img, hires, img2img, inpaint, 9-channel inpainting UNets,
which feed the ControlNet only the 4 latent channels, as the extension does), so no ControlNet pipeline is needed.

Per unit, at UNet call i of n (A1111 counts sampling steps; diffusers' n counts the calls of second-order samplers):
    active    ⇔ start ≤ i / n ≤ end
    scales    Balanced: weight for each residual;  "My prompt is more important" and "ControlNet is more important":
              weight · 0.825^(12 − k) for residual k = 0..12 (13 for SD1/SD2; SDXL's 10 take the first 10)
    "ControlNet is more important" (and global-pooling models): residuals only on the conditional half of the
              CFG batch (diffusers puts the negative half first)
    hires pass: canny and mlsd units always use the soft scales (the extension forces it against artefacts)
    hires fix: a unit's "Hr Option" picks its passes: "Low res only" skips the hires pass, "High res only" the
              first one; without hires fix (and in img2img, which has no hires pass) every unit runs
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from modules.engine.img2img import plan_mask
from modules.engine.preprocessors import (PreprocessorSpec, find_preprocessor, fit_control_map,
                                          pixel_perfect_resolution, to_array)
from modules.engine.request import (CONTROL_MODES, CONTROL_RESIZE_MODES, HR_OPTIONS, ControlNetUnit,
                                    GenerationRequest)
from modules.engine.resize import RESIZE_AND_FILL, resize_image

if TYPE_CHECKING:
    from modules.engine.model import EngineModel

SOFT_BASE = 0.825  # lvmin's "magic number": 0.825^12 < 0.01
BALANCED, PROMPT_MORE_IMPORTANT, CONTROL_MORE_IMPORTANT = range(len(CONTROL_MODES))
BOTH_PASSES, LOW_RES_ONLY, HIGH_RES_ONLY = range(len(HR_OPTIONS))
HIRES_SOFT_MODULES = ("canny", "mlsd")
# xinsir union ControlNets: control type index by preprocessor family
UNION_CONTROL_TYPES = {"OpenPose": 0, "Depth": 1, "SoftEdge": 2, "Canny": 3, "Lineart": 3, "MLSD": 3, "NormalMap": 4}


class ControlNetUnitError(ValueError):
    """A unit cannot run (its model, preprocessor or image); the message names the unit."""


@dataclass(frozen=True)
class LoadedControlNet:
    network: nn.Module  # diffusers ControlNetModel / ControlNetUnionModel on the model's device and dtype
    title: str  # "name [hash]", as the extension lists and writes it


@dataclass(frozen=True)
class ControlNetServices:
    """What the engine needs from the app: networks (model manager) and preprocessors (annotator weights)."""

    load: Callable[[str, EngineModel], LoadedControlNet]
    title: Callable[[str], str]  # a model id → its "name [hash]" (no loading)
    preprocess: Callable[..., np.ndarray]  # (module, image, *, resolution, threshold_a, threshold_b, seed) → map


@dataclass
class PreparedUnit:
    index: int  # position in request.controlnet_units
    unit: ControlNetUnit
    spec: PreprocessorSpec
    network: nn.Module
    detected: np.ndarray  # H×W×3 uint8 detected map at the processor resolution
    mask: np.ndarray | None  # H×W uint8 region mask (unit.mask) at the input image's size


@dataclass
class ControlPlan:
    units: list[PreparedUnit]  # active units (weight ≠ 0)
    infotext: dict[str, str]  # "ControlNet N" → the extension's unit text
    unit_count: int
    hires: bool = False  # this plan is for the hires pass
    hires_fix: bool = False  # the job has a hires pass (the units' hr_option then picks their passes)

    def for_hires(self) -> ControlPlan:
        return dataclasses.replace(self, hires=True)

    def detected_maps(self) -> list[Image.Image | None]:
        """One per request unit (None for skipped ones): what the extension appends to the API's images."""
        maps: list[Image.Image | None] = [None] * self.unit_count
        for prepared in self.units:
            maps[prepared.index] = Image.fromarray(prepared.detected)
        return maps


# ---------------------------------------------------------------- preparation


def prepare_control(model: EngineModel, request: GenerationRequest, services: ControlNetServices | None,
                    seed: int) -> ControlPlan | None:
    """Preprocess and load every unit of the request; None when it has none."""
    if not request.controlnet_units:
        return None
    if services is None:
        raise ValueError("ControlNet units were given but this engine has no ControlNet models or preprocessors")
    units, infotext = [], {}
    hires_fix = has_hires_pass(request)
    for index, unit in enumerate(request.controlnet_units):
        try:
            text, prepared = prepare_unit(index, unit, model, request, services, seed, hires_fix=hires_fix)
        except ValueError as error:  # unknown model or module, missing weights, family mismatch, failed detector
            raise ControlNetUnitError(f"ControlNet unit {index}: {error}") from error
        infotext[f"ControlNet {index}"] = text
        if prepared is not None:
            units.append(prepared)
    return ControlPlan(units, infotext, len(request.controlnet_units), hires_fix=hires_fix)


def has_hires_pass(request: GenerationRequest) -> bool:
    return request.hires is not None and request.img2img is None


def runs_in_pass(unit: ControlNetUnit, *, hires_fix: bool, hires_pass: bool) -> bool:
    """The extension's HiResFixOption: without hires fix every unit runs; with it, "Low res only" units skip the
    hires pass and "High res only" units skip the first pass."""
    if not hires_fix:
        return True
    return unit.hr_option != (LOW_RES_ONLY if hires_pass else HIGH_RES_ONLY)


def prepare_unit(index: int, unit: ControlNetUnit, model: EngineModel, request: GenerationRequest,
                 services: ControlNetServices, seed: int, *,
                 hires_fix: bool = False) -> tuple[str, PreparedUnit | None]:
    """(its infotext, the prepared unit — None for weight 0: nothing is loaded, the images equal a run without)."""
    spec = find_preprocessor(unit.module)
    image = unit_input(unit, request)
    resolution = unit_resolution(unit, image.size, request.width, request.height)
    text = unit_infotext(unit, spec, services.title(unit.model), resolution, hires_fix=hires_fix)
    if unit.weight == 0:
        return text, None
    detected = services.preprocess(spec.name, to_array(image), resolution=resolution,
                                   threshold_a=unit.threshold_a, threshold_b=unit.threshold_b, seed=seed)
    mask = np.asarray(unit.mask.convert("L").resize(image.size)) if unit.mask is not None else None
    return text, PreparedUnit(index, unit, spec, services.load(unit.model, model).network, detected, mask)


def unit_input(unit: ControlNetUnit, request: GenerationRequest) -> Image.Image:
    """The unit's image, or the img2img input; "Only masked" inpainting sees the same crop as the sampler."""
    if unit.image is not None:
        return unit.image
    options = request.img2img
    if options is None:
        raise ValueError("a ControlNet unit without an image needs an img2img input image")
    image = options.init_images[0]
    if options.inpaint is None or not options.inpaint.full_res:
        return image
    mask = plan_mask(options.inpaint, image.size, request.width, request.height, options.resize_mode)
    if mask is None or mask.box is None:
        return image
    fitted = resize_image(image.convert("RGB"), unit.resize_mode, *mask.overlay.size)
    return resize_image(fitted.crop(mask.box), RESIZE_AND_FILL, request.width, request.height)


def unit_resolution(unit: ControlNetUnit, image_size: tuple[int, int], width: int, height: int) -> int:
    if unit.pixel_perfect:
        return pixel_perfect_resolution(image_size, width, height, unit.resize_mode)
    return unit.processor_res


def unit_infotext(unit: ControlNetUnit, spec: PreprocessorSpec, title: str, resolution: int, *,
                  hires_fix: bool = False) -> str:
    """`Module: canny, Model: name [hash], Weight: 1.0, Resize Mode: …, Processor Res: 512, Threshold A: 100.0,
    …, Control Mode: Balanced` (+ `, Hr Option: Both` in hires-fix jobs, where the option means something);
    fields of sliders the module does not have are left out, as the extension does."""
    fields: list[tuple[str, Any]] = [("Module", spec.label), ("Model", title), ("Weight", float(unit.weight)),
                                     ("Resize Mode", CONTROL_RESIZE_MODES[unit.resize_mode])]
    if spec.has_resolution:
        fields.append(("Processor Res", resolution))
    for name, value in zip(("Threshold A", "Threshold B"), spec.threshold_values(unit.threshold_a, unit.threshold_b)):
        fields.append((name, float(value)))  # type: ignore[arg-type]
    fields += [("Guidance Start", float(unit.guidance_start)), ("Guidance End", float(unit.guidance_end)),
               ("Pixel Perfect", unit.pixel_perfect), ("Control Mode", CONTROL_MODES[unit.control_mode])]
    if hires_fix:
        fields.append(("Hr Option", HR_OPTIONS[unit.hr_option]))
    return ", ".join(f"{name}: {value}" for name, value in fields)


# ---------------------------------------------------------------- the UNet hook


@dataclass
class ActiveUnit:
    """One unit ready for a pass: its network, control map tensor, schedule and scaling."""

    network: nn.Module
    hint: torch.Tensor  # [1, 3, H, W] in [0, 1]
    region: torch.Tensor | None  # [1, 1, H, W] in [0, 1]
    weight: float
    start: float
    end: float
    soft: bool
    conditional_only: bool
    union_type: int | None

    def scales(self, count: int) -> list[float]:
        if self.soft:
            return [self.weight * SOFT_BASE ** float(12 - k) for k in range(13)][:count]
        return [self.weight] * count

    def residuals(self, sample: torch.Tensor, timestep: Any, hidden: torch.Tensor, unet_kwargs: dict[str, Any],
                  guided: bool) -> list[torch.Tensor]:
        """Scaled residuals [down…, mid] for the UNet's input `sample` (batch: [uncond; cond] when guided)."""
        latents = sample[:, :self.network.config.in_channels]  # a 9-channel inpainting UNet: latent channels only
        batch = latents.shape[0]
        hint = self.hint.expand(batch, -1, -1, -1)
        extra: dict[str, Any] = {"added_cond_kwargs": unet_kwargs.get("added_cond_kwargs"),
                                 "timestep_cond": unet_kwargs.get("timestep_cond")}
        if self.union_type is not None:
            one_hot = torch.zeros(batch, self.network.config.num_control_type, device=hint.device, dtype=hint.dtype)
            one_hot[:, self.union_type] = 1
            extra.update(controlnet_cond=[hint], control_type=one_hot, control_type_idx=[self.union_type],
                         conditioning_scale=[1.0])  # union models take one scale per condition
        else:
            extra.update(controlnet_cond=hint, conditioning_scale=1.0)
        down, mid = self.network(latents, timestep, encoder_hidden_states=hidden, return_dict=False, **extra)
        outputs = [*down, mid]
        scaled = [residual * scale for residual, scale in zip(outputs, self.scales(len(outputs)))]
        if self.conditional_only and guided:
            mark = torch.cat([torch.zeros(batch // 2), torch.ones(batch - batch // 2)]).to(hint)[:, None, None, None]
            scaled = [residual * mark for residual in scaled]
        if self.region is not None:
            scaled = [residual * F.interpolate(self.region, size=residual.shape[-2:], mode="bilinear")
                      for residual in scaled]
        return scaled


class ControlHook:
    """UNet forward pre-hook: counts the pipeline's UNet calls and adds the active units' residuals."""

    def __init__(self, pipe: Any, units: list[ActiveUnit]) -> None:
        self.pipe, self.units, self.calls = pipe, units, 0

    def __call__(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        fraction = self.calls / max(int(self.pipe.num_timesteps), 1)
        self.calls += 1
        active = [unit for unit in self.units if unit.start <= fraction <= unit.end]
        if not active:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        hidden = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        total: list[torch.Tensor] | None = None
        for unit in active:
            residuals = unit.residuals(sample, timestep, hidden, kwargs, bool(self.pipe.do_classifier_free_guidance))
            total = residuals if total is None else [a + b for a, b in zip(total, residuals)]
        assert total is not None
        previous = kwargs.get("down_block_additional_residuals")
        down = total[:-1] if previous is None else [a + b for a, b in zip(previous, total[:-1])]
        previous_mid = kwargs.get("mid_block_additional_residual")
        mid = total[-1] if previous_mid is None else total[-1] + previous_mid
        return args, {**kwargs, "down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}


def active_units(control: ControlPlan, width: int, height: int, device: torch.device,
                 dtype: torch.dtype) -> list[ActiveUnit]:
    """The plan's units that run in this pass (hr_option), fitted to the pass's size."""
    units = []
    for prepared in control.units:
        unit = prepared.unit
        if not runs_in_pass(unit, hires_fix=control.hires_fix, hires_pass=control.hires):
            continue
        fitted = fit_control_map(prepared.detected, unit.resize_mode, width, height)
        hint = torch.from_numpy(fitted).permute(2, 0, 1)[None].to(device, dtype) / 255.0
        region = None
        if prepared.mask is not None:
            mask = fit_control_map(np.stack([prepared.mask] * 3, axis=2), unit.resize_mode, width, height)[:, :, 0]
            region = torch.from_numpy(mask)[None, None].to(device, dtype) / 255.0
        soft = unit.control_mode != BALANCED or (control.hires and prepared.spec.name in HIRES_SOFT_MODULES)
        pooled = bool(getattr(prepared.network.config, "global_pool_conditions", False))
        units.append(ActiveUnit(prepared.network, hint, region, unit.weight, unit.guidance_start, unit.guidance_end,
                                soft, unit.control_mode == CONTROL_MORE_IMPORTANT or pooled,
                                union_control_type(prepared)))
    return units


def union_control_type(prepared: PreparedUnit) -> int | None:
    if not hasattr(prepared.network.config, "num_control_type"):
        return None
    control_type = UNION_CONTROL_TYPES.get(prepared.spec.control_type)
    if control_type is None:
        raise ValueError(f"ControlNet unit {prepared.index}: a union ControlNet needs to know the kind of control "
                         f"map; choose the preprocessor of that kind (canny, depth, openpose, ...) instead of "
                         f"{prepared.spec.label}")
    return control_type


@contextlib.contextmanager
def attach(pipe: Any, control: ControlPlan | None, *, width: int, height: int) -> Iterator[None]:
    """Within the block, `pipe`'s UNet receives the plan's control; nothing happens without active units."""
    unet = pipe.unet
    units = active_units(control, width, height, unet.device, unet.dtype) if control is not None else []
    if not units:  # no units, or none for this pass: the UNet is not touched
        yield
        return
    hook = ControlHook(pipe, units)
    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()  # the shared UNet is left exactly as it was
