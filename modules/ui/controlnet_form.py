"""The ControlNet units of the txt2img / img2img forms as named values (→ ControlNetUnit), the choices the unit
controls offer, per-module slider settings, and the "run preprocessor" preview. No gradio here; tests call these.

Field names: "controlnet_<unit>_<field>" (unit 0..N-1, N = the control_net_unit_count setting).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.engine.preprocessors import (RESOLUTION, PreprocessorError, PreprocessorSpec, find_preprocessor,
                                          pixel_perfect_resolution, to_array)
from modules.engine.request import (CONTROL_MODES, CONTROL_RESIZE_MODES, HR_OPTIONS, MAX_CONTROLNET_UNITS,
                                    ControlNetUnit, RequestError)

if TYPE_CHECKING:
    from modules.app import App

NO_MODEL = "None"
UNIT_FIELDS = ("enabled", "upload_independent", "image", "module", "model", "weight", "guidance_start",
               "guidance_end", "control_mode", "resize_mode", "pixel_perfect", "processor_res", "threshold_a",
               "threshold_b", "hr_option")


def field_name(unit: int, name: str) -> str:
    return f"controlnet_{unit}_{name}"


def unit_count(app: App) -> int:
    return max(1, min(int(app.settings.control_net_unit_count), MAX_CONTROLNET_UNITS))


def default_unit_values() -> dict[str, Any]:
    unit = ControlNetUnit(model=NO_MODEL)
    return {"enabled": False, "upload_independent": False, "image": None, "module": "none", "model": NO_MODEL,
            "weight": unit.weight, "guidance_start": unit.guidance_start, "guidance_end": unit.guidance_end,
            "control_mode": CONTROL_MODES[unit.control_mode], "resize_mode": CONTROL_RESIZE_MODES[unit.resize_mode],
            "pixel_perfect": unit.pixel_perfect, "processor_res": unit.processor_res, "threshold_a": 100.0,
            "threshold_b": 200.0, "hr_option": HR_OPTIONS[unit.hr_option]}


def unit_values(values: Mapping[str, Any], unit: int) -> dict[str, Any]:
    return {name: values[field_name(unit, name)] for name in UNIT_FIELDS if field_name(unit, name) in values}


# ------------------------------------------------------------------------------------------------ choices


def module_choices(app: App) -> list[str]:
    """Labels of the preprocessors that can run (the others lack weight files)."""
    return [spec.label for spec in app.models.annotators.available()]


def missing_preprocessors_text(app: App) -> str:
    """Markdown: each preprocessor that needs weight files, what to download and where to put it."""
    annotators = app.models.annotators
    lines = [f"- **{status.spec.label}**: {', '.join(status.missing)}" for status in annotators.statuses()
             if not status.available]
    if not lines:
        return ""
    return (f"More preprocessors appear when their weight files (from the lllyasviel/Annotators repository) are "
            f"in `{annotators.folder}`:\n" + "\n".join(lines))


def model_choices(app: App, *, refresh: bool = False) -> list[str]:
    if refresh:
        app.models.controlnets.refresh()
    return [NO_MODEL, *app.models.controlnets.titles()]


@dataclass(frozen=True)
class SliderSetting:
    visible: bool
    label: str
    value: float
    minimum: float
    maximum: float
    step: float


def slider_settings(module: str) -> tuple[SliderSetting, SliderSetting, SliderSetting]:
    """(processor resolution, threshold A, threshold B) as the module shows them; unused ones hidden."""
    spec = find_preprocessor(module)
    resolution = SliderSetting(spec.has_resolution, RESOLUTION.name, RESOLUTION.value, RESOLUTION.minimum,
                               RESOLUTION.maximum, 1)
    thresholds = [SliderSetting(True, slider.name, slider.value, slider.minimum, slider.maximum, slider.step or 1)
                  for slider in spec.thresholds]
    hidden = SliderSetting(False, "Threshold", 64, 0, 255, 1)
    thresholds += [hidden] * (2 - len(thresholds))
    return resolution, thresholds[0], thresholds[1]


# ------------------------------------------------------------------------------------------------ units


def units_from_form(values: Mapping[str, Any]) -> list[ControlNetUnit]:
    """The enabled units of a form, in order (unit fields absent → no units). img2img forms have the
    "Upload independent control image" field; without it ticked a unit controls with the img2img input."""
    units = []
    index = 0
    while field_name(index, "enabled") in values:
        unit = unit_values(values, index)
        if unit.get("enabled"):
            units.append(unit_from_values(index, unit, img2img="upload_independent" in unit))
        index += 1
    return units


def unit_from_values(index: int, unit: Mapping[str, Any], *, img2img: bool) -> ControlNetUnit:
    where = f"ControlNet Unit {index}"
    model = str(unit.get("model") or NO_MODEL)
    if model == NO_MODEL:
        raise RequestError(f"{where} is enabled but has no model: choose one (or untick Enable)")
    try:
        spec = find_preprocessor(str(unit.get("module") or "none"))
    except PreprocessorError as error:
        raise RequestError(f"{where}: {error}") from None
    image = control_image(unit, img2img=img2img)
    if image is None and not img2img:
        raise RequestError(f"{where}: upload a control image")
    thresholds = [float(unit[name]) if name in unit and unit[name] is not None else None
                  for name in ("threshold_a", "threshold_b")][:len(spec.thresholds)] + [None, None]
    return ControlNetUnit(
        model=model, image=image, module=spec.name, weight=float(unit.get("weight", 1.0)),
        guidance_start=float(unit.get("guidance_start", 0.0)), guidance_end=float(unit.get("guidance_end", 1.0)),
        control_mode=_index(unit.get("control_mode"), CONTROL_MODES), resize_mode=_index(unit.get("resize_mode"),
                                                                                         CONTROL_RESIZE_MODES, 1),
        processor_res=int(unit.get("processor_res") or RESOLUTION.value), threshold_a=thresholds[0],
        threshold_b=thresholds[1], pixel_perfect=bool(unit.get("pixel_perfect")),
        hr_option=_index(unit.get("hr_option"), HR_OPTIONS))  # img2img forms have none: no hires pass there


def control_image(unit: Mapping[str, Any], *, img2img: bool) -> Image.Image | None:
    """The unit's uploaded image; in img2img only with "Upload independent control image" (else the input)."""
    if img2img and not unit.get("upload_independent"):
        return None
    image = unit.get("image")
    return image.convert("RGB") if isinstance(image, Image.Image) else None


def _index(label: Any, choices: tuple[str, ...], default: int = 0) -> int:
    return choices.index(label) if label in choices else default


# ------------------------------------------------------------------------------------------------ preview


def run_preview(app: App, unit: Mapping[str, Any], fallback: Image.Image | None, width: int,
                height: int) -> Image.Image:
    """💥: the unit's detected map (its image, else `fallback`: the img2img input), as generation would make it."""
    image = unit.get("image") if isinstance(unit.get("image"), Image.Image) else fallback
    if image is None:
        raise RequestError("Upload a control image first")
    spec: PreprocessorSpec = app.models.annotators.require(str(unit.get("module") or "none"))
    resize_mode = _index(unit.get("resize_mode"), CONTROL_RESIZE_MODES, 1)
    resolution = pixel_perfect_resolution(image.size, int(width), int(height), resize_mode) \
        if unit.get("pixel_perfect") else int(unit.get("processor_res") or RESOLUTION.value)
    thresholds = [unit.get(name) for name in ("threshold_a", "threshold_b")][:len(spec.thresholds)] + [None, None]
    detected = app.models.annotators.run(spec.name, to_array(image), resolution=resolution,
                                         threshold_a=thresholds[0], threshold_b=thresholds[1])
    return Image.fromarray(detected)
