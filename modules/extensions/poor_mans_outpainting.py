"""A1111's "Poor man's outpainting" img2img script on the Script interface (a core script).

Positional args (A1111's): pixels, mask_blur, inpainting_fill (index into MASKED_CONTENT, or its label), direction
list. script_args shorter than that keep the UI defaults for the rest, as A1111 does. The request-building itself
is modules.engine.outpaint.poor_mans_outpainting_request.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modules.engine.outpaint import MAX_EXTEND, OUTPAINT_DIRECTIONS, poor_mans_outpainting_request
from modules.engine.request import MASKED_CONTENT, GenerationRequest, RequestError
from modules.engine.result import GenerationResult
from modules.extensions.api import IMG2IMG, AppView, Script, ScriptArg, ScriptContext

TITLE = "Poor man's outpainting"


@dataclass(frozen=True)
class PoorMansArgs:
    """A1111's script arguments in order, with its UI defaults."""

    pixels: int = 128  # "Pixels to expand", 8..256 step 8 in A1111's UI (the API takes up to MAX_EXTEND)
    mask_blur: int = 4
    inpainting_fill: int = 0  # index into MASKED_CONTENT ("fill")
    directions: tuple[str, ...] = OUTPAINT_DIRECTIONS


class PoorMansOutpainting(Script):
    title = TITLE
    show_for = (IMG2IMG,)
    args = (
        ScriptArg("Pixels to expand", PoorMansArgs.pixels, minimum=8, maximum=256, step=8),
        ScriptArg("Mask blur", PoorMansArgs.mask_blur, minimum=0, maximum=32, step=1),
        ScriptArg("Masked content", MASKED_CONTENT[PoorMansArgs.inpainting_fill], choices=MASKED_CONTENT),
        ScriptArg("Outpainting direction", list(OUTPAINT_DIRECTIONS), choices=OUTPAINT_DIRECTIONS),
    )

    def parse_args(self, values: Sequence[Any], app: AppView) -> PoorMansArgs:
        return poor_mans_args(values)

    def validate(self, request: GenerationRequest, args: PoorMansArgs, app: AppView) -> None:
        self.outpaint_request(request, args).validate()  # canvas size, directions, blur: 422 before queueing

    def run(self, ctx: ScriptContext, request: GenerationRequest, args: PoorMansArgs) -> GenerationResult:
        return ctx.run(self.outpaint_request(request, args))

    @staticmethod
    def outpaint_request(request: GenerationRequest, args: PoorMansArgs) -> GenerationRequest:
        """The inpaint request the script makes of the img2img request and its first init image."""
        if request.img2img is None or not request.img2img.init_images:
            raise RequestError(f"{TITLE} needs an img2img input image")
        return poor_mans_outpainting_request(request, request.img2img.init_images[0], args.pixels, args.mask_blur,
                                             args.inpainting_fill, list(args.directions))


def poor_mans_args(values: Sequence[Any]) -> PoorMansArgs:
    """Positional [pixels, mask_blur, inpainting_fill, directions]; missing trailing ones keep the defaults."""
    if len(values) > 4:
        raise RequestError(f"{TITLE} takes 4 script_args (pixels, mask_blur, inpainting_fill, direction), "
                           f"got {len(values)}")
    defaults = PoorMansArgs()
    given = list(values) + [None] * (4 - len(values))
    pixels = defaults.pixels if given[0] is None else _whole_number(given[0], "pixels")
    if not 0 < pixels <= MAX_EXTEND:
        raise RequestError(f"{TITLE} pixels must be between 1 and {MAX_EXTEND}, got {pixels}")
    mask_blur = defaults.mask_blur if given[1] is None else _whole_number(given[1], "mask_blur")
    fill = defaults.inpainting_fill if given[2] is None else _masked_content_index(given[2])
    directions = defaults.directions if given[3] is None else _directions(given[3])
    return PoorMansArgs(pixels, mask_blur, fill, directions)


def _whole_number(value: Any, name: str) -> int:
    # JSON numbers may arrive as 64.0; booleans are ints in Python but not a pixel count.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise RequestError(f"{TITLE} {name} must be a whole number, got {value!r}")
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
        raise RequestError(f"{TITLE} direction must be a list of {', '.join(OUTPAINT_DIRECTIONS)}, got {value!r}")
    return tuple(item.strip().lower() for item in value)
