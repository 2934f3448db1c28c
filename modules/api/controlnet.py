"""The A1111 ControlNet extension's routes (API version 3): /controlnet/version, model_list, module_list,
control_types, settings, detect. Units in txt2img/img2img arrive through `alwayson_scripts.controlnet` (the core
script in modules/controlnet_units.py, whose `controlnet_units_from_api` is re-exported here).

Differences from the extension, on purpose: module_list names only the preprocessors that can run here (those
whose annotator weights are installed); `unavailable` says what the others need. With --api-auth these routes
require the same credentials as /sdapi.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from modules.api.security import basic_auth_dependency, parse_credentials
from modules.controlnet_units import controlnet_units_from_api, detected_maps_to_send, slider_value
from modules.engine.images import decode_image_base64, encode_image_base64
from modules.engine.preprocessors import RESOLUTION, PreprocessorError, PreprocessorSpec, find_preprocessor, to_array

if TYPE_CHECKING:
    from modules.app import App

__all__ = ["add_controlnet_routes", "controlnet_units_from_api", "detected_maps_to_send"]

API_VERSION = 3
MAX_DETECT_IMAGES = 16
# /controlnet/control_types: tab → (preprocessor ids shown, words a model name contains, default preprocessor)
CONTROL_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "Canny": (("canny", "invert"), ("canny",), "canny"),
    "Depth": (("depth", "depth_zoe", "depth_leres"), ("depth",), "depth"),
    "NormalMap": (("normal_bae",), ("normal",), "normal_bae"),
    "OpenPose": (("openpose", "openpose_hand", "openpose_face", "openpose_faceonly", "openpose_full"),
                 ("openpose",), "openpose_full"),
    "MLSD": (("mlsd", "invert"), ("mlsd",), "mlsd"),
    "Lineart": (("lineart_standard", "lineart", "lineart_coarse", "lineart_anime", "invert"), ("lineart",),
                "lineart_standard"),
    "SoftEdge": (("hed", "pidinet"), ("softedge", "hed", "pidi"), "pidinet"),
    "Shuffle": (("shuffle",), ("shuffle",), "shuffle"),
}


def module_name(spec: PreprocessorSpec, alias_names: bool) -> str:
    return spec.label if alias_names else spec.name


def module_list(app: App, alias_names: bool) -> dict[str, Any]:
    statuses = app.models.annotators.statuses()
    available = [status.spec for status in statuses if status.available]
    return {
        "module_list": [module_name(spec, alias_names) for spec in available],
        "module_detail": {module_name(spec, alias_names): {"model_free": False,
                                                           "sliders": [slider.as_api() for slider in spec.sliders]}
                          for spec in available},
        "unavailable": {module_name(status.spec, alias_names): status.help_text(app.models.annotators.folder)
                        for status in statuses if not status.available},
    }


def control_types(app: App) -> dict[str, Any]:
    available = {spec.name: spec for spec in app.models.annotators.available()}
    titles = app.models.controlnets.titles()
    types = {"All": {"module_list": [spec.label for spec in available.values()], "model_list": ["None", *titles],
                     "default_option": "none", "default_model": "None"}}
    for tab, (modules, words, default) in CONTROL_TYPES.items():
        models = [title for title in titles if any(word in title.lower() for word in words)]
        shown = [available[name].label for name in modules if name in available]
        types[tab] = {"module_list": ["none", *shown], "model_list": ["None", *models],
                      "default_option": available[default].label if default in available else "none",
                      "default_model": models[0] if models else "None"}
    return {"control_types": types}


def detect(app: App, module: str, images: list[str], processor_res: float, threshold_a: float,
           threshold_b: float) -> dict[str, Any]:
    """The extension's /controlnet/detect: each image through the preprocessor at processor_res (−1 = 512)."""
    try:
        spec = find_preprocessor(module)
    except PreprocessorError:
        raise HTTPException(status_code=422, detail="Module not available") from None
    if not images:
        raise HTTPException(status_code=422, detail="No image selected")
    if len(images) > MAX_DETECT_IMAGES:
        raise HTTPException(status_code=422, detail=f"at most {MAX_DETECT_IMAGES} images per request")
    annotators = app.models.annotators
    annotators.require(spec.name)  # PreprocessorError (missing weights, with where to put them) → 422
    resolution = slider_value(RESOLUTION, processor_res)
    thresholds = [slider_value(slider, value) for slider, value in zip(spec.thresholds, (threshold_a, threshold_b))]
    thresholds += [None, None]
    results = []
    for data in images:
        detected = annotators.run(spec.name, to_array(decode_image_base64(data)),
                                  resolution=int(resolution or RESOLUTION.value), threshold_a=thresholds[0],
                                  threshold_b=thresholds[1])
        results.append(encode_image_base64(Image.fromarray(detected), "png"))
    return {"info": "Success", "images": results}


def add_controlnet_routes(fastapi_app: FastAPI, app: App) -> None:
    credentials = parse_credentials(app.options.api_auth, "--api-auth")
    dependencies = [basic_auth_dependency(credentials)] if credentials else []
    router = APIRouter(prefix="/controlnet", tags=["controlnet"], dependencies=dependencies)

    @router.get("/version", summary="ControlNet API version (the A1111 extension's)")
    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    @router.get("/model_list", summary="ControlNet models: 'name [hash]'")
    def model_list(update: bool = True) -> dict[str, list[str]]:
        if update:
            app.models.controlnets.refresh()
        return {"model_list": app.models.controlnets.titles()}

    @router.get("/module_list", summary="Preprocessors that can run here, with their sliders")
    def modules(alias_names: bool = False) -> dict[str, Any]:
        return module_list(app, alias_names)

    @router.get("/control_types", summary="Preprocessors and models by control type")
    def types() -> dict[str, Any]:
        return control_types(app)

    @router.get("/settings", summary="ControlNet settings")
    def settings() -> dict[str, int]:
        return {"control_net_unit_count": app.settings.control_net_unit_count}

    @router.post("/detect", summary="Run a preprocessor on images")
    async def detect_route(controlnet_module: str = Body("none"), controlnet_input_images: list[str] = Body([]),
                           controlnet_processor_res: float = Body(-1), controlnet_threshold_a: float = Body(-1),
                           controlnet_threshold_b: float = Body(-1), controlnet_masks: list[str] = Body([]),
                           low_vram: bool = Body(False), controlnet_images: list[str] = Body([])) -> dict[str, Any]:
        # webuiapi sends `controlnet_images`; the extension reads `controlnet_input_images`: accept both
        images = controlnet_input_images or controlnet_images
        return await run_in_threadpool(detect, app, controlnet_module, images, controlnet_processor_res,
                                       controlnet_threshold_a, controlnet_threshold_b)

    fastapi_app.include_router(router)
