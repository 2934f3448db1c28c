"""The Extras job (A1111 "Extras" tab and /sdapi/v1/extra-*-image routes): upscale images, blend two upscalers, save.

`run_extras(app, request)` validates and resolves upscaler names on the caller's thread (bad input raises a
ValueError before anything is queued), then runs on the app's job worker between generation jobs, so upscaling
never runs at the same time as a generation. Outputs go to outputs/extras-images
flat, `NNNNN.png` (`NNNNN-<name>.png` for named batch images), with the infotext in the PNG text chunk `extras`;
text chunks of the source image (its `parameters`) are kept, as A1111 does.
"""
from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.engine.image_codec import read_image_info
from modules.engine.images import sanitize_filename_part
from modules.engine.infotext import quote_value
from modules.engine.upscale import target_size, upscale_blend
from modules.models.upscalers import UpscalerRegistry

if TYPE_CHECKING:
    from modules.app import App

EXTRAS_INFO_KEY = "extras"
EXTRAS_CATEGORY = "extras-images"
RESIZE_BY, RESIZE_TO = 0, 1  # A1111 resize_mode: 0 = scale by upscaling_resize, 1 = to upscaling_resize_w × _h
MIN_FACTOR, MAX_FACTOR = 1.0, 8.0  # A1111's bounds for upscaling_resize
MAX_OUTPUT_PIXELS = 6144 * 6144  # per result image (≈ 38 MP; a 1536² image × 4)
MAX_IMAGES = 64


@dataclass(frozen=True)
class ExtrasImage:
    image: Image.Image
    name: str = ""  # the uploaded file's name (batch), used in the saved file name


@dataclass
class ExtrasRequest:
    """Field names follow A1111's API (`upscaler_2_visibility` is its `extras_upscaler_2_visibility`)."""

    images: list[ExtrasImage]
    resize_mode: int = RESIZE_BY
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0
    upscale_first: bool = False  # A1111: upscale before face restoration; there is no face restoration here
    save: bool = True

    def validate(self) -> None:
        """Raise ValueError for anything the job could not do; checks the output size of every image."""
        if not self.images:
            raise ValueError("no image to process")
        if len(self.images) > MAX_IMAGES:
            raise ValueError(f"at most {MAX_IMAGES} images per request, got {len(self.images)}")
        if self.resize_mode not in (RESIZE_BY, RESIZE_TO):
            raise ValueError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {self.resize_mode!r}")
        if not MIN_FACTOR <= self.upscaling_resize <= MAX_FACTOR:
            raise ValueError(f"upscaling_resize must be between {MIN_FACTOR:g} and {MAX_FACTOR:g}, "
                             f"got {self.upscaling_resize}")
        if self.resize_mode == RESIZE_TO and min(self.upscaling_resize_w, self.upscaling_resize_h) < 1:
            raise ValueError(f"target size must be at least 1x1, got "
                             f"{self.upscaling_resize_w}x{self.upscaling_resize_h}")
        if not 0.0 <= self.upscaler_2_visibility <= 1.0:
            raise ValueError(f"upscaler 2 visibility must be between 0 and 1, got {self.upscaler_2_visibility}")
        for item in self.images:
            _, (width, height) = self.output_size(item.image)
            if width * height > MAX_OUTPUT_PIXELS:
                raise ValueError(f"{item.name or 'image'}: the result would be {width}x{height} pixels; the limit "
                                 f"is {MAX_OUTPUT_PIXELS} pixels")

    def target(self) -> dict[str, Any]:
        """Keyword arguments for engine.upscale: scale=… or size=…, crop=…."""
        if self.resize_mode == RESIZE_TO:
            return {"size": (self.upscaling_resize_w, self.upscaling_resize_h), "crop": self.upscaling_crop}
        return {"scale": self.upscaling_resize}

    def output_size(self, image: Image.Image) -> tuple[tuple[int, int], tuple[int, int]]:
        return target_size(image.width, image.height, **self.target())

    @property
    def blends(self) -> bool:
        return self.upscaler_2 != "None" and self.upscaler_2_visibility > 0


@dataclass
class ExtrasResult:
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    saved_paths: list[Path] = field(default_factory=list)

    @property
    def html_info(self) -> str:
        """A1111 `plaintext_to_html` of the last image's infotext."""
        return plaintext_to_html(self.infotexts[-1]) if self.infotexts else ""


def plaintext_to_html(text: str) -> str:
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def extras_infotext(request: ExtrasRequest) -> str:
    """A1111 postprocessing info: 'Postprocess upscale by: 2, Postprocess upscaler: Lanczos, ...' ('' for None)."""
    if request.upscaler_1 == "None":
        return ""
    info: dict[str, Any] = {}
    if request.resize_mode == RESIZE_TO:
        info["Postprocess upscale to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
        if request.upscaling_crop:
            info["Postprocess crop to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
    else:
        info["Postprocess upscale by"] = f"{request.upscaling_resize:g}"
    info["Postprocess upscaler"] = request.upscaler_1
    if request.blends:
        info["Postprocess upscaler 2"] = request.upscaler_2
    return ", ".join(f"{key}: {quote_value(value)}" for key, value in info.items())


def source_text(image: Image.Image) -> dict[str, str]:
    """Text chunks of the source to carry over (its `parameters` included; an older `extras` is replaced)."""
    infotext, items = read_image_info(image)
    texts = {key: value for key, value in items.items() if key != EXTRAS_INFO_KEY}
    if infotext:
        texts["parameters"] = infotext
    return texts


def resolved(request: ExtrasRequest, upscalers: UpscalerRegistry) -> ExtrasRequest:
    """The request with canonical upscaler names; UnknownUpscalerError (a ValueError) lists the choices."""
    first = upscalers.find(request.upscaler_1).name
    second = upscalers.find(request.upscaler_2).name if request.upscaler_2 else "None"
    return dataclasses.replace(request, upscaler_1=first, upscaler_2=second)


# ---------------------------------------------------------------------------------------------------- the job


def upscale_one(image: Image.Image, request: ExtrasRequest, upscalers: UpscalerRegistry, *, tile: int,
                overlap: int) -> Image.Image:
    """One image through upscaler 1 (and the blend with upscaler 2); "None" as upscaler 1 leaves it as it is."""
    if request.upscaler_1 == "None":
        return image.copy()
    first = upscalers.upscaler(request.upscaler_1, tile=tile, overlap=overlap)
    second = upscalers.upscaler(request.upscaler_2, tile=tile, overlap=overlap) if request.blends else None
    return upscale_blend(image, first, second, request.upscaler_2_visibility, **request.target())


def process_extras(app: App, request: ExtrasRequest) -> ExtrasResult:
    """Runs on the worker: upscale every image, attach its text chunks, save when asked."""
    settings = app.settings
    infotext = extras_infotext(request)
    result = ExtrasResult()
    for item in request.images:
        texts = source_text(item.image)
        image = upscale_one(item.image, request, app.upscalers, tile=settings.ESRGAN_tile,
                            overlap=settings.ESRGAN_tile_overlap)
        image.info = {**texts, **({EXTRAS_INFO_KEY: infotext} if infotext else {})}  # for gallery downloads
        if request.save and settings.samples_save:
            result.saved_paths.append(save_extras_image(app, image, infotext, texts, item.name))
        result.images.append(image)
        result.infotexts.append(infotext)
    return result


def extras_folder(app: App) -> Path:
    override = app.settings.outdir_extras_samples
    return Path(override) if override else app.paths.outputs_dir / EXTRAS_CATEGORY


def save_extras_image(app: App, image: Image.Image, infotext: str, texts: dict[str, str], name: str) -> Path:
    """`NNNNN.png`, or `NNNNN-<name>.png` for a named upload (numbered, so an existing file is never replaced)."""
    settings = app.settings
    stem = name_stem(name)
    return app.saver.save_image(
        image, extras_folder(app), seed=None, infotext=infotext or None, fmt=settings.samples_format,
        suffix=f"-{stem}" if stem else "", pnginfo_enabled=settings.enable_pnginfo, info_key=EXTRAS_INFO_KEY,
        extra_text=texts)


def name_stem(name: str) -> str:
    """'C:\\in\\cat.final.png' or 'in/cat.final.png' → 'cat.final', sanitised as A1111 file names are."""
    return sanitize_filename_part(Path(PureWindowsPath(name).name).stem) if name else ""


@dataclass
class _Outcome:
    """What the worker hands back: a value or the exception, re-raised on the caller's thread with its type."""

    value: Any = None
    error: BaseException | None = None


def run_extras(app: App, request: ExtrasRequest) -> ExtrasResult:
    """Validate, resolve names, run on the job worker; ValueError for bad input, UpscalerLoadError for a bad file."""
    request = resolved(request, app.upscalers)
    request.validate()

    def work() -> _Outcome:
        try:
            return _Outcome(value=process_extras(app, request))
        except Exception as error:  # handed to the caller, who raises it with its own type
            return _Outcome(error=error)

    outcome: _Outcome | None = app.jobs.run_exclusive(work)
    if outcome is None:  # an interrupt dropped it from the queue before it started
        return ExtrasResult()
    if outcome.error is not None:
        raise outcome.error
    return outcome.value
