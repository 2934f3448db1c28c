"""A1111 infotext: the `parameters` text stored in every image (write, parse, map back to a request).

Layout (a1111-compat §4):
    <prompt, may span lines>
    Negative prompt: <negative, may span lines>      (omitted when empty)
    Steps: 20, Sampler: DPM++ 2M, ..., Version: sdwebui-0.1.0
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from modules.engine.request import GenerationRequest, HiresOptions

# A1111 parses Version with PEP 440 and enables back-compat hacks for old versions; "sdwebui-0.1.0" is not a
# valid PEP 440 version, so none of them trigger.
VERSION = "sdwebui-0.1.0"

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# Core keys, in the order A1111's create_infotext writes them; everything else follows in insertion order.
CORE_KEY_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "Tiling",
)
TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

# Schedule type labels, ids and aliases (a1111-compat §2); used to split legacy names like "DPM++ 2M Karras".
SCHEDULE_LABELS: dict[str, tuple[str, ...]] = {
    "Automatic": ("automatic",),
    "Uniform": ("uniform",),
    "Karras": ("karras",),
    "Exponential": ("exponential",),
    "Polyexponential": ("polyexponential",),
    "SGM Uniform": ("sgm_uniform", "SGMUniform"),
    "KL Optimal": ("kl_optimal",),
    "Align Your Steps": ("align_your_steps",),
    "Simple": ("simple",),
    "Normal": ("normal",),
    "DDIM": ("ddim",),
    "Beta": ("beta",),
}

# A1111 fills these in when an infotext lacks them (parse_generation_parameters).
PARSE_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}

# key = a word character then word characters, spaces, '-' or '/'; value = a JSON string or text up to a comma.
# Same expression as A1111's re_param_code, so both sides split a line identically.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_UNESCAPED_BRACKET_RE = re.compile(r"(?<!\\)[(\[]")


# ---------------------------------------------------------------------------------------------------- writing


def quote_value(value: Any) -> str:
    """A1111 `quote`: values holding ',', ':' or a newline become JSON strings so the line stays splittable.

    We also quote a value that starts with '"', which A1111 would otherwise unquote on reading.
    """
    text = str(value)
    if any(char in text for char in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def order_params(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Core keys in A1111 order, then other keys in insertion order, then Version and User."""
    core = [(key, params[key]) for key in CORE_KEY_ORDER if key in params]
    extra = [(key, value) for key, value in params.items() if key not in CORE_KEY_ORDER and key not in TRAILING_KEYS]
    trailing = [(key, params[key]) for key in TRAILING_KEYS if key in params]
    return core + extra + trailing


def format_params_line(params: Mapping[str, Any]) -> str:
    """`Key: value, Key: value, ...`; None and "" are omitted; a value equal to its key is written bare (A1111)."""
    parts = []
    for key, value in order_params(params):
        if value is None or value == "":
            continue
        parts.append(key if key == value else f"{key}: {quote_value(value)}")
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """The exact A1111 infotext: prompt, optional `Negative prompt:` line, parameter line; stripped."""
    negative_part = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_part}\n{format_params_line(params)}".strip()


# ---------------------------------------------------------------------------------------------------- parsing


def unquote_value(text: str) -> str:
    """Inverse of quote_value; text that is not a valid JSON string is returned unchanged (A1111 `unquote`)."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def split_prompt_lines(text: str) -> tuple[str, str, str]:
    """(prompt, negative prompt, parameter line). The last line is parameters only if it has >= 3 pairs."""
    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_RE.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), last_line


def parse_params_line(line: str) -> dict[str, Any]:
    """`Key: value` pairs; JSON strings unquoted; `WxH` values become `<key>-1` / `<key>-2`."""
    result: dict[str, Any] = {}
    for key, raw_value in _PARAM_RE.findall(line):
        value = unquote_value(raw_value)
        size = _SIZE_RE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


def split_sampler_schedule(name: str) -> tuple[str, str | None]:
    """Legacy "DPM++ 2M Karras" → ("DPM++ 2M", "Karras"); a name without a schedule suffix → (name, None).

    Matches the schedule's label, id or alias case-insensitively, longest first ("SGM Uniform" before "Uniform").
    """
    options = [(option, label) for label, aliases in SCHEDULE_LABELS.items() for option in (label, *aliases)]
    for option, label in sorted(options, key=lambda pair: -len(pair[0])):
        suffix = " " + option
        if len(name) > len(suffix) and name.lower().endswith(suffix.lower()):
            return name[: -len(suffix)], label
    return name, None


def old_hires_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """A1111's pre-1.0 automatic first-pass size: scale to ~512² pixels, round up to multiples of 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def restore_old_hires_params(result: dict[str, Any]) -> None:
    """Old infotexts wrote `First pass size` (first pass) and `Size` (final): convert to Size + Hires resize."""
    first_width, first_height = result.get("First pass size-1"), result.get("First pass size-2")
    if first_width is None or first_height is None:
        return
    first_width, first_height = int(first_width), int(first_height)
    width, height = int(result.get("Size-1", 512)), int(result.get("Size-2", 512))
    if first_width == 0 or first_height == 0:
        first_width, first_height = old_hires_first_pass_size(width, height)
    result["Size-1"], result["Size-2"] = str(first_width), str(first_height)
    result["Hires resize-1"], result["Hires resize-2"] = str(width), str(height)


def prompt_uses_emphasis(prompt: str) -> bool:
    """Whether A1111 would see weighted text: any unescaped '(' or '[' changes some token's weight."""
    return _UNESCAPED_BRACKET_RE.search(prompt) is not None


def add_parse_defaults(result: dict[str, Any]) -> None:
    """A1111 defaults for keys an infotext leaves out (a missing key means the old default was used)."""
    restore_old_hires_params(result)
    for key, value in PARSE_DEFAULTS.items():
        result.setdefault(key, value)
    if result["FP8 weight"] != "Disable":
        result.setdefault("Cache FP16 weight for LoRA", False)
    if prompt_uses_emphasis(result["Prompt"]):
        result.setdefault("Emphasis", "Original")


def parse_infotext(text: str, *, defaults: bool = True) -> dict[str, Any]:
    """A1111 parse_generation_parameters: {"Prompt", "Negative prompt", every key: str value}.

    Values stay strings as in A1111 (this dict is what /sdapi/v1/png-info returns); the defaults A1111 adds keep
    its types (e.g. `Masked area padding` 32). A legacy `Sampler: DPM++ 2M Karras` is split into Sampler and
    Schedule type. `defaults=False` returns only what the text holds.
    """
    prompt, negative_prompt, params_line = split_prompt_lines(text)
    result: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative_prompt}
    result.update(parse_params_line(params_line))
    if "Sampler" in result:
        sampler, schedule = split_sampler_schedule(result["Sampler"])
        if schedule is not None:
            result["Sampler"], result["Schedule type"] = sampler, schedule
    if defaults:
        add_parse_defaults(result)
    return result


# ---------------------------------------------------------------------------------------------------- to a request


def _to_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return int(number) if math.isfinite(number) else None


def _to_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# infotext key → (GenerationRequest field, converter)
_SIMPLE_FIELDS: dict[str, tuple[str, Any]] = {
    "Steps": ("steps", _to_int),
    "CFG scale": ("cfg_scale", _to_float),
    "Seed": ("seed", _to_int),
    "Size-1": ("width", _to_int),
    "Size-2": ("height", _to_int),
    "Variation seed": ("subseed", _to_int),
    "Variation seed strength": ("subseed_strength", _to_float),
    "Seed resize from-1": ("seed_resize_from_w", _to_int),
    "Seed resize from-2": ("seed_resize_from_h", _to_int),
    "Clip skip": ("clip_skip", _to_int),
}

_HIRES_MARKERS = ("Hires upscale", "Hires upscaler", "Hires steps")


def hires_from_infotext(parsed: Mapping[str, Any]) -> HiresOptions | None:
    """A HiresOptions when the infotext describes a hires pass (any Hires key or a non-zero Hires resize)."""
    resize_x = _to_int(parsed.get("Hires resize-1", 0)) or 0
    resize_y = _to_int(parsed.get("Hires resize-2", 0)) or 0
    if not any(key in parsed for key in _HIRES_MARKERS) and not (resize_x and resize_y):
        return None
    hires = HiresOptions(resize_x=resize_x, resize_y=resize_y)
    scale = _to_float(parsed.get("Hires upscale"))
    steps = _to_int(parsed.get("Hires steps"))
    denoising = _to_float(parsed.get("Denoising strength"))
    if scale is not None:
        hires.scale = scale
    if steps is not None:
        hires.steps = steps
    if denoising is not None:
        hires.denoising_strength = denoising
    if parsed.get("Hires upscaler"):
        hires.upscaler = str(parsed["Hires upscaler"])
    return hires


def checkpoint_candidates(parsed: Mapping[str, Any]) -> list[str]:
    """Ids to try for the checkpoint, best first: the short hash (exact file), then the model name."""
    return [str(parsed[key]) for key in ("Model hash", "Model") if parsed.get(key)]


def request_fields_from_infotext(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """Map a parse_infotext result to GenerationRequest field names; only keys the infotext provides.

    `denoising_strength` is returned only without a hires pass (img2img strength); with hires it goes into
    `hires`. `checkpoint` / `vae` are ids for the caller to resolve (see checkpoint_candidates).
    """
    fields_: dict[str, Any] = {}
    if "Prompt" in parsed:
        fields_["prompt"] = parsed["Prompt"]
    if "Negative prompt" in parsed:
        fields_["negative_prompt"] = parsed["Negative prompt"]
    for key, (name, convert) in _SIMPLE_FIELDS.items():
        value = convert(parsed[key]) if key in parsed else None
        if value is not None:
            fields_[name] = value
    if parsed.get("Sampler"):
        sampler, schedule = split_sampler_schedule(str(parsed["Sampler"]))
        fields_["sampler_name"] = sampler
        if schedule is not None:
            fields_["scheduler"] = schedule
    if parsed.get("Schedule type") and "scheduler" not in fields_:
        fields_["scheduler"] = str(parsed["Schedule type"])
    hires = hires_from_infotext(parsed)
    if hires is not None:
        fields_["hires"] = hires
    elif _to_float(parsed.get("Denoising strength")) is not None:
        fields_["denoising_strength"] = _to_float(parsed["Denoising strength"])
    candidates = checkpoint_candidates(parsed)
    if candidates:
        fields_["checkpoint"] = candidates[0]
    vae = parsed.get("VAE") or parsed.get("VAE hash")
    if vae:
        fields_["vae"] = str(vae)
    return fields_


def apply_infotext(request: GenerationRequest, text: str) -> GenerationRequest:
    """A copy of `request` with every field the pasted infotext provides (fields the request lacks are dropped)."""
    known = {field_.name for field_ in fields(GenerationRequest)}
    parsed_fields = request_fields_from_infotext(parse_infotext(text))
    return request.replace(**{name: value for name, value in parsed_fields.items() if name in known})
