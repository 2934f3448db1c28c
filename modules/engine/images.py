"""Saving generated images the A1111 way (numbered names, dated folders, embedded infotext) and grids.

Encoding, reading metadata back and base64 handling live in image_codec.py and are re-exported here.
"""
from __future__ import annotations

import datetime
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from modules.engine.image_codec import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    INFO_KEY,
    ImageDecodeError,
    decode_image_base64,
    effective_format,
    encode_image,
    encode_image_base64,
    pillow_format,
    read_image_info,
)

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "ImageDecodeError", "ImageSaver", "dated_folder",
    "decode_image_base64", "encode_image", "encode_image_base64", "make_grid", "next_sequence_number",
    "read_image_info", "sanitize_filename_part",
]

GRID_BASENAME = "grid"
MAX_FILENAME_PART = 128  # A1111 --filenames-max-length
GRID_BACKGROUND = (255, 255, 255)  # A1111 grid_background_color "#ffffff"
_NUMBER_ATTEMPTS = 500  # A1111 tries this many numbers past the highest before giving up
_INVALID_FILENAME_CHARS = re.compile(r'[#<>:"/\\|?*\n\r\t]')
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def dated_folder(root: Path, category: str, when: datetime.date | None = None) -> Path:
    """`<root>/<category>/YYYY-MM-DD`, e.g. outputs/txt2img-images/2024-05-01 (A1111 `[date]` directories)."""
    day = when or datetime.date.today()
    return Path(root) / category / day.isoformat()


def sanitize_filename_part(text: str) -> str:
    """A1111 sanitising: spaces and each of # < > : " / \\ | ? * and line breaks → '_'; trimmed; ≤ 128 chars."""
    text = _INVALID_FILENAME_CHARS.sub("_", text.replace(" ", "_"))
    return text.lstrip(" ")[:MAX_FILENAME_PART].rstrip(" .")


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """1 + the highest leading number among the folder's files (`00012-123.png` → 12); 0 for an empty folder.

    With a basename, only files named `<basename>-NNNN...` count. Files without a leading number are ignored.
    """
    prefix = f"{basename}-" if basename else ""
    highest = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith(prefix):
            continue
        leading = os.path.splitext(name[len(prefix):])[0].split("-")[0]
        if leading.isdecimal():
            highest = max(highest, int(leading))
    return highest + 1


def numbered_stem(number: int, basename: str, decoration: str) -> str:
    """`00005-<decoration>` without a basename (5 digits), `grid-0005` with one (4 digits), as A1111."""
    counter = f"{number:05}" if not basename else f"{basename}-{number:04}"
    return counter + decoration


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a hidden temp file in the same folder, fsync, then os.replace: readers never see a partial image.

    The temp name starts with '.' so it never counts as a numbered file.
    """
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


class ImageSaver:
    """Saves images with A1111 numbering; one lock makes the number choice + write atomic across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def save_image(
        self,
        image: Image.Image,
        folder: Path,
        *,
        seed: int | None,
        infotext: str | None,
        fmt: str = "png",
        basename: str = "",
        suffix: str = "",
        pnginfo_enabled: bool = True,
        jpeg_quality: int = 80,
        webp_lossless: bool = False,
        info_key: str = INFO_KEY,
        extra_text: Mapping[str, str] | None = None,
    ) -> Path:
        """Save as `NNNNN-<seed><suffix>.<ext>` (pattern `[seed]`) in `folder`; returns the path written.

        seed None → `NNNNN<suffix>.<ext>` (extras); `suffix` is appended as given, e.g. "-before-highres-fix".
        JPEG/WebP too large for the format are written as PNG (with a .png extension).
        """
        pillow_name = effective_format(image, fmt)
        embedded = infotext if pnginfo_enabled else None
        data = encode_image(
            image, pillow_name, embedded, info_key=info_key, extra_text=extra_text if pnginfo_enabled else None,
            jpeg_quality=jpeg_quality, webp_lossless=webp_lossless,
        )
        extension = fmt.lower().lstrip(".") if pillow_name == pillow_format(fmt) else _EXTENSIONS[pillow_name]
        basename = sanitize_filename_part(basename)
        decoration = (f"-{seed}" if seed is not None else "") + sanitize_filename_part(suffix)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            path = self._free_path(folder, basename, decoration, extension)
            write_atomically(path, data)
        return path

    def save_grid(self, grid: Image.Image, folder: Path, *, infotext: str | None, fmt: str = "png", **options) -> Path:
        """Save a grid as `grid-NNNN.<ext>` (A1111: grids carry the first image's infotext, no seed in the name)."""
        return self.save_image(grid, folder, seed=None, infotext=infotext, fmt=fmt, basename=GRID_BASENAME, **options)

    @staticmethod
    def _free_path(folder: Path, basename: str, decoration: str, extension: str) -> Path:
        start = next_sequence_number(folder, basename)
        for number in range(start, start + _NUMBER_ATTEMPTS):
            path = folder / f"{numbered_stem(number, basename, decoration)}.{extension}"
            if not path.exists():
                return path
        raise FileExistsError(f"no free file number in {folder} after {start + _NUMBER_ATTEMPTS - 1}")


def grid_rows(count: int) -> int:
    """A1111 default (n_rows -1): rows = round(sqrt(count)), at most count, at least 1."""
    return max(1, min(count, round(math.sqrt(count))))


def make_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """Paste images into rows × ceil(n / rows) cells of the largest image's size, smaller ones centred."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    rows = grid_rows(len(images)) if rows is None else max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    cell_width = max(image.width for image in images)
    cell_height = max(image.height for image in images)
    grid = Image.new("RGB", (cols * cell_width, rows * cell_height), GRID_BACKGROUND)
    for index, image in enumerate(images):
        offset_x, offset_y = (cell_width - image.width) // 2, (cell_height - image.height) // 2
        grid.paste(image, (index % cols * cell_width + offset_x, index // cols * cell_height + offset_y))
    return grid
