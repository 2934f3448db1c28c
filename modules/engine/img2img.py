"""img2img and inpaint inputs and outputs, A1111 semantics (processing.StableDiffusionProcessingImg2Img).

generate.img2img_batch calls, for one batch:
    prepare_batch   init images → flatten → resize (resize.py) or "Only masked" crop → masked-content fill
                    → VAE encode (latent resize mode: at the image's own size, then interpolate) → latent noise /
                    nothing → the pipeline's inputs (latents as `image`, latent mask, masked-image latents), the
                    seeded noise and the step plan
    preset_noise_scheduler   makes the pipeline noise the latents with that noise
    finish          decoded images → pasted back ("Only masked") and composited over the source through the
                    blurred mask, so every pixel outside the mask and its blur is exactly the source pixel
The diffusers img2img pipeline serves plain img2img; the inpaint pipeline serves masks and every job of a
9-channel inpainting UNet (which it conditions on the mask and the masked image; a 4-channel UNet gets the known
region blended back each step instead).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules.engine.masking import (Box, binary_mask, blur_mask, composite, expand_box_to_ratio, fill_masked,
                                    latent_mask, mask_box, overlay_mask_whole_picture, paste_box)
from modules.engine.model import EngineModel, pixels_to_tensor
from modules.engine.request import GenerationRequest, Img2ImgOptions, InpaintOptions
from modules.engine.resize import (CROP_AND_RESIZE, LATENT_RESIZE, RESIZE_AND_FILL, Resizer, lanczos,
                                   latent_source_size, resize_image)
from modules.engine.seeds import create_noise

BACKGROUND = (255, 255, 255)  # A1111 img2img_background_color: what transparent init pixels become
MAX_SCHEDULE_STEPS = 1000  # the training timesteps: no schedule can be longer


@dataclass(frozen=True)
class StepPlan:
    """A schedule of `total` steps of which the last `run` are sampled; diffusers gets there with `strength`."""

    total: int
    run: int
    strength: float


@dataclass(frozen=True)
class MaskPlan:
    """The inpaint mask, prepared once per job (all init images share it)."""

    work: Image.Image  # blurred mask at width × height: what sampling, fill and conditioning see
    overlay: Image.Image  # composite mask at the output size
    box: Box | None  # "Only masked": the region of the source that is repainted at width × height


@dataclass
class PreparedBatch:
    sources: list[Image.Image]  # what results are composited over (output size); the answer at denoising 0
    work: list[Image.Image]  # width × height images the sampler starts from
    mask: MaskPlan | None
    task: str  # pipeline task: "img2img" or "inpaint"
    noise: torch.Tensor  # [B, C, h, w] float32 CPU, from each image's seed (variation mixed in) × noise multiplier
    steps: StepPlan
    inputs: dict[str, Any]  # pipeline call arguments: image, mask_image, masked_image_latents, latents
    warnings: list[str] = field(default_factory=list)


def step_plan(steps: int, denoising_strength: float, *, fix_steps: bool) -> StepPlan:
    """A1111 setup_img2img_steps: by default a `steps` schedule entered at the strength's point, running
    int(strength·steps) + 1 steps; with img2img_fix_steps a schedule of int(steps / strength) running `steps`.
    diffusers runs int(total·strength') steps, so strength' = (run + ½) / total lands on `run` exactly.
    """
    strength = min(denoising_strength, 0.999)
    if fix_steps:
        total, run = min(int(steps / strength), MAX_SCHEDULE_STEPS), steps
    else:
        total, run = steps, int(strength * steps) + 1
    run = min(run, total)
    return StepPlan(total, run, min(1.0, (run + 0.5) / total))


def effective_noise_multiplier(options: Img2ImgOptions, setting: float) -> float:
    """The request's multiplier when it sets one (≠ 1), else the `initial_noise_multiplier` setting (A1111 API)."""
    return options.initial_noise_multiplier if options.initial_noise_multiplier != 1.0 else setting


def plan_mask(inpaint: InpaintOptions, source_size: tuple[int, int], width: int, height: int,
              resize_mode: int) -> MaskPlan | None:
    """Binarise, invert, blur; then "Only masked" crop box or "Whole picture" resize. None: blank "Only masked"."""
    mask = blur_mask(binary_mask(inpaint.mask, invert=inpaint.invert), inpaint.mask_blur_x, inpaint.mask_blur_y)
    if mask.size != source_size:
        raise ValueError(f"mask size {mask.size} does not match the init image size {source_size}")
    if inpaint.full_res:
        box = mask_box(mask, inpaint.full_res_padding)
        if box is None:
            return None
        box = expand_box_to_ratio(box, width, height, mask.width, mask.height)
        return MaskPlan(resize_image(mask.crop(box), RESIZE_AND_FILL, width, height), mask, box)
    # the latent resize mode stretches its latents, so its mask is stretched too
    work = resize_image(mask, 0 if resize_mode == LATENT_RESIZE else resize_mode, width, height)
    return MaskPlan(work, overlay_mask_whole_picture(work), None)


def prepare_batch(model: EngineModel, request: GenerationRequest, indices: range, seeds: list[int],
                  subseeds: list[int], *, fix_steps: bool, noise_multiplier: float, mask_weight: float,
                  resizer: Resizer | None = None) -> PreparedBatch:
    """Everything the pipeline call needs for the images `indices` of the job (init images taken cyclically)."""
    options: Img2ImgOptions = request.img2img  # type: ignore[assignment]
    width, height = request.width, request.height
    images = [flatten(options.init_images[index % len(options.init_images)]) for index in indices]
    warnings: list[str] = []
    mask = None
    if options.inpaint is not None:
        mask = plan_mask(options.inpaint, images[0].size, width, height, options.resize_mode)
        if mask is None:
            warnings.append('the mask is blank, so "Only masked" cannot crop around it: ran plain img2img')
    prepared = [_prepare_image(model, image, options, mask, width, height, resizer) for image in images]
    sources, work = [item[0] for item in prepared], [item[1] for item in prepared]
    init = torch.cat([item[2] for item in prepared])
    shape = (init.shape[1], height // model.vae_scale_factor, width // model.vae_scale_factor)
    resize_from = (request.seed_resize_from_w, request.seed_resize_from_h)
    noise = create_noise(shape, seeds, subseeds=subseeds, subseed_strength=request.subseed_strength,
                         seed_resize_from=resize_from if all(resize_from) else None) * noise_multiplier
    steps = step_plan(request.steps, options.denoising_strength, fix_steps=fix_steps)
    cells = _latent_mask(mask, len(images), shape)
    if mask is not None and options.inpaint is not None:
        init = _apply_latent_content(init, cells, options.inpaint.masked_content, shape, seeds)
    task = "inpaint" if mask is not None or model.is_inpainting else "img2img"
    inputs: dict[str, Any] = {"image": init.to(model.device, model.dtype)}
    if task == "inpaint":
        inputs.update(_inpaint_inputs(model, init, cells, work, mask, mask_weight))
        if steps.strength == 1.0:
            inputs["latents"] = noise.to(model.device, model.dtype)  # at strength 1 the pipeline starts from this
    return PreparedBatch(sources, work, mask, task, noise, steps, inputs, warnings)


def flatten(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels over the img2img background colour (A1111 images.flatten)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, BACKGROUND)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _prepare_image(model: EngineModel, image: Image.Image, options: Img2ImgOptions, mask: MaskPlan | None,
                   width: int, height: int, resizer: Resizer | None) -> tuple[Image.Image, Image.Image, torch.Tensor]:
    """(source to composite over, width × height start image, its latents [1, C, h, w])."""
    if mask is not None and mask.box is not None:
        source = image
        start = resize_image(image.crop(mask.box), RESIZE_AND_FILL, width, height, resizer=resizer)
    else:
        source = start = resize_image(image, options.resize_mode, width, height, resizer=resizer)
    fills = options.inpaint is not None and mask is not None and options.inpaint.masked_content != "original"
    if fills:  # A1111 pre-fills for every masked content but "original"
        start = fill_masked(start, mask.work)  # type: ignore[union-attr]
    if options.resize_mode != LATENT_RESIZE or (mask is not None and mask.box is not None):
        return source, start, model.encode([start])
    own = lanczos(image, *latent_source_size(image, model.vae_scale_factor))
    if fills:
        own = fill_masked(own, mask.work.resize(own.size))  # type: ignore[union-attr]
    latents = model.encode([own]).float()
    size = (height // model.vae_scale_factor, width // model.vae_scale_factor)
    return source, start, F.interpolate(latents, size=size, mode="bilinear").to(model.dtype)


def _latent_mask(mask: MaskPlan | None, batch: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """[B, 1, h, w] float32: 1 where latents are repainted (all ones without a mask)."""
    if mask is None:
        return torch.ones(batch, 1, shape[1], shape[2])
    cells = torch.from_numpy(latent_mask(mask.work, shape[2], shape[1]))
    return cells.expand(batch, 1, *cells.shape).clone()


def _apply_latent_content(init: torch.Tensor, mask: torch.Tensor, content: str, shape: tuple[int, int, int],
                          seeds: list[int]) -> torch.Tensor:
    """Masked content in latent space: "latent noise" = each image's seed noise, "latent nothing" = zeros."""
    keep = (1 - mask).to(init)
    if content == "latent noise":
        return init * keep + create_noise(shape, seeds).to(init) * mask.to(init)
    if content == "latent nothing":
        return init * keep
    return init


def _inpaint_inputs(model: EngineModel, init: torch.Tensor, cells: torch.Tensor, work: list[Image.Image],
                    mask: MaskPlan | None, mask_weight: float) -> dict[str, Any]:
    """The inpaint pipeline's mask (pixel size; it takes one pixel per latent cell back) and masked-image latents.

    A 4-channel UNet never reads the masked-image latents (the pipeline only needs a tensor of the right shape).
    """
    inputs = {"mask_image": F.interpolate(cells, scale_factor=model.vae_scale_factor, mode="nearest")}
    if not model.is_inpainting:
        inputs["masked_image_latents"] = init.to(model.device, model.dtype)
        return inputs
    # A1111 img2img_image_conditioning: masked image = lerp(source, source·(1 − round(m)), weight) in [-1, 1]
    pixels = pixels_to_tensor(work)
    if mask is None:
        pixel_mask = torch.ones(len(work), 1, *pixels.shape[2:])
    else:
        pixel_mask = torch.from_numpy(np.asarray(mask.work, dtype=np.float32) / 255).round()[None, None]
    conditioning = pixels * (1 - mask_weight * pixel_mask)
    inputs["masked_image_latents"] = model.encode_pixels(conditioning).to(model.dtype)
    return inputs


def inpainting_txt2img_inputs(model: EngineModel, batch: int, width: int, height: int) -> dict[str, Any]:
    """A 9-channel UNet in txt2img: mask all ones, masked image = mid-grey (0 in [-1, 1]), as A1111."""
    grey = model.encode_pixels(torch.zeros(1, 3, height, width)).to(model.dtype).expand(batch, -1, -1, -1)
    return {"image": grey, "masked_image_latents": grey, "mask_image": torch.ones(batch, 1, height, width),
            "strength": 1.0}


def preset_noise_scheduler(scheduler: Any, noise: torch.Tensor) -> Any:
    """A copy of `scheduler` whose add_noise uses `noise` instead of the noise the pipeline drew.

    The diffusers img2img/inpaint pipelines draw their own noise; this one is A1111's (each image's CPU seed, the
    variation seed mixed in, × noise multiplier). A per-job subclass: the shared scheduler class is untouched.
    """
    base = type(scheduler)

    def add_noise(self: Any, original: torch.Tensor, _drawn: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return base.add_noise(self, original, noise.to(original), timesteps)

    preset = type(f"PresetNoise{base.__name__}", (base,), {"add_noise": add_noise, "__module__": base.__module__})
    return preset.from_config(scheduler.config)


def finish(batch: PreparedBatch, decoded: list[Image.Image], *, apply_overlay: bool) -> list[Image.Image]:
    """Decoded images → final images: "Only masked" crops pasted back, then the composite over the source."""
    mask = batch.mask
    if mask is None:
        return decoded
    results = []
    for source, generated in zip(batch.sources, decoded):
        if mask.box is not None:
            x1, y1, x2, y2 = mask.box
            generated = paste_box(source, resize_image(generated, CROP_AND_RESIZE, x2 - x1, y2 - y1), mask.box)
        results.append(composite(source, generated, mask.overlay) if apply_overlay else generated)
    return results


def infotext_params(options: Img2ImgOptions, noise_multiplier: float) -> dict[str, Any]:
    """Extra infotext keys of img2img/inpaint (A1111 order; None = omitted; defaults are not written)."""
    params: dict[str, Any] = {}
    inpaint = options.inpaint
    if inpaint is not None:
        same_blur = inpaint.mask_blur_x == inpaint.mask_blur_y
        params["Mask blur"] = inpaint.mask_blur_x if same_blur else None
        params["Mask mode"] = "Inpaint not masked" if inpaint.invert else None
        params["Masked content"] = inpaint.masked_content if inpaint.masked_content != "original" else None
        params["Inpaint area"] = "Only masked" if inpaint.full_res else None
        params["Masked area padding"] = inpaint.full_res_padding if inpaint.full_res else None
    params["Noise multiplier"] = noise_multiplier if not math.isclose(noise_multiplier, 1.0) else None
    return params
