"""X/Y/Z plot (A1111's built-in script, same name, arguments and axis numbering): one job per cell through the app's
queue, a labelled grid per Z value and a super grid, saved with their infotexts; the cells are saved as usual."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from PIL import Image

from modules.extensions.api import (
    AppView,
    GenerationRequest,
    GenerationResult,
    Registry,
    RequestError,
    Script,
    ScriptContext,
    ScriptUiContext,
)

from . import ui
from .grids import blank_cell, super_grid, with_params, xy_grids
from .plan import AXIS_NAMES, SCRIPT_ARGS, Plan, XyzArgs, grid_params, make_plan, parse_xyz_args

log = logging.getLogger(__name__)


class XyzPlot(Script):
    title = "X/Y/Z plot"
    args = SCRIPT_ARGS

    def ui(self, ctx: ScriptUiContext) -> list[Any]:
        return ui.build(ctx)

    def parse_args(self, values: Sequence[Any], app: AppView) -> XyzArgs:
        return parse_xyz_args(values)

    def validate(self, request: GenerationRequest, args: XyzArgs, app: AppView) -> None:
        make_plan(request, args, app)

    def run(self, ctx: ScriptContext, request: GenerationRequest, args: XyzArgs) -> GenerationResult:
        plan = make_plan(request, args, ctx.app)
        ctx.set_job_count(plan.cell_count)
        results: list[GenerationResult | None] = [None] * plan.cell_count
        warnings: list[str] = []
        for cell in plan.cells():
            if ctx.interrupted():
                break
            try:
                results[plan.index(cell)] = ctx.run(plan.request_for(cell))
            except Exception as error:  # one failing cell leaves a blank, as in A1111; the rest still run
                log.warning("X/Y/Z plot cell %s failed: %s", cell, error)
                warnings.append(f"cell {_cell_name(plan, cell)} failed: {error}")
        return assemble(ctx, plan, results, warnings, interrupted=ctx.interrupted())


def _cell_name(plan: Plan, cell: Any) -> str:
    positions = (cell.ix, cell.iy, cell.iz)
    parts = [axis.labels[position] for axis, position in zip(plan.axes, positions) if axis.used]
    return ", ".join(parts) or "1"


def _first_image(result: GenerationResult | None) -> tuple[Image.Image, str, int] | None:
    if result is None or not result.images:
        return None
    return result.images[0], result.infotexts[0], result.seeds[0]


def assemble(ctx: ScriptContext, plan: Plan, results: Sequence[GenerationResult | None], warnings: list[str], *,
             interrupted: bool) -> GenerationResult:
    """Grids (saved), then A1111's image list: the main grid, the sub grids if asked, the cells if asked."""
    firsts = [_first_image(result) for result in results]
    done = [first for first in firsts if first is not None]
    if not done:
        if warnings:  # a ValueError: the user's settings failed, the extension itself is fine
            raise RequestError(f"X/Y/Z plot made no image: {warnings[0]}")
        return _empty(plan.base, interrupted=True)
    size = done[0][0].size
    cells = [first[0] if first is not None else blank_cell(*size) for first in firsts]
    nx, ny, nz = plan.shape
    sub_infotexts = [with_params(_first_text(firsts[iz * nx * ny:], done), grid_params(plan, AXIS_NAMES[:2]))
                     for iz in range(nz)]
    main_infotext = with_params(done[0][1], grid_params(plan, AXIS_NAMES))
    sub_grids = xy_grids(ctx, plan, cells)
    main = super_grid(ctx, plan, sub_grids)
    ctx.save_image(main, main_infotext, grid=True)
    shown = [(main, main_infotext, done[0][2])]
    if plan.args.include_sub_grids and nz > 1:
        for grid, text in zip(sub_grids, sub_infotexts):
            ctx.save_image(grid, text, grid=True)
            shown.append((grid, text, done[0][2]))
    grid_count = len(shown)
    if plan.args.include_lone_images:
        shown += done
    result = _collected(shown, results, warnings)
    result.interrupted = interrupted
    result.info["index_of_first_image"] = grid_count
    return result


def _first_text(firsts: Sequence[tuple[Image.Image, str, int] | None],
                done: Sequence[tuple[Image.Image, str, int]]) -> str:
    """The infotext of the first finished cell from here on (a Z grid's own first cell, if it ran)."""
    return next((first[1] for first in firsts if first is not None), done[0][1])


def _empty(request: GenerationRequest, *, interrupted: bool) -> GenerationResult:
    return GenerationResult(request=request, images=[], infotexts=[], seeds=[], subseeds=[], prompts=[],
                            negative_prompts=[], interrupted=interrupted)


def _collected(shown: list[tuple[Image.Image, str, int]], results: Sequence[GenerationResult | None],
               warnings: list[str]) -> GenerationResult:
    finished = [result for result in results if result is not None]
    first = finished[0]
    result = _empty(first.request, interrupted=False)
    result.images = [image for image, _text, _seed in shown]
    result.infotexts = [text for _image, text, _seed in shown]
    result.seeds = [seed for _image, _text, seed in shown]
    result.subseeds = [first.subseeds[0] if first.subseeds else -1] * len(shown)
    result.prompts = [first.request.prompt] * len(shown)
    result.negative_prompts = [first.request.negative_prompt] * len(shown)
    result.saved_paths = [path for r in finished for path in r.saved_paths]
    result.warnings = [warning for r in finished for warning in r.warnings] + warnings
    result.info = {**first.info, "infotexts": list(result.infotexts), "all_seeds": list(result.seeds),
                   "all_prompts": list(result.prompts), "all_negative_prompts": list(result.negative_prompts)}
    return result


def register(registry: Registry) -> None:
    registry.add_script(XyzPlot())
