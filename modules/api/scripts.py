"""Selectable scripts of the API (A1111 `script_name` + positional `script_args`): "Poor man's outpainting".

A1111 lists scripts by their lower-cased title and matches `script_name` case-insensitively; a script_args list
shorter than the script's arguments keeps the UI defaults for the rest, as A1111 does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.api.models import ScriptArg, ScriptInfo, ScriptsList
from modules.engine.outpaint import OUTPAINT_DIRECTIONS, poor_mans_outpainting_request
from modules.engine.request import MASKED_CONTENT, GenerationRequest, RequestError

POOR_MANS_OUTPAINTING = "Poor man's outpainting"
TXT2IMG_SCRIPTS: tuple[str, ...] = ()
IMG2IMG_SCRIPTS: tuple[str, ...] = (POOR_MANS_OUTPAINTING,)


@dataclass(frozen=True)
class PoorMansArgs:
    """A1111's script arguments in order, with its UI defaults."""

    pixels: int = 128  # "Pixels to expand", 8..256 step 8 in A1111's UI
    mask_blur: int = 4
    inpainting_fill: int = 0  # index into MASKED_CONTENT ("fill")
    directions: tuple[str, ...] = OUTPAINT_DIRECTIONS


def scripts_list() -> ScriptsList:
    return ScriptsList(txt2img=[title.lower() for title in TXT2IMG_SCRIPTS],
                       img2img=[title.lower() for title in IMG2IMG_SCRIPTS])


def script_infos() -> list[ScriptInfo]:
    """/sdapi/v1/script-info: one entry per script with its positional arguments (A1111 ScriptInfo shape)."""
    defaults = PoorMansArgs()
    arguments = [
        ScriptArg(label="Pixels to expand", value=defaults.pixels, minimum=8, maximum=256, step=8),
        ScriptArg(label="Mask blur", value=defaults.mask_blur, minimum=0, maximum=32, step=1),
        ScriptArg(label="Masked content", value=MASKED_CONTENT[defaults.inpainting_fill], choices=list(MASKED_CONTENT)),
        ScriptArg(label="Outpainting direction", value=list(defaults.directions), choices=list(OUTPAINT_DIRECTIONS)),
    ]
    return [ScriptInfo(name=POOR_MANS_OUTPAINTING.lower(), is_alwayson=False, is_img2img=True, args=arguments)]


def find_script(name: str | None, available: tuple[str, ...]) -> str | None:
    """The script's title for `name` (any case); None when no script is asked for; RequestError when unknown."""
    if not name:
        return None
    for title in available:
        if title.lower() == name.strip().lower():
            return title
    listed = ", ".join(available) or "none"
    raise RequestError(f"script {name!r} not found; available scripts: {listed}")


def reject_alwayson_scripts(alwayson_scripts: dict[str, Any]) -> None:
    """A1111 answers 422 for always-on scripts it does not have; no always-on scripts are registered yet."""
    if alwayson_scripts:
        names = ", ".join(sorted(alwayson_scripts))
        raise RequestError(f"always-on script(s) {names} not found; available: none")


def run_img2img_script(title: str, script_args: list[Any], request: GenerationRequest,
                       image: Image.Image) -> GenerationRequest:
    """The request the script makes of the img2img request and its first init image."""
    if title != POOR_MANS_OUTPAINTING:
        raise RequestError(f"script {title!r} cannot run here")
    args = poor_mans_args(script_args)
    return poor_mans_outpainting_request(request, image, args.pixels, args.mask_blur, args.inpainting_fill,
                                         list(args.directions))


def poor_mans_args(values: list[Any]) -> PoorMansArgs:
    """Positional [pixels, mask_blur, inpainting_fill, directions]; missing trailing ones keep the defaults."""
    if len(values) > 4:
        raise RequestError(f"Poor man's outpainting takes 4 script_args (pixels, mask_blur, inpainting_fill, "
                           f"direction), got {len(values)}")
    defaults = PoorMansArgs()
    given = list(values) + [None] * (4 - len(values))
    pixels = defaults.pixels if given[0] is None else _whole_number(given[0], "pixels")
    mask_blur = defaults.mask_blur if given[1] is None else _whole_number(given[1], "mask_blur")
    fill = defaults.inpainting_fill if given[2] is None else _masked_content_index(given[2])
    directions = defaults.directions if given[3] is None else _directions(given[3])
    return PoorMansArgs(pixels, mask_blur, fill, directions)


def _whole_number(value: Any, name: str) -> int:
    # JSON numbers may arrive as 64.0; booleans are ints in Python but not a pixel count.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise RequestError(f"Poor man's outpainting {name} must be a whole number, got {value!r}")
    return int(value)


def _masked_content_index(value: Any) -> int:
    """A1111 sends the radio's index; a label ("original") is accepted too."""
    if isinstance(value, str) and value.strip().lower() in MASKED_CONTENT:
        return MASKED_CONTENT.index(value.strip().lower())
    return _whole_number(value, "inpainting_fill")


def _directions(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestError(f"Poor man's outpainting direction must be a list of {', '.join(OUTPAINT_DIRECTIONS)}, "
                           f"got {value!r}")
    return tuple(item.strip().lower() for item in value)
