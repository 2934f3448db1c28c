"""The worker's job runner: settings → engine options, per-request checkpoint/VAE, generate, save, grid."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

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
        result = generate(model, request, observer=job,
                          options=EngineOptions(clip_skip=settings.CLIP_stop_at_last_layers, emphasis=settings.emphasis))
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


def save_outputs(app: App, result: GenerationResult) -> None:
    request, settings = result.request, app.settings
    if not (request.save_images and settings.samples_save):
        return
    root = app.paths.outputs_dir
    folder = _folder(root, settings.outdir_txt2img_samples, f"{request.mode}-images", settings.save_to_dirs)
    for image, seed, infotext in zip(result.images, result.seeds, result.infotexts):
        result.saved_paths.append(app.saver.save_image(
            image, folder, seed=seed, infotext=infotext, fmt=settings.samples_format,
            pnginfo_enabled=settings.enable_pnginfo))
    wants_grid = request.save_grid and settings.grid_save and (len(result.images) > 1 or not settings.grid_only_if_multiple)
    if wants_grid and result.images:
        grid = result.grid or make_grid(result.images)
        grid_folder = _folder(root, settings.outdir_txt2img_grids, f"{request.mode}-grids", settings.save_to_dirs)
        result.saved_paths.append(app.saver.save_image(
            grid, grid_folder, seed=None, infotext=result.first_infotext, fmt=settings.samples_format,
            basename="grid", pnginfo_enabled=settings.enable_pnginfo))


def _folder(root: Path, override: str, category: str, dated: bool) -> Path:
    base = Path(override) if override else root / category
    return dated_folder(base.parent, base.name) if dated else base
