"""The worker's job runner: settings → engine options, per-request checkpoint/VAE, generate, save, grid."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from modules.engine.generate import EngineOptions, generate
from modules.engine.images import dated_folder, make_grid
from modules.engine.result import GenerationResult
from modules.jobs import Job

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)


def run_job(app: App, job: Job) -> GenerationResult:
    request = job.request
    models = app.models
    previous = models.current
    if request.checkpoint:
        models.load(request.checkpoint)
    try:
        if request.vae is not None:
            models.set_vae(request.vae)
        model = models.model
        settings = app.settings
        if settings.live_previews_enable:
            job.preview_every, job.preview_decoder = max(settings.show_progress_every_n_steps, 1), model.preview
        result = generate(model, request, observer=job, options=engine_options(app))
    finally:
        # Per-request overrides are restored afterwards (A1111's override_settings_restore_afterwards default).
        if request.vae is not None:
            models.set_vae(app.settings.sd_vae)
        if request.checkpoint and previous is not None and models.current != previous:
            models.load(previous.name)
    if len(result.images) > 1 and settings.return_grid:
        result.grid = make_grid(result.images)
    save_outputs(app, result)
    return result


def engine_options(app: App) -> EngineOptions:
    """The settings the engine reads, as one value."""
    settings = app.settings
    return EngineOptions(
        clip_skip=settings.CLIP_stop_at_last_layers, emphasis=settings.emphasis,
        pixel_upscale=app.upscalers.pixel_upscale(tile=settings.ESRGAN_tile, overlap=settings.ESRGAN_tile_overlap),
        img2img_fix_steps=settings.img2img_fix_steps, initial_noise_multiplier=settings.initial_noise_multiplier,
        inpainting_mask_weight=settings.inpainting_mask_weight, mask_apply_overlay=settings.mask_apply_overlay,
        img2img_upscaler=settings.upscaler_for_img2img)


def save_outputs(app: App, result: GenerationResult) -> None:
    request, settings = result.request, app.settings
    if not (request.save_images and settings.samples_save):
        return
    root = app.paths.outputs_dir
    img2img = request.img2img is not None
    kind = "img2img" if img2img else request.mode  # the image input decides, whatever `mode` says
    samples_override = settings.outdir_img2img_samples if img2img else settings.outdir_txt2img_samples
    grids_override = settings.outdir_img2img_grids if img2img else settings.outdir_txt2img_grids
    folder = _folder(root, samples_override, f"{kind}-images", settings.save_to_dirs)
    for image, seed, infotext in zip(result.images, result.seeds, result.infotexts):
        result.saved_paths.append(app.saver.save_image(
            image, folder, seed=seed, infotext=infotext, fmt=settings.samples_format,
            pnginfo_enabled=settings.enable_pnginfo))
    wants_grid = request.save_grid and settings.grid_save and (len(result.images) > 1 or not settings.grid_only_if_multiple)
    if wants_grid and result.images:
        grid = result.grid or make_grid(result.images)
        grid_folder = _folder(root, grids_override, f"{kind}-grids", settings.save_to_dirs)
        result.saved_paths.append(app.saver.save_image(
            grid, grid_folder, seed=None, infotext=result.first_infotext, fmt=settings.samples_format,
            basename="grid", pnginfo_enabled=settings.enable_pnginfo))
    if img2img and settings.save_init_img:
        save_init_images(root / "init-images", request.img2img.init_images)  # not outputs: kept out of saved_paths


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
