"""Settings and model routes: options, sd-models, sd-vae, refresh/unload/reload, memory, cmd-flags."""
from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

import psutil
import torch
from fastapi import APIRouter, Body, HTTPException

from modules.api.convert import VAE_SPECIAL_CHOICES
from modules.api.models import MemoryResponse, SdModelItem, SdVaeItem
from modules.models.registry import ModelFile
from modules.settings import SettingsError

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)

REDACTED_FLAGS = ("gradio_auth", "api_auth")


def is_restricted_setting(name: str) -> bool:
    """Settings naming folders or file patterns: never changeable over HTTP (A1111 restricted_opts, security §4)."""
    return name.startswith("outdir_") or name.endswith(("_dir", "_path")) or "filename_pattern" in name


def current_options(app: App) -> dict[str, Any]:
    """Every setting; sd_model_checkpoint is the loaded checkpoint's title (the saved choice when none is loaded)."""
    values = app.settings.as_dict()
    current = app.models.current
    if current is not None:
        values["sd_model_checkpoint"] = current.title
        values["sd_checkpoint_hash"] = current.sha256
    return values


def apply_options(app: App, posted: dict[str, Any]) -> None:
    """POST /options. Keys sent back unchanged are no-ops (Open WebUI posts the whole dict); unknown keys are
    ignored; changing a restricted key is refused (403); an unknown checkpoint or VAE raises (→ 422)."""
    current = current_options(app)
    known = set(app.settings.as_dict())
    ignored = sorted(key for key in posted if key not in known)
    if ignored:
        log.info("options: ignoring unknown keys %s", ignored)
    changes = {key: value for key, value in posted.items() if key in known and current.get(key) != value}
    for key, value in changes.items():
        if isinstance(value, float) and not math.isfinite(value):  # json.loads accepts NaN and Infinity
            raise SettingsError(f"setting {key!r} must be a finite number, got {value!r}")
    restricted = sorted(key for key in changes if is_restricted_setting(key))
    if restricted:
        raise HTTPException(status_code=403, detail=f"settings {restricted} cannot be changed through the API")
    if "sd_model_checkpoint" in changes:
        value = changes["sd_model_checkpoint"]
        if not isinstance(value, str):
            raise SettingsError(f"setting 'sd_model_checkpoint' must be a string, got {value!r}")
        entry = app.models.find_checkpoint(value)
        if app.models.current is not None and entry.path == app.models.current.path:
            del changes["sd_model_checkpoint"]  # another id of the loaded checkpoint (hash, name)
        else:
            changes["sd_model_checkpoint"] = entry.title
    if "sd_vae" in changes:
        value = changes["sd_vae"]
        if not isinstance(value, str):
            raise SettingsError(f"setting 'sd_vae' must be a string, got {value!r}")
        changes["sd_vae"] = value if value in VAE_SPECIAL_CHOICES else app.models.find_vae(value).name
    if changes:
        app.update_settings(changes)


def checkpoint_item(entry: ModelFile) -> SdModelItem:
    return SdModelItem(title=entry.title, model_name=entry.model_name, hash=entry.short_hash, sha256=entry.sha256,
                       filename=str(entry.path), config=None)


def memory_report(app: App) -> MemoryResponse:
    """A1111 /memory shape: RAM of the machine and this process, CUDA from torch (or {"error": "unavailable"})."""
    system = psutil.virtual_memory()
    ram = {"free": system.available, "used": psutil.Process(os.getpid()).memory_info().rss, "total": system.total}
    return MemoryResponse(ram=ram, cuda=cuda_memory(), models=app.models.memory_stats())


def cuda_memory() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()

    def pair(name: str) -> dict[str, int]:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    return {"system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}}


def reload_checkpoint(app: App) -> None:
    """Reload the resident checkpoint; after unload-checkpoint, load the saved choice again (A1111 behaviour)."""
    if app.models.current is not None:
        app.models.reload()
    elif app.settings.sd_model_checkpoint:
        app.models.load(app.settings.sd_model_checkpoint)


def add_settings_routes(router: APIRouter, app: App) -> None:
    @router.get("/options", summary="Every setting (A1111 option names)")
    def get_options() -> dict[str, Any]:
        return current_options(app)

    @router.post("/options", summary="Change settings; sd_model_checkpoint switches the model synchronously")
    def set_options(body: dict[str, Any] = Body(...)) -> None:
        apply_options(app, body)

    @router.get("/sd-models", response_model=list[SdModelItem], summary="Checkpoints")
    def sd_models() -> list[SdModelItem]:
        return [checkpoint_item(entry) for entry in app.models.checkpoints]

    @router.post("/refresh-checkpoints", summary="Rescan the checkpoint folders")
    def refresh_checkpoints() -> None:
        app.models.refresh()

    @router.get("/sd-vae", response_model=list[SdVaeItem], summary="VAE files in models/VAE")
    def sd_vae() -> list[SdVaeItem]:
        return [SdVaeItem(model_name=entry.name, filename=str(entry.path)) for entry in app.models.vaes]

    @router.post("/refresh-vae", summary="Rescan models/VAE")
    def refresh_vae() -> None:
        app.models.refresh()

    @router.post("/unload-checkpoint", summary="Free the loaded checkpoint (the next job loads it again)")
    def unload_checkpoint() -> None:
        app.jobs.run_exclusive(app.models.unload)

    @router.post("/reload-checkpoint", summary="Load the current checkpoint again")
    def reload_checkpoint_route() -> None:
        app.jobs.run_exclusive(lambda: reload_checkpoint(app))

    @router.get("/memory", response_model=MemoryResponse, summary="RAM and CUDA memory")
    def memory() -> MemoryResponse:
        return memory_report(app)

    @router.get("/cmd-flags", summary="Command-line flags (credentials redacted)")
    def cmd_flags() -> dict[str, Any]:
        flags = app.options.as_dict()
        for name in REDACTED_FLAGS:
            if flags.get(name):
                flags[name] = "<redacted>"
        return flags
