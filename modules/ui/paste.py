"""An infotext (PNG Info, or text pasted into the prompt box) → values for the txt2img form and the top bar.

Pure (no gradio). Values the UI cannot show (an unknown sampler, a checkpoint that is not installed) are left
out and named in `warnings`, so the user sees why a field kept its old value.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modules.engine.infotext import checkpoint_candidates, parse_infotext, request_fields_from_infotext
from modules.engine.request import HiresOptions
from modules.engine.samplers import find_sampler, find_schedule
from modules.models.registry import ModelFile, UnknownModelError, find_model


@dataclass
class PastedInfotext:
    form: dict[str, Any]  # txt2img field name → value
    checkpoint: str | None = None  # title to select in the top bar; None = keep the current one
    vae: str | None = None  # VAE choice; None = keep
    clip_skip: int | None = None  # the CLIP_stop_at_last_layers setting; None = keep
    warnings: list[str] = field(default_factory=list)


def looks_like_infotext(text: str) -> bool:
    """A1111's paste button only parses text that has a parameters line ('Steps: N, ...')."""
    return any(line.strip().startswith("Steps:") for line in text.splitlines())


def infotext_to_paste(prompt: str, last_infotext: str) -> str:
    """What ↙️ reads: an empty prompt means the last generation's parameters (A1111 reads params.txt)."""
    if not prompt.strip():
        return last_infotext
    return prompt if looks_like_infotext(prompt) else ""


def _sampler_values(fields: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "sampler_name" in fields:
        spec = find_sampler(str(fields["sampler_name"]))
        if spec is None:
            warnings.append(f"sampler {fields['sampler_name']!r} is not available; kept the current sampler")
        else:
            values["sampler_name"] = spec.name
    if "scheduler" in fields:
        schedule = find_schedule(str(fields["scheduler"]))
        if schedule is None:
            warnings.append(f"schedule type {fields['scheduler']!r} is not available; kept the current one")
        else:
            values["scheduler"] = schedule.label
    return values


def _variation_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    names = ("subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")
    values = {name: fields[name] for name in names if name in fields}
    # A1111 ticks 'Extra' when the infotext has a variation seed or a seed resize
    values["show_extra"] = "subseed" in fields or "seed_resize_from_w" in fields
    return values


def _hires_values(hires: HiresOptions | None, upscalers: Sequence[str], warnings: list[str]) -> dict[str, Any]:
    if hires is None:
        return {"enable_hr": False}
    values: dict[str, Any] = {
        "enable_hr": True, "hr_scale": hires.scale, "hr_second_pass_steps": hires.steps,
        "denoising_strength": hires.denoising_strength, "hr_resize_x": hires.resize_x, "hr_resize_y": hires.resize_y}
    if hires.upscaler in upscalers:
        values["hr_upscaler"] = hires.upscaler
    else:
        warnings.append(f"hires upscaler {hires.upscaler!r} is not available; kept the current upscaler")
    return values


def _checkpoint_title(parsed: Mapping[str, Any], checkpoints: Sequence[ModelFile], warnings: list[str]) -> str | None:
    candidates = checkpoint_candidates(parsed)
    for candidate in candidates:
        try:
            return find_model(list(checkpoints), candidate).title
        except UnknownModelError:
            continue
    if candidates:
        warnings.append(f"checkpoint {' / '.join(candidates)} is not installed; kept the current checkpoint")
    return None


def _vae_choice(name: str | None, vae_choices: Sequence[str], warnings: list[str]) -> str | None:
    if not name:
        return None
    for choice in vae_choices:
        if name in (choice, choice.rsplit("/", 1)[-1]):
            return choice
    warnings.append(f"VAE {name!r} is not installed; kept the current VAE")
    return None


def paste_infotext(
    text: str,
    *,
    checkpoints: Sequence[ModelFile],
    vae_choices: Sequence[str],
    hires_upscalers: Sequence[str],
    send_seed: bool = True,
    send_size: bool = True,
) -> PastedInfotext:
    """Every field the infotext names → form values; `send_seed`/`send_size` are A1111's settings of those names."""
    parsed = parse_infotext(text)
    fields = request_fields_from_infotext(parsed)
    warnings: list[str] = []
    form: dict[str, Any] = {name: fields[name] for name in ("prompt", "negative_prompt", "steps", "cfg_scale")
                            if name in fields}
    if send_seed:
        form.update({name: fields[name] for name in ("seed",) if name in fields})
        form.update(_variation_values(fields))
    if send_size:
        form.update({name: fields[name] for name in ("width", "height") if name in fields})
    form.update(_sampler_values(fields, warnings))
    form.update(_hires_values(fields.get("hires"), hires_upscalers, warnings))
    return PastedInfotext(
        form=form,
        checkpoint=_checkpoint_title(parsed, checkpoints, warnings),
        vae=_vae_choice(parsed.get("VAE"), vae_choices, warnings),
        clip_skip=fields.get("clip_skip"),
        warnings=warnings,
    )
