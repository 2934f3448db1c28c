"""Putting the X/Y/Z cells together: one labelled X×Y grid per Z value, the Z grids side by side in a super grid, and
the grid infotexts (the first cell's, plus A1111's "X Type"/"X Values"/... keys)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from PIL import Image

from modules.extensions.api import ScriptContext

from .plan import Plan

BLANK_COLOUR = (0, 0, 0)  # a cell that failed or was interrupted (A1111 leaves it black)
MARGIN_COLOUR = (255, 255, 255)


def blank_cell(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), BLANK_COLOUR)


def with_margin(image: Image.Image, margin: int) -> Image.Image:
    """A1111 "Grid margins": `margin` pixels between neighbouring cells (half of it around each cell)."""
    if margin <= 0:
        return image
    framed = Image.new("RGB", (image.width + margin, image.height + margin), MARGIN_COLOUR)
    framed.paste(image.convert("RGB"), (margin // 2, margin // 2))
    return framed


def xy_grids(ctx: ScriptContext, plan: Plan, cells: Sequence[Image.Image]) -> list[Image.Image]:
    """One grid per Z value: X across, Y down, labels on the margins when "Draw legend" is on."""
    x_axis, y_axis, _ = plan.axes
    nx, ny, nz = plan.shape
    legend = plan.args.draw_legend
    column_labels = x_axis.labels if legend and x_axis.used else None
    row_labels = y_axis.labels if legend and y_axis.used else None
    grids = []
    for iz in range(nz):
        images = [with_margin(image, plan.args.margin_size) for image in cells[iz * nx * ny:(iz + 1) * nx * ny]]
        grids.append(ctx.make_grid(images, rows=ny, column_labels=column_labels, row_labels=row_labels))
    return grids


def super_grid(ctx: ScriptContext, plan: Plan, grids: Sequence[Image.Image]) -> Image.Image:
    """The Z grids in one row, each titled with its Z value (a single grid is its own super grid)."""
    z_axis = plan.axes[2]
    if len(grids) == 1:
        return grids[0]
    titles = z_axis.labels if plan.args.draw_legend and z_axis.used else None
    return ctx.make_grid(list(grids), rows=1, column_labels=titles)


def _quote(value: str) -> str:
    """A1111 infotext quoting: a value holding ',', ':' or a newline is written as a JSON string."""
    return json.dumps(value, ensure_ascii=False) if any(char in value for char in ",:\n") else value


def with_params(infotext: str, params: Mapping[str, str]) -> str:
    """The infotext with extra `Key: value` pairs on its parameter line, before `Version` (A1111's order)."""
    addition = ", ".join(f"{key}: {_quote(str(value))}" for key, value in params.items() if str(value))
    if not addition:
        return infotext
    head, newline, last = infotext.rpartition("\n")
    marker = last.rfind(", Version: ")
    last = f"{last[:marker]}, {addition}{last[marker:]}" if marker >= 0 else (
        f"{last}, {addition}" if last else addition)
    return f"{head}{newline}{last}"
