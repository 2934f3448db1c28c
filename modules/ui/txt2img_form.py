"""The txt2img form as named values (fields, defaults, → GenerationRequest) and the app calls behind its buttons.

No gradio here: the tab module builds components with these names, and tests call these functions directly.
Field names follow A1111's API names (`enable_hr`, `hr_scale`, ...) so they read the same everywhere.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modules.engine.prompts import count_tokens
from modules.engine.request import GenerationRequest, HiresOptions, RequestError
from modules.jobs import Job
from modules.models.manager import NoCheckpointError
from modules.models.upscalers import hires_upscaler_choices
from modules.ui.controlnet_form import units_from_form
from modules.ui.controlnet_paste import paste_choices, with_controlnet_units
from modules.ui.paste import PastedInfotext, paste_infotext

if TYPE_CHECKING:
    from modules.app import App

FALLBACK_SIZE = 512  # when no checkpoint is loaded (A1111's default size)

# name → label, for messages that point at a form field
FIELD_LABELS: dict[str, str] = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "sampler_name": "Sampling method",
    "scheduler": "Schedule type", "steps": "Sampling steps", "cfg_scale": "CFG Scale", "width": "Width",
    "height": "Height", "n_iter": "Batch count", "batch_size": "Batch size", "seed": "Seed",
    "show_extra": "Extra", "subseed": "Variation seed", "subseed_strength": "Variation strength",
    "seed_resize_from_w": "Resize seed from width", "seed_resize_from_h": "Resize seed from height",
    "enable_hr": "Hires. fix", "hr_upscaler": "Upscaler", "hr_second_pass_steps": "Hires steps",
    "denoising_strength": "Denoising strength", "hr_scale": "Upscale by", "hr_resize_x": "Resize width to",
    "hr_resize_y": "Resize height to",
}


def default_form_values(native_size: int = FALLBACK_SIZE) -> dict[str, Any]:
    """Initial values of every field: GenerationRequest/HiresOptions defaults, size = the model's native size."""
    request, hires = GenerationRequest(), HiresOptions()
    return {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt,
        "sampler_name": request.sampler_name, "scheduler": request.scheduler, "steps": request.steps,
        "cfg_scale": request.cfg_scale, "width": native_size, "height": native_size, "n_iter": request.n_iter,
        "batch_size": request.batch_size, "seed": request.seed, "show_extra": False, "subseed": request.subseed,
        "subseed_strength": request.subseed_strength, "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h, "enable_hr": False, "hr_upscaler": hires.upscaler,
        "hr_second_pass_steps": hires.steps, "denoising_strength": hires.denoising_strength,
        "hr_scale": hires.scale, "hr_resize_x": hires.resize_x, "hr_resize_y": hires.resize_y,
    }


def _number(values: Mapping[str, Any], name: str) -> float:
    value = values.get(name)
    if value is None or value == "":
        raise RequestError(f"{FIELD_LABELS.get(name, name)} is empty; enter a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{FIELD_LABELS.get(name, name)} must be a number, got {value!r}") from None


def _integer(values: Mapping[str, Any], name: str) -> int:
    number = _number(values, name)
    if number != int(number):
        raise RequestError(f"{FIELD_LABELS.get(name, name)} must be a whole number, got {number}")
    return int(number)


def _hires_from_form(values: Mapping[str, Any]) -> HiresOptions | None:
    if not values.get("enable_hr"):
        return None
    return HiresOptions(
        scale=_number(values, "hr_scale"), upscaler=str(values["hr_upscaler"]),
        steps=_integer(values, "hr_second_pass_steps"), denoising_strength=_number(values, "denoising_strength"),
        resize_x=_integer(values, "hr_resize_x"), resize_y=_integer(values, "hr_resize_y"))


def request_from_form(values: Mapping[str, Any]) -> GenerationRequest:
    """Form values → GenerationRequest. Variation fields count only while 'Extra' is ticked (as in A1111)."""
    extra = bool(values.get("show_extra"))
    defaults = GenerationRequest()
    return GenerationRequest(
        prompt=str(values.get("prompt") or ""),
        negative_prompt=str(values.get("negative_prompt") or ""),
        styles=[str(name) for name in values.get("styles") or []],  # already applied to the prompts (issue 7)
        sampler_name=str(values["sampler_name"]),
        scheduler=str(values["scheduler"]),
        steps=_integer(values, "steps"),
        cfg_scale=_number(values, "cfg_scale"),
        width=_integer(values, "width"),
        height=_integer(values, "height"),
        n_iter=_integer(values, "n_iter"),
        batch_size=_integer(values, "batch_size"),
        seed=_integer(values, "seed"),
        subseed=_integer(values, "subseed") if extra else defaults.subseed,
        subseed_strength=_number(values, "subseed_strength") if extra else defaults.subseed_strength,
        seed_resize_from_w=_integer(values, "seed_resize_from_w") if extra else defaults.seed_resize_from_w,
        seed_resize_from_h=_integer(values, "seed_resize_from_h") if extra else defaults.seed_resize_from_h,
        hires=_hires_from_form(values),
        controlnet_units=units_from_form(values),  # ControlNet units of the form (issue 6)
        mode="txt2img",
    )


# ----------------------------------------------------------------------------------- app calls for the tab


def native_size(app: App) -> int:
    try:
        return app.models.model.native_size
    except NoCheckpointError:
        return FALLBACK_SIZE


def token_counter_text(app: App, prompt: str, steps: float) -> str:
    """A1111's "N/75" for one prompt box; empty while no checkpoint (no tokenizer) is loaded."""
    try:
        model = app.models.model
    except NoCheckpointError:
        return ""
    used, maximum = count_tokens(prompt or "", model.prompt_encoder.encoders.chunk_tokenizer, max(int(steps or 1), 1),
                                 emphasis=app.settings.emphasis, embeddings=app.embeddings.lookup_for(model))
    return f"{used}/{maximum}"


def submit_txt2img(app: App, values: dict[str, Any]) -> Job:
    """The Generate button: form values → request → job queue."""
    app.models.model  # noqa: B018 -- the property raises NoCheckpointError (with instructions) before queueing
    return app.submit(request_from_form(values))


def pasted_for_txt2img(app: App, text: str) -> PastedInfotext:
    settings = app.settings
    pasted = paste_infotext(text, checkpoints=app.models.checkpoints, vae_choices=app.models.vae_choices(),
                            hires_upscalers=hires_upscaler_choices(app.upscalers), send_seed=settings.send_seed,
                            send_size=settings.send_size)
    return with_controlnet_units(pasted, text, paste_choices(app))  # the ControlNet units' fields (issue 6)
