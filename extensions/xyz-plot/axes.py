"""The X/Y/Z plot's axis types, in A1111 1.10's order.

API clients send an axis type as an index into A1111's list *as filtered for the tab* (txt2img drops the img2img-only
types and vice versa), so the whole list is kept — with the types this server cannot vary marked unsupported
(`apply` None): asking for one is an HTTP 422 that names it, never a silently wrong grid.
"""
from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modules.extensions.api import IMG2IMG, TABS, TXT2IMG, AppView, GenerationRequest, RequestError

from .values import format_number

# (cell request, this cell's value, all values of the axis) → the cell request with the value applied
Apply = Callable[[GenerationRequest, Any, Sequence[Any]], GenerationRequest]
# the axis's values as typed → canonical values (e.g. sampler names as listed); RequestError for unknown ones
Resolve = Callable[[list[Any], AppView], list[Any]]


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str = "str"  # "int", "float", "str" or "permutation": how values parse (values.parse_values)
    apply: Apply | None = None  # None: this server cannot vary it (kept for A1111's index order)
    tabs: tuple[str, ...] = TABS  # where A1111 lists it (this decides the indices)
    works_in: tuple[str, ...] = TABS  # where this server can apply it
    cost: float = 0.0  # slow-to-switch axes (checkpoint, VAE) run in the outer loops
    choices: Callable[[AppView], list[str]] | None = None  # the values dropdown's choices
    resolve: Resolve | None = None
    label_style: str = "labelled"  # "labelled" (Steps: 20), "value", "basename", "join", "nothing"

    def supported_in(self, tab: str) -> bool:
        return self.apply is not None and tab in self.works_in

    def format(self, value: Any) -> str:
        if self.label_style == "nothing":
            return ""
        if self.label_style == "join":
            return ", ".join(value)
        if self.label_style == "basename":
            return posixpath.basename(str(value).replace("\\", "/"))
        text = format_number(value)
        return text if self.label_style == "value" else f"{self.label}: {text}"


# ---------------------------------------------------------------------------------------------- appliers


def field_setter(name: str) -> Apply:
    return lambda request, value, _values: request.replace(**{name: value})


def apply_prompt_sr(request: GenerationRequest, value: str, values: Sequence[str]) -> GenerationRequest:
    """A1111 Prompt S/R: the first value is searched for and replaced by this cell's value, in both prompts."""
    search = values[0]
    return request.replace(prompt=request.prompt.replace(search, value),
                           negative_prompt=request.negative_prompt.replace(search, value))


def apply_prompt_order(request: GenerationRequest, order: Sequence[str], _values: Sequence[Any]) -> GenerationRequest:
    """A1111 Prompt order: the listed tokens swap places in the prompt, in this cell's order."""
    prompt = request.prompt
    found = sorted((prompt.find(token), token) for token in order)
    parts = []
    for _position, token in found:
        index = prompt.find(token)
        parts.append(prompt[:index])
        prompt = prompt[index + len(token):]
    rebuilt = "".join(part + token for part, token in zip(parts, order))
    return request.replace(prompt=rebuilt + prompt)


def apply_size(request: GenerationRequest, value: str, _values: Sequence[str]) -> GenerationRequest:
    width, height = parse_size(value)
    return request.replace(width=width, height=height)


def parse_size(value: str) -> tuple[int, int]:
    width, separator, height = str(value).lower().partition("x")
    try:
        if not separator:
            raise ValueError
        return int(width.strip()), int(height.strip())
    except ValueError:
        raise RequestError(f"Size values look like 512x768, got {value!r}") from None


def _hires(request: GenerationRequest, what: str) -> Any:
    if request.hires is None:
        raise RequestError(f"the {what} axis needs Hires. fix enabled (enable_hr)")
    return request.hires


def hires_setter(name: str, what: str) -> Apply:
    def apply(request: GenerationRequest, value: Any, _values: Sequence[Any]) -> GenerationRequest:
        return request.replace(hires=dataclasses.replace(_hires(request, what), **{name: value}))
    return apply


def apply_denoising(request: GenerationRequest, value: float, _values: Sequence[float]) -> GenerationRequest:
    """img2img: its denoising strength; txt2img: the hires pass's (A1111's one `denoising_strength` field)."""
    if request.img2img is not None:
        return request.replace(img2img=dataclasses.replace(request.img2img, denoising_strength=value))
    return request.replace(hires=dataclasses.replace(_hires(request, "Denoising"), denoising_strength=value))


def apply_noise_multiplier(request: GenerationRequest, value: float, _values: Sequence[float]) -> GenerationRequest:
    if request.img2img is None:
        raise RequestError("the Initial noise multiplier axis only applies to img2img")
    return request.replace(img2img=dataclasses.replace(request.img2img, initial_noise_multiplier=value))


# ------------------------------------------------------------------------------------------------ resolvers


def _normalised(text: str) -> str:
    return "".join(char for char in text.lower() if char.isalnum())


def pick_from(listing: Callable[[AppView], list[str]], what: str) -> Resolve:
    """Values matched to a listing case-insensitively (ignoring spaces, '_' and '-': "sgm_uniform" = "SGM Uniform")."""
    def resolve(values: list[Any], app: AppView) -> list[Any]:
        known = listing(app)
        by_key = {_normalised(name): name for name in known}
        resolved = []
        for value in values:
            match = by_key.get(_normalised(str(value)))
            if match is None:
                raise RequestError(f"unknown {what} {value!r}; available: {', '.join(known)}")
            resolved.append(match)
        return resolved
    return resolve


def resolve_checkpoints(values: list[Any], app: AppView) -> list[Any]:
    return [app.find_checkpoint(str(value)) for value in values]


def resolve_vaes(values: list[Any], app: AppView) -> list[Any]:
    """Exact name (any case), else A1111's rule: the shortest VAE name containing the value."""
    known = app.vae_names()
    resolved = []
    for value in values:
        text = str(value).strip().lower()
        exact = [name for name in known if name.lower() == text]
        partial = sorted((name for name in known if text in name.lower()), key=len)
        if not exact and not partial:
            raise RequestError(f"unknown VAE {value!r}; available: {', '.join(known)}")
        resolved.append((exact or partial)[0])
    return resolved


def resolve_sizes(values: list[Any], _app: AppView) -> list[Any]:
    return [f"{width}x{height}" for width, height in (parse_size(value) for value in values)]


# -------------------------------------------------------------------------------------------------- the list


def _unsupported(label: str, kind: str = "float", tabs: tuple[str, ...] = TABS) -> Axis:
    return Axis(label, kind, None, tabs)


AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", lambda request, _value, _values: request, label_style="nothing"),
    Axis("Seed", "int", field_setter("seed")),
    Axis("Var. seed", "int", field_setter("subseed")),
    Axis("Var. strength", "float", field_setter("subseed_strength")),
    Axis("Steps", "int", field_setter("steps")),
    Axis("Hires steps", "int", hires_setter("steps", "Hires steps"), tabs=(TXT2IMG,)),
    Axis("CFG Scale", "float", field_setter("cfg_scale")),
    _unsupported("Image CFG Scale", tabs=(IMG2IMG,)),
    Axis("Prompt S/R", "str", apply_prompt_sr, label_style="value"),
    Axis("Prompt order", "permutation", apply_prompt_order, label_style="join"),
    Axis("Sampler", "str", field_setter("sampler_name"), tabs=(TXT2IMG,), choices=lambda app: app.sampler_names(),
         resolve=pick_from(lambda app: app.sampler_names(), "sampler"), label_style="value"),
    _unsupported("Hires sampler", "str", tabs=(TXT2IMG,)),
    Axis("Sampler", "str", field_setter("sampler_name"), tabs=(IMG2IMG,), choices=lambda app: app.sampler_names(),
         resolve=pick_from(lambda app: app.sampler_names(), "sampler"), label_style="value"),
    Axis("Checkpoint name", "str", field_setter("checkpoint"), cost=1.0,
         choices=lambda app: sorted(app.checkpoint_titles(), key=str.casefold), resolve=resolve_checkpoints,
         label_style="basename"),
    _unsupported("Negative Guidance minimum sigma"),
    _unsupported("Sigma Churn"),
    _unsupported("Sigma min"),
    _unsupported("Sigma max"),
    _unsupported("Sigma noise"),
    Axis("Schedule type", "str", field_setter("scheduler"), choices=lambda app: app.scheduler_names(),
         resolve=pick_from(lambda app: app.scheduler_names(), "schedule type")),
    _unsupported("Schedule min sigma"),
    _unsupported("Schedule max sigma"),
    _unsupported("Schedule rho"),
    _unsupported("Beta schedule alpha"),
    _unsupported("Beta schedule beta"),
    _unsupported("Eta"),
    Axis("Clip skip", "int", field_setter("clip_skip")),
    Axis("Denoising", "float", apply_denoising),
    Axis("Initial noise multiplier", "float", apply_noise_multiplier, works_in=(IMG2IMG,)),
    _unsupported("Extra noise"),
    Axis("Hires upscaler", "str", hires_setter("upscaler", "Hires upscaler"), tabs=(TXT2IMG,),
         choices=lambda app: app.upscaler_names(), resolve=pick_from(lambda app: app.upscaler_names(), "upscaler")),
    _unsupported("Cond. Image Mask Weight", tabs=(IMG2IMG,)),
    Axis("VAE", "str", field_setter("vae"), cost=0.7, choices=lambda app: app.vae_names(), resolve=resolve_vaes),
    _unsupported("Styles", "str"),
    _unsupported("UniPC Order", "int"),
    _unsupported("Face restore", "str"),
    _unsupported("Token merging ratio"),
    _unsupported("Token merging ratio high-res"),
    _unsupported("Always discard next-to-last sigma", "str"),
    _unsupported("SGM noise multiplier", "str"),
    _unsupported("Refiner checkpoint", "str"),
    _unsupported("Refiner switch at"),
    _unsupported("RNG source", "str"),
    _unsupported("FP8 mode", "str"),
    Axis("Size", "str", apply_size, resolve=resolve_sizes),
)


def axes_for(tab: str) -> list[Axis]:
    """A1111's `current_axis_options`: the list an axis-type index refers to in this tab."""
    return [axis for axis in AXES if tab in axis.tabs]


def axis_index(tab: str, label: str) -> int:
    for index, axis in enumerate(axes_for(tab)):
        if axis.label.lower() == label.strip().lower():
            return index
    raise RequestError(f"X/Y/Z plot has no axis type {label!r}")
