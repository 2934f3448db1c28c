"""request → images + infotexts. Reads top-down as named stages: plan → (per batch) sample → hires → decode → describe.
img2img / inpaint batches take their own stage (img2img_batch; inputs and compositing in img2img.py).

The diffusers pipeline does the denoising loop; we supply everything A1111 users expect around it: our own prompt
embeddings (A1111 syntax, clip skip, prompt editing swapped in from the step callback), per-image CPU noise
from seeds, a fresh scheduler per pass, progress/preview/interrupt through the StepObserver.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from modules.engine import controlnet as controlnet_stage
from modules.engine import img2img as img2img_stage
from modules.engine import infotext as infotext_format
from modules.engine.model import EngineModel
from modules.engine.progress import NullObserver, StepObserver
from modules.engine.prompt_parser import extract_extra_networks
from modules.engine.prompts import PromptSchedule
from modules.engine.request import GenerationRequest, HiresOptions
from modules.engine.resize import Resizer
from modules.engine.result import GenerationResult
from modules.engine.samplers import SamplerSpec, ScheduleSpec, build_scheduler, infotext_schedule_label, resolve_sampler
from modules.engine.seeds import create_noise, image_seeds, resolve_seed

log = logging.getLogger(__name__)

LATENT_UPSCALE_MODES = {"Latent": "bilinear", "Latent (nearest)": "nearest", "Latent (nearest-exact)": "nearest-exact",
                        "Latent (bicubic)": "bicubic", "Latent (antialiased)": "bilinear"}
PIXEL_UPSCALERS = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST, "None": Image.LANCZOS}
HIRES_UPSCALERS = (*LATENT_UPSCALE_MODES, "Lanczos", "Nearest", "None")
# infotext keys A1111 lists in info["extra_generation_params"] (the rest are core keys)
EXTRA_GENERATION_PARAMS = ("Schedule type", "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "RNG",
                           "Emphasis", "Mask blur", "Mask mode", "Masked content", "Inpaint area",
                           "Masked area padding", "Noise multiplier", "Lora hashes", "TI hashes")


@dataclass(frozen=True)
class EngineOptions:
    """Settings the engine reads (passed in, never looked up)."""

    clip_skip: int = 1
    emphasis: str = "Original"
    version: str = infotext_format.VERSION
    # (image, width, height, upscaler name) → image of exactly width × height: the app's upscaler registry
    # (Lanczos, Nearest, model files). None = PIL resizing with PIXEL_UPSCALERS only.
    pixel_upscale: Callable[[Image.Image, int, int, str], Image.Image] | None = None
    img2img_fix_steps: bool = False  # run exactly `steps` img2img steps instead of int(steps × denoising) + 1
    initial_noise_multiplier: float = 1.0  # img2img noise × this, unless the request sets its own
    inpainting_mask_weight: float = 1.0  # 9-channel UNets: how much of the source the mask hides (A1111)
    mask_apply_overlay: bool = True  # inpaint: composite the result over the source through the blurred mask
    img2img_upscaler: str = "None"  # enlarges init images through pixel_upscale (A1111 upscaler_for_img2img)
    controlnet: controlnet_stage.ControlNetServices | None = None  # ControlNet models and preprocessors (issue 6)


@dataclass
class GenerationPlan:
    """Everything resolved before sampling starts."""

    request: GenerationRequest
    sampler: SamplerSpec
    schedule: ScheduleSpec
    seeds: list[int]
    subseeds: list[int]
    clip_skip: int
    prompt: str  # extra-network tags removed
    options: EngineOptions
    warnings: list[str] = field(default_factory=list)
    control: controlnet_stage.ControlPlan | None = None  # ControlNet units, preprocessed (None: no units)


def generate(model: EngineModel, request: GenerationRequest, *, observer: StepObserver | None = None,
             options: EngineOptions = EngineOptions()) -> GenerationResult:
    observer = observer or NullObserver()
    plan = plan_generation(request, options)
    # the extension seeds its random preprocessors (shuffle) with seed + subseed
    plan.control = controlnet_stage.prepare_control(model, plan.request, options.controlnet,
                                                    seed=(plan.seeds[0] + plan.subseeds[0]) & 0xFFFFFFFF)
    if request.hires is not None and model.is_inpainting:
        raise ValueError("hires fix does not run on an inpainting checkpoint yet; use a regular checkpoint")
    images: list[Image.Image] = []
    for batch_no in range(request.n_iter):
        if observer.interrupted():
            break
        batch = slice(batch_no * request.batch_size, (batch_no + 1) * request.batch_size)
        images += sample_batch(model, plan, plan.seeds[batch], plan.subseeds[batch], batch_no, observer)
    return describe(model, plan, images, interrupted=observer.interrupted())


def plan_generation(request: GenerationRequest, options: EngineOptions) -> GenerationPlan:
    request.validate()
    sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
    if request.hires is not None and request.img2img is not None:
        raise ValueError("hires fix is a txt2img option; img2img generates at the requested size directly")
    if request.hires is not None and request.hires.upscaler not in HIRES_UPSCALERS and options.pixel_upscale is None:
        raise ValueError(f"unknown hires upscaler {request.hires.upscaler!r}; choose one of {', '.join(HIRES_UPSCALERS)}")
    seed = resolve_seed(request.seed)
    subseed = resolve_seed(request.subseed)
    seeds, subseeds = image_seeds(seed, request.total_images, subseed, request.subseed_strength)
    prompt, _tags = extract_extra_networks(request.prompt)
    resolved = request.replace(seed=seed, subseed=subseed, sampler_name=sampler.name)
    clip_skip = request.clip_skip or options.clip_skip
    return GenerationPlan(resolved, sampler, schedule, seeds, subseeds, clip_skip, prompt, options)


def step_noise_generators(seeds: list[int]) -> list[torch.Generator]:
    """Ancestral and SDE samplers draw fresh noise at every step: from each image's own seeded generator, never
    the process-wide one, so a re-run of a request does not depend on what ran before it."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def sample_batch(model: EngineModel, plan: GenerationPlan, seeds: list[int], subseeds: list[int], batch_no: int,
                 observer: StepObserver) -> list[Image.Image]:
    """First pass (and hires pass) for one batch; returns decoded images."""
    request = plan.request
    if request.img2img is not None:
        return img2img_batch(model, plan, seeds, subseeds, batch_no, observer)
    job_count = request.n_iter * (2 if request.hires else 1)
    pass_no = batch_no * (2 if request.hires else 1)
    scale = model.vae_scale_factor
    resize_from = (request.seed_resize_from_w, request.seed_resize_from_h)
    noise = create_noise(
        (model.components.vae.config.latent_channels, request.height // scale, request.width // scale), seeds,
        subseeds=subseeds, subseed_strength=request.subseed_strength,
        seed_resize_from=resize_from if all(resize_from) else None)
    schedule = model.prompt_encoder.schedule(plan.prompt, request.negative_prompt, request.steps,
                                             clip_skip=plan.clip_skip, emphasis=plan.options.emphasis)
    # A1111 "inpainting conditioning": a 9-channel UNet in txt2img sees a full mask over a grey image
    conditioning = img2img_stage.inpainting_txt2img_inputs(model, len(seeds), request.width, request.height) \
        if model.is_inpainting else {}
    scheduler = build_scheduler(plan.sampler, plan.schedule, model.scheduler_config, seeds=seeds)
    pipe = model.pipeline("inpaint" if model.is_inpainting else "txt2img", scheduler)
    observer.begin_pass(job_no=pass_no, job_count=job_count, steps=request.steps, label=f"Batch {batch_no + 1}")
    latents = run_pipeline(pipe, model, schedule, request, observer, batch=len(seeds), steps=request.steps,
                           latents=noise.to(model.device, model.dtype), generator=step_noise_generators(seeds),
                           output_type="latent",
                           width=request.width, height=request.height, control=plan.control, **conditioning)
    if request.hires is not None and not observer.interrupted():
        latents = hires_pass(model, plan, latents, seeds, pass_no + 1, job_count, observer)
    return model.decode(latents)


def img2img_batch(model: EngineModel, plan: GenerationPlan, seeds: list[int], subseeds: list[int], batch_no: int,
                  observer: StepObserver) -> list[Image.Image]:
    """img2img / inpaint for one batch: prepared inputs → img2img or inpaint pipeline → decode → composite."""
    request, options = plan.request, plan.options
    first = batch_no * request.batch_size
    batch = img2img_stage.prepare_batch(
        model, request, range(first, first + len(seeds)), seeds, subseeds, fix_steps=options.img2img_fix_steps,
        noise_multiplier=noise_multiplier(plan), mask_weight=options.inpainting_mask_weight,
        resizer=img2img_resizer(options))
    plan.warnings += [warning for warning in batch.warnings if warning not in plan.warnings]
    if request.img2img.denoising_strength == 0:  # type: ignore[union-attr]
        return batch.sources
    schedule = model.prompt_encoder.schedule(plan.prompt, request.negative_prompt, request.steps,
                                             clip_skip=plan.clip_skip, emphasis=options.emphasis)
    scheduler = build_scheduler(plan.sampler, plan.schedule, model.scheduler_config, seeds=seeds)
    pipe = model.pipeline(batch.task, img2img_stage.preset_noise_scheduler(scheduler, batch.noise))
    observer.begin_pass(job_no=batch_no, job_count=request.n_iter, steps=batch.steps.run, label=f"Batch {batch_no + 1}")
    latents = run_pipeline(pipe, model, schedule, request, observer, batch=len(seeds), steps=batch.steps.total,
                           strength=batch.steps.strength, generator=step_noise_generators(seeds), output_type="latent",
                           width=request.width, height=request.height, control=plan.control, **batch.inputs)
    return img2img_stage.finish(batch, model.decode(latents), apply_overlay=options.mask_apply_overlay)


def noise_multiplier(plan: GenerationPlan) -> float:
    options = plan.request.img2img
    assert options is not None, "img2img jobs only"
    return img2img_stage.effective_noise_multiplier(options, plan.options.initial_noise_multiplier)


def img2img_resizer(options: EngineOptions) -> Resizer | None:
    """The upscaler A1111 uses when an init image must be enlarged (setting upscaler_for_img2img)."""
    upscale, name = options.pixel_upscale, options.img2img_upscaler
    if upscale is None or name in ("", "None"):
        return None
    return lambda image, width, height: upscale(image, width, height, name)


def hires_pass(model: EngineModel, plan: GenerationPlan, latents: torch.Tensor, seeds: list[int], pass_no: int,
               job_count: int, observer: StepObserver) -> torch.Tensor:
    """A1111 hires fix: upscale the first pass (in latent or pixel space), then img2img at the target size."""
    request = plan.request
    hires: HiresOptions = request.hires  # type: ignore[assignment]
    width, height = hires.target_size(request.width, request.height)
    scale = model.vae_scale_factor
    if hires.upscaler in LATENT_UPSCALE_MODES:
        mode = LATENT_UPSCALE_MODES[hires.upscaler]
        image: Any = F.interpolate(latents.float(), size=(height // scale, width // scale), mode=mode,
                                   antialias=hires.upscaler == "Latent (antialiased)").to(latents.dtype)
    else:
        upscale = plan.options.pixel_upscale or (lambda img, w, h, name: img.resize((w, h), PIXEL_UPSCALERS[name]))
        image = [upscale(img, width, height, hires.upscaler) for img in model.decode(latents)]
    steps = hires.steps or request.steps
    # A1111: prompt-editing steps past the first pass (or fractions 1.0-2.0) address the hires pass.
    schedule = model.prompt_encoder.schedule(plan.prompt, request.negative_prompt, request.steps, hires_steps=steps,
                                             clip_skip=plan.clip_skip, emphasis=plan.options.emphasis)
    if hires.denoising_strength == 0:
        return image if torch.is_tensor(image) else model.encode(image)
    pipe = model.pipeline("img2img", build_scheduler(plan.sampler, plan.schedule, model.scheduler_config, seeds=seeds))
    # A1111 runs exactly `steps` hires steps on a schedule stretched to steps / strength; diffusers then
    # executes int(total * strength) of `total`, and ceil makes that exactly `steps`.
    total = math.ceil(steps / hires.denoising_strength)
    observer.begin_pass(job_no=pass_no, job_count=job_count, steps=steps, label="Hires fix")
    return run_pipeline(pipe, model, schedule, request, observer, batch=len(seeds), steps=total, image=image,
                        strength=hires.denoising_strength, generator=step_noise_generators(seeds), output_type="latent",
                        width=width, height=height, control=plan.control and plan.control.for_hires())


def run_pipeline(pipe: Any, model: EngineModel, schedule: PromptSchedule, request: GenerationRequest,
                 observer: StepObserver, *, batch: int, steps: int, width: int, height: int,
                 control: controlnet_stage.ControlPlan | None = None, **call: Any) -> torch.Tensor:
    """One diffusers call with our embeddings; prompt-editing changes and interrupts happen in the step callback."""
    use_cfg = request.cfg_scale > 1.0  # the pipelines skip the negative branch at cfg <= 1
    cond, uncond = schedule.at(0)
    embeds = _embedding_kwargs(model, cond, uncond, batch)
    tensor_inputs = ["latents", "prompt_embeds"] + (["add_text_embeds"] if model.kind == "sdxl" else [])
    stopped = False

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict:
        nonlocal stopped
        observer.on_step(step + 1, tensors["latents"])
        if observer.interrupted() or observer.skipped():
            stopped = True
            pipeline._interrupt = True  # remaining steps are skipped; what is there gets decoded (A1111 semantics)
        elif step + 1 in schedule.change_steps:
            _swap_conditioning(model, schedule.at(step + 1), tensors, batch, use_cfg)
        return tensors

    extra = {"original_size": (height, width), "target_size": (height, width)} if model.kind == "sdxl" else {}
    with torch.inference_mode(), controlnet_stage.attach(pipe, control, width=width, height=height):
        output = pipe(num_inference_steps=steps, guidance_scale=request.cfg_scale, width=width, height=height,
                      callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs,
                      **embeds, **extra, **call)
    if stopped:
        log.info("sampling stopped early at the user's request")
    return output.images


def _embedding_kwargs(model: EngineModel, cond: Any, uncond: Any, batch: int) -> dict[str, torch.Tensor]:
    kwargs = {"prompt_embeds": _batch(cond.embeds, batch), "negative_prompt_embeds": _batch(uncond.embeds, batch)}
    if model.kind == "sdxl":
        kwargs["pooled_prompt_embeds"] = _batch(cond.pooled, batch)
        kwargs["negative_pooled_prompt_embeds"] = _batch(uncond.pooled, batch)
    return kwargs


def _swap_conditioning(model: EngineModel, pair: tuple, tensors: dict, batch: int, use_cfg: bool) -> None:
    """The pipelines concatenated [negative; positive] before the loop: replace it with the same layout."""
    cond, uncond = pair
    embeds = [_batch(uncond.embeds, batch), _batch(cond.embeds, batch)] if use_cfg else [_batch(cond.embeds, batch)]
    tensors["prompt_embeds"] = torch.cat(embeds).to(tensors["prompt_embeds"])
    if model.kind == "sdxl":
        pooled = [_batch(uncond.pooled, batch), _batch(cond.pooled, batch)] if use_cfg else [_batch(cond.pooled, batch)]
        tensors["add_text_embeds"] = torch.cat(pooled).to(tensors["add_text_embeds"])


def _batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    return tensor.expand(batch, *tensor.shape[1:])


def describe(model: EngineModel, plan: GenerationPlan, images: list[Image.Image], *, interrupted: bool) -> GenerationResult:
    """Infotext per image and A1111's `info` object."""
    request = plan.request
    count = len(images)
    infotexts = [infotext_format.format_infotext(request.prompt, request.negative_prompt,
                                                 infotext_params(model, plan, index)) for index in range(count)]
    result = GenerationResult(
        request=request, images=images, infotexts=infotexts, seeds=plan.seeds[:count], subseeds=plan.subseeds[:count],
        prompts=[request.prompt] * count, negative_prompts=[request.negative_prompt] * count,
        warnings=list(plan.warnings), interrupted=interrupted,
        detected_maps=plan.control.detected_maps() if plan.control else [])
    result.info = a1111_info(model, plan, result)
    return result


def infotext_params(model: EngineModel, plan: GenerationPlan, index: int) -> dict[str, Any]:
    request = plan.request
    variation = request.subseed_strength > 0
    params: dict[str, Any] = {
        "Steps": request.steps, "Sampler": plan.sampler.name,
        "Schedule type": schedule_label(plan),
        "CFG scale": request.cfg_scale, "Seed": plan.seeds[index], "Size": f"{request.width}x{request.height}",
        "Model hash": model.model_hash, "Model": model.model_name,
        "VAE hash": model.vae_hash, "VAE": model.vae_name,
        "Variation seed": plan.subseeds[index] if variation else None,
        "Variation seed strength": request.subseed_strength if variation else None,
        "Seed resize from": f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
        if request.seed_resize_from_w and request.seed_resize_from_h else None,
        "Denoising strength": denoising_strength(request),
        "Conditional mask weight": plan.options.inpainting_mask_weight if model.is_inpainting else None,
        "Clip skip": plan.clip_skip if plan.clip_skip > 1 else None,
        "RNG": "CPU",
    }
    if request.hires is not None:
        hires = request.hires
        if hires.resize_x and hires.resize_y:
            params["Hires resize"] = f"{hires.resize_x}x{hires.resize_y}"
        else:
            params["Hires upscale"] = hires.scale
        params["Hires steps"] = hires.steps or None
        params["Hires upscaler"] = hires.upscaler
    if request.img2img is not None:
        params.update(img2img_stage.infotext_params(request.img2img, noise_multiplier(plan)))
    if plan.options.emphasis != "Original" and any(c in request.prompt + request.negative_prompt for c in "()[]"):
        params["Emphasis"] = plan.options.emphasis
    params.update(plan.control.infotext if plan.control else {})
    params.update(request.extra_params)
    params["Version"] = plan.options.version
    return params


def denoising_strength(request: GenerationRequest) -> float | None:
    if request.img2img is not None:
        return request.img2img.denoising_strength
    return request.hires.denoising_strength if request.hires else None


def schedule_label(plan: GenerationPlan) -> str | None:
    """A1111 writes "Automatic" when the user left it so and the sampler has no schedule of its own."""
    automatic = plan.request.scheduler in (None, "", "Automatic", "automatic")
    if automatic and plan.sampler.k_diffusion and plan.sampler.default_schedule == "uniform":
        return "Automatic"
    return infotext_schedule_label(plan.sampler, plan.schedule)


def a1111_info(model: EngineModel, plan: GenerationPlan, result: GenerationResult) -> dict[str, Any]:
    request = plan.request
    return {
        "prompt": request.prompt, "all_prompts": result.prompts, "negative_prompt": request.negative_prompt,
        "all_negative_prompts": result.negative_prompts, "seed": plan.seeds[0], "all_seeds": result.seeds,
        "subseed": plan.subseeds[0], "all_subseeds": result.subseeds, "subseed_strength": request.subseed_strength,
        "width": request.width, "height": request.height, "sampler_name": plan.sampler.name,
        "cfg_scale": request.cfg_scale, "steps": request.steps, "batch_size": request.batch_size,
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": model.model_name,
        "sd_model_hash": model.model_hash, "sd_vae_name": model.vae_name, "sd_vae_hash": model.vae_hash,
        "seed_resize_from_w": request.seed_resize_from_w or -1, "seed_resize_from_h": request.seed_resize_from_h or -1,
        "denoising_strength": denoising_strength(request),
        "extra_generation_params": {k: v for k, v in infotext_params(model, plan, 0).items()
                                    if (k in EXTRA_GENERATION_PARAMS or k.startswith("ControlNet ")) and v is not None},
        "index_of_first_image": 0, "infotexts": result.infotexts, "styles": request.styles,
        "job_timestamp": "", "clip_skip": plan.clip_skip, "is_using_inpainting_conditioning": model.is_inpainting,
        "version": plan.options.version,
    }
