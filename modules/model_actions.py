"""Model-file actions of the running app (Models tab): download into models/, merge checkpoints, then rescan.

They need the App (its folders, registries and job worker), so they live above modules/models/, which only
knows files and weights.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from modules.models.download import CONTENT_KINDS, DownloadResult, download_file, move_into
from modules.models.download import ProgressCallback as DownloadProgressCallback
from modules.models.download_names import (FOLDER_KINDS, DownloadError, contained_path, download_refusal,
                                           folder_for_kind, guess_kind)
from modules.models.file_info import component_kind_of
from modules.models.merge import (WEIGHTED_SUM, MergeError, MergeResult, check_request, merge_checkpoints,
                                  output_name)
from modules.models.merge import ProgressCallback as MergeProgressCallback

if TYPE_CHECKING:
    from modules.app import App

def download_model(app: App, url: str, kind: str = "auto", *, file_name: str | None = None, sha256: str | None = None,
                   on_progress: DownloadProgressCallback | None = None, cancel: threading.Event | None = None,
                   client: httpx.Client | None = None) -> DownloadResult:
    """Download into the folder for `kind` ("auto": guessed from the name, then from the file's content for
    `.safetensors`), then refresh the registry that lists that folder."""
    refusal = download_refusal(app.options)
    if refusal:
        raise DownloadError(refusal)
    if kind not in FOLDER_KINDS:
        raise DownloadError(f"unknown model folder {kind!r}; choose one of {', '.join(FOLDER_KINDS)}")

    def folder(name: str) -> Path:
        path = folder_for_kind(app.paths, guess_kind(name) if kind == "auto" else kind)
        path.mkdir(parents=True, exist_ok=True)
        return path

    result = download_file(url, folder, file_name=file_name or None, sha256=sha256, on_progress=on_progress,
                           cancel=cancel, client=client)
    result.kind = kind if kind != "auto" else guess_kind(result.path.name)
    if kind == "auto":
        content_kind = CONTENT_KINDS.get(component_kind_of(result.path))
        if content_kind and content_kind != result.kind:
            result.path = move_into(result.path, folder_for_kind(app.paths, content_kind))
            result.kind = content_kind
    refresh_registry(app, result.kind)
    return result




def refresh_registry(app: App, kind: str) -> None:
    """Rescan what lists `kind`'s folder (ControlNet's cache lives on the model manager)."""
    if kind in ("checkpoint", "vae"):
        app.models.refresh()
        return
    owners = {"esrgan": (app, "upscalers"), "lora": (app, "loras"), "embeddings": (app, "embeddings"),
              "controlnet": (app.models, "controlnets")}
    owner, attribute = owners.get(kind, (app, ""))
    registry = getattr(owner, attribute, None)
    if registry is not None and callable(getattr(registry, "refresh", None)):
        registry.refresh()


def merge_into_models(app: App, primary: str, secondary: str | None, tertiary: str | None = None, *,
                      method: str = WEIGHTED_SUM, multiplier: float = 0.5, vae: str | None = None, fp16: bool = False,
                      custom_name: str = "", overwrite: bool = False,
                      on_progress: MergeProgressCallback | None = None) -> MergeResult:
    """Merge checkpoints known to the model manager into models/Stable-diffusion, on the job worker (between
    generations); then rescan so the merged file is listed and loadable."""
    models = app.models
    entries = [models.find_checkpoint(name) if name else None for name in (primary, secondary, tertiary)]
    if entries[0] is None:
        raise MergeError("choose a primary model (A)")
    paths = [entry.path if entry else None for entry in entries]
    vae_path = models.find_vae(vae).path if vae and vae not in ("None", "") else None
    folder = app.paths.ckpt_dirs[0]
    try:
        output = contained_path(folder, output_name(paths[0], paths[1], method, multiplier, custom_name))
    except DownloadError as error:
        raise MergeError(str(error)) from None
    check_request(paths[0], paths[1], paths[2], output, method, multiplier, overwrite)
    current = models.current
    if current is not None and current.path.resolve() == output.resolve():
        raise MergeError(f"{output.name} is the loaded checkpoint: load another one before overwriting it")
    hashes = {entry.path: entry.sha256 for entry in entries if entry is not None and entry.sha256}

    def work() -> MergeResult | Exception:
        try:
            for entry in (e for e in models.checkpoints if e.path.resolve() == output):
                models.unload_checkpoint(entry.name)  # drop a cached copy of the file being replaced
            return merge_checkpoints(paths[0], paths[1], output, tertiary=paths[2], method=method,
                                     multiplier=multiplier, vae=vae_path, fp16=fp16, overwrite=overwrite,
                                     hashes=hashes, on_progress=on_progress)
        except (MergeError, OSError, ValueError) as error:
            return error  # re-raised in the caller with its own type and message

    outcome = app.jobs.run_exclusive(work)
    if isinstance(outcome, Exception):
        raise outcome
    models.refresh()
    outcome.entry = models.find_checkpoint(outcome.path.relative_to(folder.resolve()).as_posix())
    return outcome
