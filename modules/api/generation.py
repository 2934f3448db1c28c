"""Generation routes: txt2img, img2img, progress, interrupt, skip, png-info.

Jobs run on the App's single worker; a request handler only submits and then awaits completion by polling the job
(no thread is held while waiting), so progress/interrupt stay responsive however many requests are queued.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from modules.api.convert import img2img_request, txt2img_request
from modules.api.models import (
    GenerationApiRequest,
    ImageResponse,
    Img2ImgRequest,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    Txt2ImgRequest,
)
from modules.api.scripts import submit_generation
from modules.api.settings_routes import apply_options
from modules.controlnet_units import detected_maps_to_send
from modules.engine.images import decode_image_base64, encode_image_base64, read_image_info
from modules.engine.infotext import parse_infotext
from modules.engine.result import GenerationResult
from modules.jobs import Job

if TYPE_CHECKING:
    from modules.app import App

JOB_POLL_SECONDS = 0.02


async def wait_for(job: Job) -> Any:
    while not job.done:
        await asyncio.sleep(JOB_POLL_SECONDS)
    return job.wait(0)


def echoed_parameters(body: GenerationApiRequest) -> dict[str, Any]:
    """The request with defaults; like A1111, img2img echoes init_images and mask only with include_init_images."""
    parameters = body.model_dump(mode="json")
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        parameters["init_images"] = parameters["mask"] = None
    return parameters


def encode_result(app: App, body: GenerationApiRequest, result: GenerationResult | None) -> ImageResponse:
    """A1111 response: the grid first (when made), infotexts embedded, info as a JSON string."""
    settings = app.settings
    if result is None:  # interrupted while still queued
        return ImageResponse(images=[], parameters=echoed_parameters(body), info=json.dumps({}))
    pairs = list(zip(result.images, result.infotexts))
    info = dict(result.info)
    if result.grid is not None:
        pairs.insert(0, (result.grid, result.first_infotext))
        info["infotexts"] = [result.first_infotext, *info.get("infotexts", [])]
        info["index_of_first_image"] = 1
    if result.warnings:
        info["warnings"] = list(result.warnings)
    pairs += [(image, None) for image in detected_maps_to_send(body.alwayson_scripts, result)]  # ControlNet maps last
    images = [encode_image_base64(image, settings.samples_format, text if settings.enable_pnginfo else None)
              for image, text in pairs] if body.send_images else []
    return ImageResponse(images=images, parameters=echoed_parameters(body), info=json.dumps(info, default=str))


def progress_of(job: Job | None, *, skip_current_image: bool) -> ProgressResponse:
    if job is None or job.action is not None or job.done:  # idle (a model switch is not a generation job)
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState())
    snapshot = job.snapshot()
    started = time.strftime("%Y%m%d%H%M%S", time.localtime(job.started or job.created))
    state = ProgressState(skipped=snapshot.skipped, interrupted=snapshot.interrupted, job=job.id,
                          job_count=snapshot.job_count, job_timestamp=started, job_no=snapshot.job_no,
                          sampling_step=snapshot.step, sampling_steps=snapshot.steps)
    image = None
    if snapshot.preview is not None and not skip_current_image:
        image = encode_image_base64(snapshot.preview, "png")
    return ProgressResponse(progress=snapshot.fraction, eta_relative=snapshot.eta_seconds, state=state,
                            current_image=image, textinfo=snapshot.textinfo)


def png_info(body: PngInfoRequest) -> PngInfoResponse:
    if not body.image.strip():
        return PngInfoResponse(info="", items={}, parameters={})  # A1111 answers an empty image with empty info
    image = decode_image_base64(body.image)
    infotext, items = read_image_info(image)
    return PngInfoResponse(info=infotext or "", items=items, parameters=parse_infotext(infotext) if infotext else {})


def add_generation_routes(router: APIRouter, app: App) -> None:
    @router.post("/txt2img", response_model=ImageResponse, summary="Text to image")
    async def txt2img(body: Txt2ImgRequest) -> ImageResponse:
        if body.override_settings and not body.override_settings_restore_afterwards:
            await run_in_threadpool(apply_options, app, body.override_settings)  # A1111 keeps them afterwards
        request = await run_in_threadpool(txt2img_request, body, app)
        job = await run_in_threadpool(submit_generation, app, body, request, "txt2img")  # or its script_name
        result = await wait_for(job)  # None when an interrupt dropped it from the queue
        return await run_in_threadpool(encode_result, app, body, result)

    @router.post("/img2img", response_model=ImageResponse, summary="Image to image, inpainting, outpainting scripts")
    async def img2img(body: Img2ImgRequest) -> ImageResponse:
        if not body.init_images:
            raise HTTPException(status_code=404, detail="Init image not found")  # A1111's answer
        if body.override_settings and not body.override_settings_restore_afterwards:
            await run_in_threadpool(apply_options, app, body.override_settings)
        request = await run_in_threadpool(img2img_request, body, app)  # decodes the images: 422 before queueing
        job = await run_in_threadpool(submit_generation, app, body, request, "img2img")
        result = await wait_for(job)
        return await run_in_threadpool(encode_result, app, body, result)

    @router.get("/progress", response_model=ProgressResponse, summary="Progress of the running job")
    def progress(skip_current_image: bool = False) -> ProgressResponse:
        return progress_of(app.jobs.current, skip_current_image=skip_current_image)

    @router.post("/interrupt", summary="Stop the running job (it returns what it finished) and drop queued ones")
    async def interrupt() -> dict:
        app.jobs.interrupt()
        return {}

    @router.post("/skip", summary="Skip the current batch of the running job")
    async def skip() -> None:
        app.jobs.skip()

    @router.post("/png-info", response_model=PngInfoResponse, summary="Read the infotext of an image")
    def png_info_route(body: PngInfoRequest) -> PngInfoResponse:
        return png_info(body)
