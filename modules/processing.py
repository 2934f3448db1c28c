"""The worker's job runner: settings → engine options, per-request checkpoint/VAE, generate, save, grid."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from modules.engine.generate import EngineOptions, generate
from modules.engine.images import dated_folder, make_grid
from modules.engine.request import GenerationRequest
from modules.engine.result import GenerationResult
from modules.jobs import Job
from modules.models.controlnets import controlnet_services
from modules.models.lora import applied_loras
from modules.models.registry import UnknownModelError

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)


def run_job(app: App, job: Job) -> GenerationResult:
    request = app.extensions.before_job(job.request)  # extension hooks (a raising one is disabled, the job goes on)
    models = app.models
    checkpoint = request.checkpoint or checkpoint_to_restore(app)
    if checkpoint:
        models.load(checkpoint)
    try:
        if request.vae is not None:
            models.set_vae(request.vae)
        model = models.model
        settings = app.settings
        request = app.embeddings.prepare(model, request, emphasis=settings.emphasis)  # textual inversion, TI hashes
        if settings.live_previews_enable:
            job.preview_every, job.preview_decoder = max(settings.show_progress_every_n_steps, 1), model.preview
        with applied_loras(app.loras, model, request.prompt,  # LoRA weights: this job only, restored after
                           default_weight=settings.extra_networks_default_multiplier) as loras:
            result = generate(model, loras.annotate(request), observer=app.extensions.step_observer(job, request),
                              options=engine_options(app))
        result.warnings += [warning for warning in loras.warnings if warning not in result.warnings]
    finally:
        # Per-request overrides are restored afterwards (A1111's override_settings_restore_afterwards default);
        # within a script's series of jobs the checkpoint stays for the next one (issue 7, see keeps_checkpoint).
        if request.vae is not None:
            models.set_vae(app.settings.sd_vae)
        if request.checkpoint and not keeps_checkpoint(job):
            restore_checkpoint(app)
    if len(result.images) > 1 and settings.return_grid:
        result.grid = make_grid(result.images)
    # the ControlNet extension's setting (or this request's override_settings): no maps in the gallery nor the API
    no_maps = request.controlnet_no_detectmap
    if settings.control_net_no_detectmap if no_maps is None else no_maps:
        result.detected_maps = []
    app.extensions.after_job(result)  # before saving: an extension may post-process the images
    save_outputs(app, result)
    return result


def keeps_checkpoint(job: Job) -> bool:
    """A script's jobs (X/Y/Z cells) leave their checkpoint loaded for the next one, so a checkpoint axis switches
    once per value instead of twice per cell; the series' last job, or an interrupt, restores the chosen one."""
    index, count = job.series
    return index + 1 < count and not job.interrupted()


def restore_checkpoint(app: App) -> None:
    target = checkpoint_to_restore(app)
    if target:
        app.models.load(target)


def checkpoint_to_restore(app: App) -> str | None:
    """The chosen checkpoint (settings) while a per-request one is still resident; None when nothing to switch."""
    current, chosen = app.models.current, app.settings.sd_model_checkpoint
    if current is None or not chosen or current.title == chosen:
        return None
    try:
        return app.models.find_checkpoint(chosen).name
    except UnknownModelError:  # the chosen file is gone: keep what is loaded
        return None


def engine_options(app: App) -> EngineOptions:
    """The settings the engine reads, as one value."""
    settings = app.settings
    return EngineOptions(
        clip_skip=settings.CLIP_stop_at_last_layers, emphasis=settings.emphasis,
        pixel_upscale=app.upscalers.pixel_upscale(tile=settings.ESRGAN_tile, overlap=settings.ESRGAN_tile_overlap),
        img2img_fix_steps=settings.img2img_fix_steps, initial_noise_multiplier=settings.initial_noise_multiplier,
        inpainting_mask_weight=settings.inpainting_mask_weight, mask_apply_overlay=settings.mask_apply_overlay,
        img2img_upscaler=settings.upscaler_for_img2img,
        controlnet=controlnet_services(app.models.controlnets, app.models.annotators))


def save_outputs(app: App, result: GenerationResult) -> None:
    request, settings = result.request, app.settings
    if not (request.save_images and settings.samples_save):
        return
    root = app.paths.outputs_dir
    img2img = request.img2img is not None
    folder = output_folder(app, request, grid=False)
    for image, seed, infotext in zip(result.images, result.seeds, result.infotexts):
        result.saved_paths.append(app.saver.save_image(
            image, folder, seed=seed, infotext=infotext, fmt=settings.samples_format,
            pnginfo_enabled=settings.enable_pnginfo))
        app.extensions.image_saved(result.saved_paths[-1], infotext)
    wants_grid = request.save_grid and settings.grid_save and (len(result.images) > 1 or not settings.grid_only_if_multiple)
    if wants_grid and result.images:
        grid = result.grid or make_grid(result.images)
        result.saved_paths.append(app.saver.save_image(
            grid, output_folder(app, request, grid=True), seed=None, infotext=result.first_infotext,
            fmt=settings.samples_format, basename="grid", pnginfo_enabled=settings.enable_pnginfo))
        app.extensions.image_saved(result.saved_paths[-1], result.first_infotext)
    if img2img and settings.save_init_img:
        save_init_images(root / "init-images", request.img2img.init_images)  # not outputs: kept out of saved_paths


def output_folder(app: App, request: GenerationRequest, *, grid: bool) -> Path:
    """outputs/<txt2img|img2img>-images (or -grids), or the folder the settings name; dated with save_to_dirs."""
    settings = app.settings
    img2img = request.img2img is not None
    kind = "img2img" if img2img else request.mode  # the image input decides, whatever `mode` says
    if grid:
        override = settings.outdir_img2img_grids if img2img else settings.outdir_txt2img_grids
    else:
        override = settings.outdir_img2img_samples if img2img else settings.outdir_txt2img_samples
    category = f"{kind}-grids" if grid else f"{kind}-images"
    return _folder(app.paths.outputs_dir, override, category, settings.save_to_dirs)


def save_init_images(folder: Path, images: list[Image.Image]) -> list[Path]:
    """A1111 save_init_img: each init image once, named by the md5 of its pixels (its "Init image hash")."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in images:
        path = folder / f"{hashlib.md5(image.tobytes()).hexdigest()}.png"
        if not path.exists():
            image.save(path)
        paths.append(path)
    return paths


def _folder(root: Path, override: str, category: str, dated: bool) -> Path:
    base = Path(override) if override else root / category
    return dated_folder(base.parent, base.name) if dated else base
