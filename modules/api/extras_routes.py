"""/sdapi/v1/extra-single-image and /extra-batch-images (A1111 shapes): upscale base64 images with the Extras job.

Bad input answers 422 before anything is queued: malformed or oversized images (the shared decoder), an unknown
upscaler (the message lists the choices), a result larger than the extras limit. Face restoration fields are
accepted and ignored (this server has no face restorers). As in A1111 the API does not save by default;
`save_images: true` saves to outputs/extras-images like the Extras tab.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from modules.api.models import ApiRequest
from modules.engine.images import decode_image_base64, encode_image_base64
from modules.extras import (
    EXTRAS_INFO_KEY,
    MAX_FACTOR,
    MAX_IMAGES,
    MIN_FACTOR,
    ExtrasImage,
    ExtrasRequest,
    ExtrasResult,
    run_extras,
)

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)


class ExtrasBaseRequest(ApiRequest):
    """A1111 ExtrasBaseRequest."""

    resize_mode: int = Field(0, ge=0, le=1, description="0 = scale by upscaling_resize, 1 = to upscaling_resize_w×h")
    show_extras_results: bool = Field(True, description="accepted; results are always returned")
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0, description="accepted, not supported (ignored)")
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0, description="accepted, not supported (ignored)")
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0, description="accepted, not supported (ignored)")
    upscaling_resize: float = Field(2.0, ge=MIN_FACTOR, le=MAX_FACTOR)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", description="a name from /sdapi/v1/upscalers")
    upscaler_2: str = Field("None", description="a name from /sdapi/v1/upscalers")
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False
    save_images: bool = Field(False, description="not in A1111: also save to outputs/extras-images")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image, with or without a data:image/...;base64, prefix")


class FileData(ApiRequest):
    data: str = Field(description="base64 image")
    name: str = Field("", max_length=1024, description="file name")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(max_length=MAX_IMAGES, description="images with their file names")


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = Field(description="the infotext as HTML")
    image: str = Field(description="base64 PNG (the output format setting) with the `extras` text chunk")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


def extras_request(body: ExtrasBaseRequest, images: list[ExtrasImage]) -> ExtrasRequest:
    if body.gfpgan_visibility or body.codeformer_visibility:
        log.info("extras: face restoration is not available; gfpgan/codeformer visibility ignored")
    return ExtrasRequest(
        images=images, resize_mode=body.resize_mode, upscaling_resize=body.upscaling_resize,
        upscaling_resize_w=body.upscaling_resize_w, upscaling_resize_h=body.upscaling_resize_h,
        upscaling_crop=body.upscaling_crop, upscaler_1=body.upscaler_1, upscaler_2=body.upscaler_2,
        upscaler_2_visibility=body.extras_upscaler_2_visibility, upscale_first=body.upscale_first,
        save=body.save_images)


def decode_images(items: list[tuple[str, str]]) -> list[ExtrasImage]:
    """(base64, name) pairs → images; ImageDecodeError (→ 422) names the bad item in a batch."""
    images = []
    for index, (data, name) in enumerate(items):
        try:
            images.append(ExtrasImage(decode_image_base64(data), name))
        except ValueError as error:
            if len(items) == 1:
                raise
            raise type(error)(f"imageList[{index}] ({name or 'unnamed'}): {error}") from None
    return images


def encode_outputs(app: App, result: ExtrasResult) -> list[str]:
    settings = app.settings
    encoded = []
    for image, infotext in zip(result.images, result.infotexts):
        texts = {key: value for key, value in image.info.items() if key != EXTRAS_INFO_KEY} \
            if settings.enable_pnginfo else None
        encoded.append(encode_image_base64(image, settings.samples_format,
                                           infotext if settings.enable_pnginfo and infotext else None,
                                           info_key=EXTRAS_INFO_KEY, extra_text=texts))
    return encoded


def single_image(app: App, body: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
    request = extras_request(body, decode_images([(body.image, "")]))
    result = run_extras(app, request)
    images = encode_outputs(app, result)
    return ExtrasSingleImageResponse(html_info=result.html_info, image=images[0] if images else "")


def batch_images(app: App, body: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
    request = extras_request(body, decode_images([(item.data, item.name) for item in body.imageList]))
    result = run_extras(app, request)
    return ExtrasBatchImagesResponse(html_info=result.html_info, images=encode_outputs(app, result))


def add_extras_routes(router: APIRouter, app: App) -> None:
    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse,
                 summary="Upscale one image (Extras)")
    async def extra_single_image(body: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
        return await run_in_threadpool(single_image, app, body)

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse,
                 summary="Upscale several images (Extras)")
    async def extra_batch_images(body: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
        return await run_in_threadpool(batch_images, app, body)
