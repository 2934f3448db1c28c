"""Grids with text labels above the columns and left of the rows (what X/Y/Z plot and prompt matrix draw)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from modules.engine.images import grid_rows, make_grid

GRID_BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
LABEL_PADDING = 6  # pixels around each label's text
MIN_FONT_SIZE, MAX_FONT_SIZE = 10, 48
FONT_FRACTION = 0.07  # font size ≈ 7 % of a cell's shorter side (A1111 uses a similar fraction)


def font_for(cell_width: int, cell_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = min(max(int(min(cell_width, cell_height) * FONT_FRACTION), MIN_FONT_SIZE), MAX_FONT_SIZE)
    return ImageFont.load_default(size=size)


def wrapped(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap of `text` into lines no wider than `width` pixels (a long word keeps its own line)."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def label_height(labels: Sequence[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> int:
    line_height = font.getbbox("Ag")[3] + 2
    most = max((len(wrapped(label, font, width - 2 * LABEL_PADDING)) for label in labels), default=0)
    return most * line_height + 2 * LABEL_PADDING


def draw_label(draw: ImageDraw.ImageDraw, text: str, box: tuple[int, int, int, int],
               font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    """Centre the wrapped text in box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    line_height = font.getbbox("Ag")[3] + 2
    lines = wrapped(text, font, x1 - x0 - 2 * LABEL_PADDING)
    top = y0 + (y1 - y0 - len(lines) * line_height) // 2
    for number, line in enumerate(lines):
        left = x0 + (x1 - x0 - font.getlength(line)) / 2
        draw.text((left, top + number * line_height), line, fill=TEXT_COLOUR, font=font)


def labelled_grid(images: Sequence[Image.Image], *, rows: int | None = None,
                  column_labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None) -> Image.Image:
    """make_grid's grid with a header band of column labels and a left band of row labels.

    With labels, rows default to len(row_labels) (else the usual count); the label lists must match the grid.
    """
    rows = rows or (len(row_labels) if row_labels else grid_rows(len(images)))
    columns = math.ceil(len(images) / rows)
    if column_labels is not None and len(column_labels) != columns:
        raise ValueError(f"{len(column_labels)} column labels for a grid of {columns} columns")
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for a grid of {rows} rows")
    grid = make_grid(images, rows)
    cell_width, cell_height = grid.width // columns, grid.height // rows
    font = font_for(cell_width, cell_height)
    top = label_height(column_labels, font, cell_width) if column_labels else 0
    left = min(cell_width, max(int(max(font.getlength(label) for label in row_labels)) + 2 * LABEL_PADDING,
                               cell_width // 2)) if row_labels else 0
    canvas = Image.new("RGB", (grid.width + left, grid.height + top), GRID_BACKGROUND)
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    for index, label in enumerate(column_labels or ()):
        draw_label(draw, label, (left + index * cell_width, 0, left + (index + 1) * cell_width, top), font)
    for index, label in enumerate(row_labels or ()):
        draw_label(draw, label, (0, top + index * cell_height, left, top + (index + 1) * cell_height), font)
    return canvas
