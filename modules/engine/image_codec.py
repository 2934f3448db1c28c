"""Image bytes with embedded infotext: encode (PNG text chunk / EXIF UserComment), read back, base64 with limits."""
from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Mapping, Sequence

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

INFO_KEY = "parameters"
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DECODE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP")

# Largest side each format can store; bigger images are saved as PNG instead (A1111 does the same).
MAX_SIDE = {"JPEG": 65535, "WEBP": 16383}

# Pillow info keys that are encoder/container details, not text metadata (A1111 IGNORED_INFO_KEYS).
IGNORED_INFO_KEYS = frozenset({
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
    "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop", "xmp", "transparency",
    "gamma", "srgb", "aspect", "comment", "parameters",
})

_DATA_URI_RE = re.compile(r"^data:([^;,]*)(;[^,]*)?,", re.IGNORECASE)
_FORMAT_ALIASES = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


class ImageDecodeError(ValueError):
    """An uploaded image could not be accepted; the message says why (bad base64, not an image, too large...)."""


# ---------------------------------------------------------------------------------------------------- encoding


def pillow_format(fmt: str) -> str:
    """'png' / 'jpg' / 'jpeg' / 'webp' (any case) → Pillow's format name."""
    try:
        return _FORMAT_ALIASES[fmt.lower().lstrip(".")]
    except KeyError:
        raise ValueError(f"unsupported image format {fmt!r}; use one of png, jpg, jpeg, webp") from None


def effective_format(image: Image.Image, fmt: str) -> str:
    """The Pillow format actually written: JPEG/WebP fall back to PNG when the image is too large for them."""
    name = pillow_format(fmt)
    if name in MAX_SIDE and max(image.size) > MAX_SIDE[name]:
        return "PNG"
    return name


def exif_user_comment(text: str) -> bytes:
    """EXIF block with UserComment = b"UNICODE\\0" + UTF-16-BE text, type UNDEFINED (what A1111 writes/reads).

    Setting the tag through Pillow's Image.Exif would store it as BYTE, which piexif reads back as a tuple.
    """
    comment = piexif.helper.UserComment.dump(text, encoding="unicode")
    return piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})


def to_rgb_for_lossy(image: Image.Image, pillow_name: str) -> Image.Image:
    """JPEG/WebP cannot hold alpha or 16-bit/float modes: flatten to RGB (alpha dropped, as A1111)."""
    if image.mode == "RGB" or (image.mode == "L" and pillow_name == "JPEG"):
        return image
    if image.mode == "I;16":
        # 16-bit → 8-bit: 255 / 65535 = 0.00389...
        return image.point(lambda value: value * (255 / 65535)).convert("RGB")
    return image.convert("RGB")


def encode_image(
    image: Image.Image,
    fmt: str = "png",
    infotext: str | None = None,
    *,
    info_key: str = INFO_KEY,
    extra_text: Mapping[str, str] | None = None,
    jpeg_quality: int = 80,
    webp_lossless: bool = False,
) -> bytes:
    """Encode to PNG/JPEG/WebP bytes with the infotext embedded (PNG text chunk or EXIF UserComment)."""
    name = effective_format(image, fmt)
    buffer = io.BytesIO()
    if name == "PNG":
        pnginfo = PngImagePlugin.PngInfo()
        for key, value in (extra_text or {}).items():
            pnginfo.add_text(key, value)
        if infotext is not None:
            pnginfo.add_text(info_key, infotext)  # tEXt when Latin-1, iTXt otherwise
        image.save(buffer, format="PNG", pnginfo=pnginfo)
    else:
        options: dict = {"quality": jpeg_quality}
        if name == "WEBP":
            options["lossless"] = webp_lossless
        if infotext is not None:
            options["exif"] = exif_user_comment(infotext)
        to_rgb_for_lossy(image, name).save(buffer, format=name, **options)
    return buffer.getvalue()


def encode_image_base64(image: Image.Image, fmt: str = "png", infotext: str | None = None, **options) -> str:
    """Raw base64 (no data-URI prefix, as A1111's API returns), infotext embedded; options go to encode_image."""
    return base64.b64encode(encode_image(image, fmt, infotext, **options)).decode("ascii")


# ---------------------------------------------------------------------------------------------------- reading


def _user_comment_from_exif(exif_data: bytes) -> str | None:
    """Decode EXIF UserComment; tolerates the BYTE-typed tag (a tuple) other writers produce."""
    try:
        exif = piexif.load(exif_data)
    except Exception:  # piexif raises assorted errors (and tries to open a file) for malformed data
        return None
    comment = exif.get("Exif", {}).get(piexif.ExifIFD.UserComment)
    if comment is None:
        return None
    if isinstance(comment, tuple):
        comment = bytes(comment)
    try:
        text = piexif.helper.UserComment.load(comment)
    except ValueError:
        text = comment.decode("utf8", errors="ignore")
    return text or None


def read_image_info(image: Image.Image) -> tuple[str | None, dict[str, str]]:
    """(infotext, other text items): PNG `parameters`, else EXIF UserComment (JPEG/WebP), else GIF comment."""
    info = dict(image.info or {})
    infotext = info.get(INFO_KEY)
    if infotext is None and isinstance(info.get("exif"), (bytes, bytearray)):
        infotext = _user_comment_from_exif(bytes(info["exif"]))
    if infotext is None and "comment" in info:
        comment = info["comment"]
        infotext = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else str(comment)
    items = {key: value for key, value in info.items() if key not in IGNORED_INFO_KEYS and isinstance(value, str)}
    return (str(infotext) if infotext is not None else None), items


# ---------------------------------------------------------------------------------------------------- decoding


def strip_data_uri(data: str) -> str:
    """Remove a `data:image/...;base64,` prefix; a data URI of another type is refused."""
    match = _DATA_URI_RE.match(data)
    if match is None:
        return data
    media_type, parameters = match.group(1).lower(), (match.group(2) or "").lower()
    if not media_type.startswith("image/"):
        raise ImageDecodeError(f"data URI must have an image type, got {media_type or 'none'!r}")
    if "base64" not in parameters:
        raise ImageDecodeError("data URI must be base64-encoded (';base64,')")
    return data[match.end():]


def decode_base64_bytes(data: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Strict base64 → bytes; the string length is checked first so a huge payload is never decoded."""
    if not isinstance(data, str):
        raise ImageDecodeError(f"image must be a base64 string, got {type(data).__name__}")
    payload = strip_data_uri(data.strip())
    # 4 base64 characters per 3 bytes, plus slack for padding and line breaks.
    if len(payload) > max_bytes * 4 // 3 + 1024:
        raise ImageDecodeError(f"image data is larger than {max_bytes} bytes")
    payload = "".join(payload.split())
    if "-" in payload or "_" in payload:
        payload = payload.replace("-", "+").replace("_", "/")  # URL-safe alphabet
    payload += "=" * (-len(payload) % 4)  # some clients drop the padding
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageDecodeError(f"image is not valid base64: {error}") from None
    if not raw:
        raise ImageDecodeError("image data is empty")
    if len(raw) > max_bytes:
        raise ImageDecodeError(f"image data is larger than {max_bytes} bytes")
    return raw


def open_image_bytes(
    raw: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, formats: Sequence[str] = DECODE_FORMATS
) -> Image.Image:
    """Open and decode image bytes; the pixel count from the header is checked BEFORE pixels are decoded."""
    try:
        image = Image.open(io.BytesIO(raw), formats=list(formats))
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"image is too large: {error}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(f"data is not a supported image ({', '.join(formats)})") from None
    except Exception as error:  # malformed headers raise assorted errors (SyntaxError, ValueError, OSError...)
        raise ImageDecodeError(f"image header is invalid: {error}") from None
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        image.close()
        raise ImageDecodeError(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    try:
        image.load()
        if getattr(image, "n_frames", 1) > 1:
            image = image.copy()  # first frame only; drops the reference to the other frames
    except Exception as error:  # truncated or corrupt data
        raise ImageDecodeError(f"image data is corrupt or truncated: {error}") from None
    return image


def decode_image_base64(
    data: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    formats: Sequence[str] = DECODE_FORMATS,
) -> Image.Image:
    """Base64 (with or without a data-URI prefix) → decoded PIL image; ImageDecodeError for anything unacceptable."""
    return open_image_bytes(decode_base64_bytes(data, max_bytes), max_pixels=max_pixels, formats=formats)
