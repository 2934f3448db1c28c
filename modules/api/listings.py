"""Read-only lists clients fetch to fill their menus: samplers, schedulers, upscalers, styles, and the networks
this server does not have yet (hypernetworks, face restorers, ...) as correctly shaped empty answers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from modules.api.models import (
    EmbeddingsResponse,
    LatentUpscaleModeItem,
    LoraItem,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    UpscalerItem,
)
from modules.api.styles import read_styles
from modules.engine.generate import LATENT_UPSCALE_MODES
from modules.engine.samplers import sampler_list_for_api, schedule_list_for_api
from modules.models.manager import NoCheckpointError
from modules.models.upscalers import UpscalerRegistry

if TYPE_CHECKING:
    from modules.app import App

A1111_UPSCALER_SCALE = 4  # A1111 lists its built-in upscalers with scale 4
MODEL_UPSCALER_FAMILY = "ESRGAN"  # A1111's model_name for files in models/ESRGAN


def upscaler_items(registry: UpscalerRegistry) -> list[UpscalerItem]:
    """'None', 'Lanczos', 'Nearest', then one per model file (rescanned); model fields are null for built-ins."""
    return [UpscalerItem(name=entry.name, model_name=MODEL_UPSCALER_FAMILY if entry.path else None,
                         model_path=str(entry.path) if entry.path else None, model_url=None,
                         scale=entry.scale if entry.path else A1111_UPSCALER_SCALE)
            for entry in registry.refresh()]


def add_listing_routes(router: APIRouter, app: App) -> None:
    @router.get("/samplers", response_model=list[SamplerItem], summary="Samplers (A1111 names and aliases)")
    def samplers() -> list[dict]:
        return sampler_list_for_api()

    @router.get("/schedulers", response_model=list[SchedulerItem], summary="Schedule types")
    def schedulers() -> list[dict]:
        return schedule_list_for_api()

    @router.get("/upscalers", response_model=list[UpscalerItem], summary="Pixel upscalers (hires fix, extras)")
    def upscalers() -> list[UpscalerItem]:
        return upscaler_items(app.upscalers)

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscaleModeItem], summary="Latent upscalers")
    def latent_upscale_modes() -> list[LatentUpscaleModeItem]:
        return [LatentUpscaleModeItem(name=name) for name in LATENT_UPSCALE_MODES]

    @router.get("/prompt-styles", response_model=list[PromptStyleItem], summary="Styles from styles.csv")
    def prompt_styles() -> list[PromptStyleItem]:
        return [PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt)
                for s in read_styles(app.paths.styles_file)]

    add_embedding_routes(router, app)

    add_lora_routes(router, app)

    for path in ("/hypernetworks", "/face-restorers", "/realesrgan-models"):
        router.add_api_route(path, _empty_list, methods=["GET"], summary="Not available in this server: []")


def add_embedding_routes(router: APIRouter, app: App) -> None:
    """A1111 textual inversion listing (for the loaded checkpoint) and rescan."""

    @router.get("/embeddings", response_model=EmbeddingsResponse,
                summary="Textual inversion embeddings: loaded (fit the current model) and skipped (with the reason)")
    def embeddings() -> EmbeddingsResponse:
        try:
            model = app.models.model
        except NoCheckpointError:
            model = None  # no model to check against: every readable file is listed as loaded
        return EmbeddingsResponse(**app.embeddings.api_listing(model))

    @router.post("/refresh-embeddings", summary="Rescan the embeddings folder")
    def refresh_embeddings() -> None:
        app.embeddings.refresh()


def add_lora_routes(router: APIRouter, app: App) -> None:
    """A1111's built-in Lora extension routes: the files as last scanned, and a rescan."""

    @router.get("/loras", response_model=list[LoraItem], summary="LoRA files: name, alias, path, metadata")
    def loras() -> list[LoraItem]:
        return [LoraItem(name=entry.name, alias=entry.alias, path=str(entry.path), metadata=entry.metadata())
                for entry in app.loras.entries]

    @router.post("/refresh-loras", summary="Rescan models/Lora (and --lora-dir)")
    def refresh_loras() -> None:
        app.loras.refresh()


def _empty_list() -> list[Any]:
    return []
