"""ControlNet units from a pasted infotext (↙️, PNG Info → Send to txt2img/img2img). No gradio; tests call these.

Our engine writes the A1111 extension's entries (modules/engine/controlnet.py unit_infotext):
    ControlNet 0: "Module: canny, Model: name [hash], Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 512,
                   Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0,
                   Pixel Perfect: False, Control Mode: Balanced"
(hires-fix jobs add `, Hr Option: Both` / `Low res only` / `High res only`; the enum form
"HiResFixOption.LOW_RES_ONLY" is read too)
The extension's older (1.1.2xx) lower-case form is read too: "preprocessor: canny, model: ..., weight: 1,
starting/ending: (0, 1), resize mode: ..., pixel perfect: False, control mode: ...,
preprocessor params: (512, 100, 200)".

As the extension does: each unit the infotext names is enabled and gets its fields; the control image is not in the
infotext and stays as it is; units the infotext does not name are left alone. Sliders the module does not have get
their defaults (the extension leaves them out of the infotext). A value the UI cannot show (a model that is not
installed, a preprocessor without its weight files, a unit past the unit count, a malformed value) keeps the field's
current value and is named in the warnings.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modules.controlnet_units import HR_OPTION_ALIASES, RESIZE_MODE_ALIASES, choice_index
from modules.engine.infotext import parse_infotext
from modules.engine.preprocessors import PreprocessorError, find_preprocessor
from modules.engine.request import CONTROL_MODES, CONTROL_RESIZE_MODES, HR_OPTIONS, RequestError
from modules.ui.controlnet_form import SliderSetting, field_name, model_choices, module_choices, slider_settings
from modules.ui.controlnet_form import unit_count as configured_unit_count
from modules.ui.paste import PastedInfotext

if TYPE_CHECKING:
    from modules.app import App

UNIT_KEY = re.compile(r"^ControlNet (\d+)$")
WEIGHT_RANGE, GUIDANCE_RANGE = (0.0, 2.0), (0.0, 1.0)  # the unit sliders' ranges (modules/ui/controlnet.py)
# infotext key (lower case, current and 1.1.2xx names) → unit form field
KEY_FIELDS = {"module": "module", "preprocessor": "module", "model": "model", "weight": "weight",
              "resize mode": "resize_mode", "processor res": "processor_res", "threshold a": "threshold_a",
              "threshold b": "threshold_b", "guidance start": "guidance_start", "guidance end": "guidance_end",
              "pixel perfect": "pixel_perfect", "control mode": "control_mode", "hr option": "hr_option"}
LEGACY_TUPLES = {"starting/ending": ("guidance_start", "guidance_end"),
                 "preprocessor params": ("processor_res", "threshold_a", "threshold_b")}
SLIDER_FIELDS = ("processor_res", "threshold_a", "threshold_b")


@dataclass(frozen=True)
class PasteChoices:
    """What the unit controls of a tab can show."""

    unit_count: int
    models: Sequence[str]  # the Model dropdown's titles ("name [hash]"; "None" first)
    modules: Sequence[str]  # the Preprocessor dropdown's labels (preprocessors that can run)


def paste_choices(app: App) -> PasteChoices:
    return PasteChoices(configured_unit_count(app), model_choices(app), module_choices(app))


def with_controlnet_units(pasted: PastedInfotext, text: str, choices: PasteChoices) -> PastedInfotext:
    """`pasted` plus the unit fields (form names controlnet_<unit>_<field>) and warnings of the infotext's units."""
    values, warnings = controlnet_paste_values(parse_infotext(text, defaults=False), choices)
    return dataclasses.replace(pasted, form={**pasted.form, **values}, warnings=[*pasted.warnings, *warnings])


def controlnet_paste_values(parsed: Mapping[str, Any], choices: PasteChoices) -> tuple[dict[str, Any], list[str]]:
    """A parse_infotext result → (form values of every unit it names, warnings)."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, text in parsed.items():
        match = UNIT_KEY.match(str(key))
        if match is None:
            continue
        index = int(match.group(1))
        if index >= choices.unit_count:
            warnings.append(f"{key}: this tab has {choices.unit_count} ControlNet units (setting "
                            f"control_net_unit_count); not pasted")
            continue
        unit = unit_paste_values(key, str(text), choices, warnings)
        values.update({field_name(index, name): value for name, value in unit.items()})
    return values, warnings


def unit_paste_values(where: str, text: str, choices: PasteChoices, warnings: list[str]) -> dict[str, Any]:
    """One unit's text → its field values (enabled, module, model, sliders, ...); what cannot be shown is left out."""
    raw = unit_fields(split_unit_text(text))
    values: dict[str, Any] = {"enabled": True}
    module = _module(where, raw.get("module"), choices, warnings)
    if module is not None:
        values["module"] = module
        values.update(_slider_values(where, raw, slider_settings(module), warnings))
    if "model" in raw:
        model = match_model(raw["model"], choices.models)
        if model is None:
            warnings.append(f"{where}: ControlNet model {raw['model']!r} is not installed; kept the unit's model")
        else:
            values["model"] = model
    for name, (low, high) in (("weight", WEIGHT_RANGE), ("guidance_start", GUIDANCE_RANGE),
                              ("guidance_end", GUIDANCE_RANGE)):
        number = _number(where, name, raw, warnings)
        if number is not None:
            values[name] = min(max(number, low), high)
    values.update(_choice_values(where, raw, warnings))
    return values


def split_unit_text(text: str) -> dict[str, str]:
    """`Key: value, Key: (a, b), ...` → {lower-case key: value}; commas inside parentheses stay in the value."""
    items, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(text[start:position])
            start = position + 1
    items.append(text[start:])
    pairs = (item.partition(":") for item in items)
    return {key.strip().lower(): value.strip() for key, colon, value in pairs if colon and key.strip()}


def unit_fields(items: Mapping[str, str]) -> dict[str, str]:
    """Infotext keys → unit field names (raw strings); the legacy tuples are split into their fields."""
    raw = {KEY_FIELDS[key]: value for key, value in items.items() if key in KEY_FIELDS}
    for key, names in LEGACY_TUPLES.items():
        if key in items:
            parts = [part.strip() for part in items[key].strip("()").split(",")]
            raw.update({name: part for name, part in zip(names, parts) if part})
    return raw


def match_model(name: str, titles: Sequence[str]) -> str | None:
    """The installed title for an infotext's "name [hash]": the same title, else the same name (another version),
    else the same hash (a renamed file). Names come before hashes: files under 1 MiB all share the legacy hash."""
    wanted = name.strip()
    stem, _, hash_part = wanted.partition(" [")
    short_hash = hash_part.rstrip("]").lower() if wanted.endswith("]") else ""
    if wanted in titles:
        return wanted
    for title in titles:
        if title.partition(" [")[0].lower() == stem.lower():
            return title
    for title in titles:
        if short_hash and title.lower().endswith(f"[{short_hash}]"):
            return title
    return None


def _module(where: str, value: str | None, choices: PasteChoices, warnings: list[str]) -> str | None:
    """The Preprocessor dropdown's label for the infotext's module (id or label), if that preprocessor can run."""
    if value is None:
        return None
    try:
        label = find_preprocessor(value).label
    except PreprocessorError:
        warnings.append(f"{where}: preprocessor {value!r} is not available; kept the unit's preprocessor")
        return None
    if label not in choices.modules:
        warnings.append(f"{where}: preprocessor {label} needs annotator weight files (see the ControlNet panel); "
                        f"kept the unit's preprocessor")
        return None
    return label


def _slider_values(where: str, raw: Mapping[str, str], settings: Sequence[SliderSetting],
                   warnings: list[str]) -> dict[str, float]:
    """Resolution and thresholds the module shows, from the infotext (clamped to the slider), else the defaults.
    Below a slider's minimum means "unused" in the legacy params (-1): the default, as the extension reads it."""
    values: dict[str, float] = {}
    for name, setting in zip(SLIDER_FIELDS, settings):
        number = _number(where, name, raw, warnings) if setting.visible else None
        value = setting.value if number is None or number < setting.minimum else min(number, setting.maximum)
        values[name] = int(value) if name == "processor_res" else float(value)
    return values


def _number(where: str, name: str, raw: Mapping[str, str], warnings: list[str]) -> float | None:
    if name not in raw:
        return None
    try:
        return float(raw[name])
    except ValueError:
        warnings.append(f"{where}: {name.replace('_', ' ')} {raw[name]!r} is not a number; kept the current value")
        return None


def _choice_values(where: str, raw: Mapping[str, str], warnings: list[str]) -> dict[str, Any]:
    """Resize mode, control mode and hires-fix option (names any case, legacy/enum names, or indices) → the radios'
    labels; pixel perfect."""
    values: dict[str, Any] = {}
    for name, labels, aliases in (("resize_mode", CONTROL_RESIZE_MODES, RESIZE_MODE_ALIASES),
                                  ("control_mode", CONTROL_MODES, None), ("hr_option", HR_OPTIONS, HR_OPTION_ALIASES)):
        if name in raw:
            value: Any = int(raw[name]) if raw[name].isdigit() else raw[name]
            try:
                values[name] = labels[choice_index(where, name, value, labels, aliases)]
            except RequestError as error:
                warnings.append(f"{error}; kept the current value")
    if "pixel_perfect" in raw:
        flag = raw["pixel_perfect"].lower()
        if flag in ("true", "false"):
            values["pixel_perfect"] = flag == "true"
        else:
            warnings.append(f"{where}: pixel perfect {raw['pixel_perfect']!r} is not True/False; "
                            f"kept the current value")
    return values
