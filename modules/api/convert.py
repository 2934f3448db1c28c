"""A1111 API request bodies → GenerationRequest (the one object the engine takes).

Everything a job would only fail on later (unknown sampler, checkpoint, VAE, style, upscaler, script, an image that
does not decode or a mask of the wrong size) is resolved here, so a bad request gets HTTP 422 before it is queued.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from modules.api.models import GenerationApiRequest, Img2ImgRequest, Txt2ImgRequest
from modules.api.scripts import alwayson_applied, check_script_name
from modules.api.styles import apply_styles, read_styles
from modules.controlnet_units import NO_DETECTMAP
from modules.engine.infotext import checkpoint_candidates, parse_infotext, request_fields_from_infotext
from modules.engine.images import decode_image_base64
from modules.engine.request import (
    MASKED_CONTENT,
    GenerationRequest,
    HiresOptions,
    Img2ImgOptions,
    InpaintOptions,
    RequestError,
)
from modules.engine.samplers import resolve_sampler
from modules.models.lora import check_request_loras
from modules.models.manager import NoCheckpointError
from modules.models.registry import UnknownModelError
from modules.models.upscalers import resolve_hires_upscaler

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)

ApiBody = TypeVar("ApiBody", Txt2ImgRequest, Img2ImgRequest)

DEFAULT_API_SAMPLER = "Euler"  # A1111's sampler_index default when neither sampler field is sent
DEFAULT_HIRES_UPSCALER = "Latent"
DEFAULT_HIRES_DENOISING = 0.75  # A1111 API default (the UI's is 0.7)
DEFAULT_IMG2IMG_DENOISING = 0.75
IMG2IMG_BACKGROUND = (255, 255, 255)  # A1111 img2img_background_color: transparent init pixels become white
VAE_SPECIAL_CHOICES = ("Automatic", "None")
# Infotext-derived request fields that have an API field of the same name.
_INFOTEXT_PLAIN_FIELDS = ("prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "subseed",
                          "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "scheduler")
_SAME_AS_FIRST_PASS = ("", "Use same sampler", "Use same scheduler", "Use same checkpoint")


@dataclass(frozen=True)
class RequestOverrides:
    """The override_settings this server applies per request (others are ignored and logged)."""

    checkpoint: str | None = None
    vae: str | None = None
    clip_skip: int | None = None
    controlnet_no_detectmap: bool | None = None  # the ControlNet extension's control_net_no_detectmap


def txt2img_request(body: Txt2ImgRequest, app: App) -> GenerationRequest:
    """Translate and validate; raises ValueError subclasses (→ HTTP 422) for anything the job could not run."""
    if body.infotext:
        body = with_infotext(body, app)
    check_script_name(app, body, "txt2img")  # the script itself runs when the job is submitted (api/scripts.py)
    width, height, hires = hires_options(body, app)
    request = common_request(body, app).replace(width=width, height=height, hires=hires, mode="txt2img")
    return runnable_request(alwayson_applied(app, request, body, "txt2img"), app)


def img2img_request(body: Img2ImgRequest, app: App) -> GenerationRequest:
    """img2img / inpaint (a selectable script starts from it); images are decoded (with limits) here."""
    if body.infotext:
        body = with_infotext(body, app)
    check_script_name(app, body, "img2img")
    if not body.init_images:
        raise RequestError("init_images: at least one base64 image is required")
    if body.latent_mask:
        log.info("img2img: latent_mask is not supported; ignored")
    options = img2img_options(body)
    request = common_request(body, app).replace(img2img=options, mode="img2img")
    return runnable_request(alwayson_applied(app, request, body, "img2img"), app)


def common_request(body: GenerationApiRequest, app: App) -> GenerationRequest:
    """The fields txt2img and img2img share: prompts with styles, seeds, sampler, size, batch, per-request settings."""
    sampler, schedule = resolve_sampler(body.sampler_name or body.sampler_index or DEFAULT_API_SAMPLER, body.scheduler)
    overrides = per_request_overrides(body.override_settings or {}, app)
    prompt, negative_prompt = apply_styles(body.prompt, body.negative_prompt, list(body.styles or []),
                                           read_styles(app.paths.styles_file) if body.styles else [])
    return GenerationRequest(
        prompt=prompt, negative_prompt=negative_prompt, styles=list(body.styles or []),
        seed=body.seed, subseed=body.subseed, subseed_strength=body.subseed_strength,
        seed_resize_from_w=max(body.seed_resize_from_w, 0), seed_resize_from_h=max(body.seed_resize_from_h, 0),
        sampler_name=sampler.name, scheduler=schedule.label, steps=body.steps, cfg_scale=body.cfg_scale,
        width=body.width, height=body.height, batch_size=body.batch_size, n_iter=body.n_iter,
        clip_skip=overrides.clip_skip, checkpoint=overrides.checkpoint, vae=overrides.vae,
        # A1111: save_images overrides do_not_save_samples / do_not_save_grid; the API does not save by default.
        save_images=body.save_images, save_grid=body.save_images,
        controlnet_no_detectmap=overrides.controlnet_no_detectmap,
    )


def runnable_request(request: GenerationRequest, app: App) -> GenerationRequest:
    request = with_loadable_checkpoint(request, app)
    request.validate()
    check_request_loras(app.loras, app.models, request)  # unsupported or wrong-family LoRA → 422 before queueing
    return request


def img2img_options(body: Img2ImgRequest) -> Img2ImgOptions:
    """Decoded init images and mask (ImageDecodeError → 422) and the A1111 API's inpaint defaults."""
    init_images = [flatten_init_image(decode_image_base64(data)) for data in body.init_images or []]
    inpaint = None
    if body.mask:
        blur_x, blur_y = (body.mask_blur, body.mask_blur) if body.mask_blur is not None else (
            body.mask_blur_x, body.mask_blur_y)
        inpaint = InpaintOptions(
            mask=binary_mask(decode_image_base64(body.mask), round_alpha=body.mask_round),
            mask_blur_x=blur_x, mask_blur_y=blur_y, invert=bool(body.inpainting_mask_invert),
            masked_content=MASKED_CONTENT[body.inpainting_fill], full_res=body.inpaint_full_res,
            full_res_padding=body.inpaint_full_res_padding)
    denoising = DEFAULT_IMG2IMG_DENOISING if body.denoising_strength is None else body.denoising_strength
    noise_multiplier = 1.0 if body.initial_noise_multiplier is None else body.initial_noise_multiplier
    return Img2ImgOptions(init_images=init_images, denoising_strength=denoising, resize_mode=body.resize_mode,
                          inpaint=inpaint, initial_noise_multiplier=noise_multiplier)


def flatten_init_image(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels over white (A1111 flattens init images onto img2img_background_color)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*IMG2IMG_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def binary_mask(image: Image.Image, *, round_alpha: bool) -> Image.Image:
    """A1111 create_binary_mask: an RGBA mask with transparency uses its alpha (thresholded at 128 when
    round_alpha), anything else its grey level; white = repaint."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.getchannel("A")
        return alpha.point(lambda value: 255 if value > 128 else 0) if round_alpha else alpha
    return image.convert("L")


def hires_options(body: Txt2ImgRequest, app: App) -> tuple[int, int, HiresOptions | None]:
    """(first-pass width, height, hires options). Legacy firstphase_* sizes make width/height the hires target."""
    if not body.enable_hr:
        return body.width, body.height, None
    upscaler = resolve_hires_upscaler(app.upscalers, body.hr_upscaler or DEFAULT_HIRES_UPSCALER)  # 422 if unknown
    for name in ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler"):
        if (getattr(body, name) or "") not in _SAME_AS_FIRST_PASS:
            log.info("txt2img: %s is not supported yet; the hires pass uses the first pass's value", name)
    hires = HiresOptions(
        scale=body.hr_scale, upscaler=upscaler, steps=body.hr_second_pass_steps,
        denoising_strength=DEFAULT_HIRES_DENOISING if body.denoising_strength is None else body.denoising_strength,
        resize_x=body.hr_resize_x, resize_y=body.hr_resize_y)
    if body.firstphase_width and body.firstphase_height:
        hires.resize_x, hires.resize_y = body.width, body.height
        return body.firstphase_width, body.firstphase_height, hires
    return body.width, body.height, hires


def per_request_overrides(settings: dict[str, Any], app: App) -> RequestOverrides:
    """Resolve sd_model_checkpoint / sd_vae / CLIP_stop_at_last_layers; unknown names raise (→ 422)."""
    checkpoint = settings.get("sd_model_checkpoint")
    if checkpoint is not None:
        if not isinstance(checkpoint, str):
            raise RequestError(f"override_settings.sd_model_checkpoint must be a string, got {checkpoint!r}")
        checkpoint = app.models.find_checkpoint(checkpoint).name if checkpoint.strip() else None
    vae = settings.get("sd_vae")
    if vae is not None:
        if not isinstance(vae, str):
            raise RequestError(f"override_settings.sd_vae must be a string, got {vae!r}")
        vae = vae if vae in VAE_SPECIAL_CHOICES else app.models.find_vae(vae).name
    clip_skip = settings.get("CLIP_stop_at_last_layers")
    if clip_skip is not None:
        is_integer = (isinstance(clip_skip, int) and not isinstance(clip_skip, bool)) or (
            isinstance(clip_skip, float) and clip_skip.is_integer())  # False for NaN/inf (json.loads accepts them)
        if not is_integer or not 1 <= clip_skip <= 12:
            raise RequestError(f"override_settings.CLIP_stop_at_last_layers must be an integer 1..12, "
                               f"got {clip_skip!r}")
        clip_skip = int(clip_skip)
    no_detectmap = settings.get(NO_DETECTMAP)
    if no_detectmap is not None and not isinstance(no_detectmap, bool):
        raise RequestError(f"override_settings.{NO_DETECTMAP} must be true or false, got {no_detectmap!r}")
    ignored = sorted(set(settings) - {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", NO_DETECTMAP})
    if ignored:
        log.info("txt2img: override_settings %s are not applied per request", ignored)
    return RequestOverrides(checkpoint=checkpoint, vae=vae, clip_skip=clip_skip, controlnet_no_detectmap=no_detectmap)


def with_loadable_checkpoint(request: GenerationRequest, app: App) -> GenerationRequest:
    """After unload-checkpoint (or a failed start-up load) the next job loads the chosen checkpoint, as A1111 does."""
    if request.checkpoint is not None or app.models.current is not None:
        return request
    choice = app.settings.sd_model_checkpoint
    for candidate in ([choice] if choice else []) + [entry.name for entry in app.models.checkpoints[:1]]:
        try:
            return request.replace(checkpoint=app.models.find_checkpoint(candidate).name)
        except UnknownModelError:
            continue
    raise NoCheckpointError("No checkpoint found. Put a .safetensors or .ckpt file (or a diffusers folder) into "
                            f"{app.paths.ckpt_dirs[0]} and call /sdapi/v1/refresh-checkpoints.")


def with_infotext(body: ApiBody, app: App) -> ApiBody:
    """Fill the fields the request did not set from its `infotext` (A1111 1.8+ API behaviour)."""
    assert body.infotext is not None
    parsed = parse_infotext(body.infotext)
    fields = request_fields_from_infotext(parsed)
    given = body.model_fields_set
    data = body.model_dump()
    data["infotext"] = None
    for name in _INFOTEXT_PLAIN_FIELDS:
        if name in fields and name not in given:
            data[name] = fields[name]
    if "sampler_name" in fields and not given & {"sampler_name", "sampler_index"}:
        data["sampler_name"] = fields["sampler_name"]
    if isinstance(body, Img2ImgRequest) and "denoising_strength" in fields and "denoising_strength" not in given:
        data["denoising_strength"] = fields["denoising_strength"]  # img2img strength (no hires in the infotext)
    hires: HiresOptions | None = fields.get("hires")
    if isinstance(body, Txt2ImgRequest) and hires is not None and "enable_hr" not in given:
        data["enable_hr"] = True
        for name, value in (("hr_scale", hires.scale), ("hr_upscaler", hires.upscaler),
                            ("hr_second_pass_steps", hires.steps), ("denoising_strength", hires.denoising_strength),
                            ("hr_resize_x", hires.resize_x), ("hr_resize_y", hires.resize_y)):
            if name not in given:
                data[name] = value
    data["override_settings"] = _infotext_settings(parsed, fields, dict(body.override_settings or {}), app)
    return type(body).model_validate(data)


def _infotext_settings(parsed: dict[str, Any], fields: dict[str, Any], settings: dict[str, Any],
                       app: App) -> dict[str, Any] | None:
    """Explicit override_settings win; a checkpoint or VAE the infotext names but we lack is skipped (as A1111)."""
    if "clip_skip" in fields:
        settings.setdefault("CLIP_stop_at_last_layers", fields["clip_skip"])
    if "sd_model_checkpoint" not in settings:
        for candidate in checkpoint_candidates(parsed):
            try:
                settings["sd_model_checkpoint"] = app.models.find_checkpoint(candidate).title
                break
            except UnknownModelError:
                continue
    if "vae" in fields and "sd_vae" not in settings:
        try:
            settings["sd_vae"] = app.models.find_vae(fields["vae"]).name
        except UnknownModelError:
            log.info("infotext VAE %r not found; using the current VAE", fields["vae"])
    return settings or None
