"""A1111 ControlNet-extension unit dicts (API `alwayson_scripts.controlnet.args`) → ControlNetUnit, and the
always-on core script "ControlNet" that puts them on the request.

Accepted as the extension accepts them (API version 3): `enabled` (absent = a unit with a model counts), `image`
(base64 · {"image", "mask"} · [image, mask] · a list of those: the first), legacy `input_image`, `mask` /
`mask_image` / `effective_region_mask`, `module` (id or UI alias), `model` (title, stem, stem with another hash, or a
part of a stem), `weight`, `resize_mode` and `control_mode` (index or name, legacy names too), `processor_res` and
thresholds (below the slider's minimum = the module default, above its maximum = the maximum), `guidance_start`,
`guidance_end` (legacy `guidance`), `pixel_perfect`, `hr_option` ("Both", "Low res only", "High res only", the
enum forms "HiResFixOption.BOTH" / "LOW_RES_ONLY", any case, or 0..2); `low_vram` and other advanced keys are ignored.
Unknown models and modules, missing weights and bad values raise RequestError (HTTP 422) naming the unit.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.engine.images import decode_image_base64
from modules.engine.preprocessors import RESOLUTION, PreprocessorError, PreprocessorSpec, Slider
from modules.engine.request import (CONTROL_MODES, CONTROL_RESIZE_MODES, HR_OPTIONS, MAX_CONTROLNET_UNITS,
                                    ControlNetUnit, GenerationRequest, RequestError)
from modules.engine.result import GenerationResult
from modules.extensions.api import Script
from modules.models.controlnets import UnknownControlNetError

if TYPE_CHECKING:
    from modules.app import App
    from modules.extensions.api import AppView

log = logging.getLogger(__name__)

SCRIPT_NAME = "controlnet"
NO_MODEL = ("", "none")
MAX_API_WEIGHT = 2.0  # security notes §5: CN weight 0..2
RESIZE_MODE_ALIASES = {"inner fit (scale to fit)": "Crop and Resize", "outer fit (shrink to fit)": "Resize and Fill",
                       "scale to fit (inner fit)": "Crop and Resize", "envelope (outer fit)": "Resize and Fill",
                       "just resize (latent upscale)": "Just Resize"}
# the extension's HiResFixOption member names, with and without the class ("HiResFixOption.LOW_RES_ONLY")
HR_OPTION_ALIASES = {f"{prefix}{label.lower().replace(' ', '_')}": label
                     for label in HR_OPTIONS for prefix in ("", "hiresfixoption.")}
NO_DETECTMAP = "control_net_no_detectmap"  # the extension's setting, also accepted in API override_settings
IGNORED_KEYS = ("low_vram", "lowvram", "advanced_weighting", "union_control_type",
                "inpaint_crop_input_image", "batch_images", "ipadapter_input")


def unit_enabled(unit: Mapping[str, Any]) -> bool:
    """`enabled` when sent; else (older clients) a unit that names a model."""
    if "enabled" in unit:
        return bool(unit["enabled"])
    return str(unit.get("model") or "None").strip().lower() not in NO_MODEL


def enabled_unit_args(args: Sequence[Any]) -> list[Mapping[str, Any]]:
    """The unit dicts that become units, in order (None entries and disabled units are left out)."""
    if not isinstance(args, (list, tuple)):
        raise RequestError(f"alwayson_scripts.controlnet.args must be a list of units, got {type(args).__name__}")
    for index, unit in enumerate(args):
        if unit is not None and not isinstance(unit, Mapping):
            raise RequestError(f"ControlNet unit {index}: expected an object with unit fields, got {unit!r}")
    return [unit for unit in args if unit is not None and unit_enabled(unit)]


def controlnet_units_from_api(args: Sequence[Any], app: App) -> list[ControlNetUnit]:
    """API unit dicts → ControlNetUnits with decoded images, checked against the installed models and modules."""
    units = enabled_unit_args(args)
    if len(units) > MAX_CONTROLNET_UNITS:
        raise RequestError(f"at most {MAX_CONTROLNET_UNITS} ControlNet units, got {len(units)}")
    return [unit_from_api(index, unit, app) for index, unit in enumerate(units)]


def unit_from_api(index: int, data: Mapping[str, Any], app: App) -> ControlNetUnit:
    where = f"ControlNet unit {index}"
    unknown = sorted(set(data) & set(IGNORED_KEYS))
    if unknown:
        log.debug("%s: ignoring %s", where, unknown)
    spec = _module(where, data.get("module"), app)
    image, mask = unit_images(where, data)
    resolution, threshold_a, threshold_b = _sliders(spec, data)
    guidance_end = data.get("guidance_end", data.get("guidance", 1.0))
    return ControlNetUnit(
        model=_model(where, data.get("model"), app), image=image, mask=mask, module=spec.name,
        weight=_number(where, "weight", data.get("weight", 1.0), 0.0, MAX_API_WEIGHT),
        guidance_start=_number(where, "guidance_start", data.get("guidance_start", 0.0), 0.0, 1.0),
        guidance_end=_number(where, "guidance_end", guidance_end, 0.0, 1.0),
        control_mode=choice_index(where, "control_mode", data.get("control_mode", 0), CONTROL_MODES),
        resize_mode=choice_index(where, "resize_mode", data.get("resize_mode", 1), CONTROL_RESIZE_MODES,
                                 RESIZE_MODE_ALIASES),
        processor_res=resolution, threshold_a=threshold_a, threshold_b=threshold_b,
        pixel_perfect=bool(data.get("pixel_perfect", False)),
        hr_option=choice_index(where, "hr_option", data.get("hr_option", 0), HR_OPTIONS, HR_OPTION_ALIASES))


def _module(where: str, module: Any, app: App) -> PreprocessorSpec:
    if module is not None and not isinstance(module, str):
        raise RequestError(f"{where}: module must be a string, got {module!r}")
    try:
        return app.models.annotators.require(module or "none")
    except PreprocessorError as error:
        raise RequestError(f"{where}: {error}") from None


def _model(where: str, model: Any, app: App) -> str:
    if not isinstance(model, str) or model.strip().lower() in NO_MODEL:
        choices = ", ".join(app.models.controlnets.titles()) or "none installed (put models into models/ControlNet)"
        raise RequestError(f"{where}: no ControlNet model selected; available: {choices}")
    try:
        return app.models.controlnets.find(model).title
    except UnknownControlNetError as error:
        raise RequestError(f"{where}: {error}") from None


def unit_images(where: str, data: Mapping[str, Any]) -> tuple[Image.Image | None, Image.Image | None]:
    """(image, mask) from the extension's image shapes; empty strings mean none."""
    value = data.get("image", data.get("input_image"))
    mask_value = data.get("mask", data.get("mask_image")) or data.get("effective_region_mask")
    if isinstance(value, list) and value and isinstance(value[0], (Mapping, list)):
        value = value[0]  # a batch of images: the first (batch units are not supported)
    if isinstance(value, Mapping):
        value, mask_value = value.get("image"), value.get("mask") or mask_value
    elif isinstance(value, list):
        value, mask_value = (value + [None])[:2] if value else (None, mask_value)
    return _decode(where, "image", value), _decode(where, "mask", mask_value)


def _decode(where: str, name: str, value: Any) -> Image.Image | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestError(f"{where}: {name} must be a base64 image, got {type(value).__name__}")
    try:
        image = decode_image_base64(value)
    except ValueError as error:
        raise RequestError(f"{where}: {name}: {error}") from None
    return image.convert("L") if name == "mask" else image


def _number(where: str, name: str, value: Any, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{where}: {name} must be a number, got {value!r}")
    if not minimum <= value <= maximum:
        raise RequestError(f"{where}: {name} must be between {minimum} and {maximum}, got {value}")
    return float(value)


def choice_index(where: str, name: str, value: Any, choices: tuple[str, ...],
                 aliases: Mapping[str, str] | None = None) -> int:
    """An index or a name (any case; legacy aliases) → index into `choices`."""
    if isinstance(value, str):
        wanted = (aliases or {}).get(value.strip().lower(), value).strip().lower()
        for index, choice in enumerate(choices):
            if choice.lower() == wanted:
                return index
    elif isinstance(value, int) and not isinstance(value, bool):
        if value == 3 and name == "resize_mode":  # A1111's "Just resize (latent upscale)" → Just Resize
            return 0
        if 0 <= value < len(choices):
            return value
    raise RequestError(f"{where}: {name} must be one of {', '.join(choices)} (or 0..{len(choices) - 1}), "
                       f"got {value!r}")


def slider_value(slider: Slider, value: Any) -> float | None:
    """The extension's bound check: missing or below the minimum → None (the default), above the maximum → max."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if value < slider.minimum:
        return None
    return float(min(value, slider.maximum))


def _sliders(spec: PreprocessorSpec, data: Mapping[str, Any]) -> tuple[int, float | None, float | None]:
    resolution = slider_value(RESOLUTION, data.get("processor_res"))
    thresholds = [slider_value(slider, data.get(key))
                  for slider, key in zip(spec.thresholds, ("threshold_a", "threshold_b"))] + [None, None]
    return int(resolution) if resolution is not None else int(RESOLUTION.value), thresholds[0], thresholds[1]


def detected_maps_to_send(alwayson_scripts: Mapping[str, Any], result: GenerationResult) -> list[Image.Image]:
    """The detected maps the API appends to `images` (units with save_detected_map, the default)."""
    payload = next((value for key, value in (alwayson_scripts or {}).items() if key.lower() == SCRIPT_NAME), None)
    if payload is None or not result.detected_maps:
        return []
    args = payload.get("args", []) if isinstance(payload, Mapping) else payload
    units = enabled_unit_args(args)
    return [image for unit, image in zip(units, result.detected_maps)
            if image is not None and unit.get("save_detected_map", True)]


class ControlNetScript(Script):
    """Always-on "ControlNet" (API name "controlnet"): its args are the extension's unit dicts. The tabs build
    their units themselves (modules/ui/controlnet.py), so this script shows no inputs of its own."""

    title = "ControlNet"
    always_on = True

    def __init__(self, app: App) -> None:
        self._app = app

    def ui(self, ctx: Any) -> list[Any]:
        return []

    def parse_args(self, values: Sequence[Any], app: AppView) -> list[ControlNetUnit]:
        return controlnet_units_from_api(values, self._app)

    def process(self, request: GenerationRequest, args: list[ControlNetUnit]) -> GenerationRequest:
        return request.replace(controlnet_units=list(args))
