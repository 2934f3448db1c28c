"""Image saving (A1111 numbering, atomic writes, embedded infotext), grids, base64 and decode limits."""
from __future__ import annotations

import base64
import datetime
import io
import struct
import threading
import zlib
from pathlib import Path

import piexif
import pytest
from PIL import Image

from modules.engine.images import (
    ImageDecodeError,
    ImageSaver,
    dated_folder,
    decode_image_base64,
    encode_image,
    encode_image_base64,
    make_grid,
    next_sequence_number,
    read_image_info,
)

INFOTEXT = (
    'a "cat", 猫 ✓\nline two\nNegative prompt: dog, blurry\n'
    'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Lora hashes: "a: 0123456789ab", Version: sdwebui-0.1.0'
)


def small_image(mode: str = "RGB", size: tuple[int, int] = (16, 12)) -> Image.Image:
    color = (200, 100, 50, 128)[: len(mode)] if mode in ("RGB", "RGBA") else 128
    return Image.new(mode, size, color)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height but whose pixel data is a few bytes: decoding it would fail."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------- saving


def test_dated_folder():
    assert dated_folder(Path("outputs"), "txt2img-images", datetime.date(2024, 5, 1)) == Path(
        "outputs/txt2img-images/2024-05-01"
    )
    assert dated_folder(Path("o"), "x").name == datetime.date.today().isoformat()


def test_numbering_starts_at_zero_and_continues_after_existing(tmp_path):
    saver = ImageSaver()
    first = saver.save_image(small_image(), tmp_path, seed=123, infotext=INFOTEXT)
    second = saver.save_image(small_image(), tmp_path, seed=124, infotext=INFOTEXT)
    assert (first.name, second.name) == ("00000-123.png", "00001-124.png")
    (tmp_path / "00041-9.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not numbered")
    (tmp_path / "abc-00099.png").write_bytes(b"x")
    assert saver.save_image(small_image(), tmp_path, seed=5, infotext=None).name == "00042-5.png"


def test_next_sequence_number_rules(tmp_path):
    assert next_sequence_number(tmp_path / "missing") == 0
    for name in ("00003-1.png", "00007.png", "grid-0004.png", "x.png", ".00099-1.png.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert next_sequence_number(tmp_path) == 8
    assert next_sequence_number(tmp_path, "grid") == 5


def test_grid_seedless_and_suffix_names(tmp_path):
    saver = ImageSaver()
    assert saver.save_grid(small_image(), tmp_path, infotext=INFOTEXT).name == "grid-0000.png"
    assert saver.save_grid(small_image(), tmp_path, infotext=INFOTEXT).name == "grid-0001.png"
    assert saver.save_image(small_image(), tmp_path, seed=None, infotext=None).name == "00000.png"
    named = saver.save_image(small_image(), tmp_path, seed=7, infotext=None, suffix="-before-highres-fix")
    assert named.name == "00001-7-before-highres-fix.png"


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    saver = ImageSaver()
    path = saver.save_image(small_image(), tmp_path / "new" / "dir", seed=1, infotext=INFOTEXT)
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpg", "JPEG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_saved_infotext_round_trips(tmp_path, fmt, pil_format):
    path = ImageSaver().save_image(small_image("RGBA"), tmp_path, seed=1, infotext=INFOTEXT, fmt=fmt)
    assert path.suffix == f".{fmt}"
    with Image.open(path) as image:
        assert image.format == pil_format
        infotext, _items = read_image_info(image)
    assert infotext == INFOTEXT


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_exif_user_comment_is_unicode_undefined_readable_by_piexif(tmp_path, fmt):
    path = ImageSaver().save_image(small_image(), tmp_path, seed=1, infotext=INFOTEXT, fmt=fmt)
    with Image.open(path) as image:
        exif = piexif.load(image.info["exif"])
    comment = exif["Exif"][piexif.ExifIFD.UserComment]
    assert isinstance(comment, bytes)  # BYTE-typed tags come back as tuples and break A1111's reader
    assert comment.startswith(b"UNICODE\0")
    assert comment[8:].decode("utf-16-be") == INFOTEXT
    assert piexif.helper.UserComment.load(comment) == INFOTEXT


def test_png_uses_text_chunk_and_keeps_other_chunks(tmp_path):
    infotext = "latin only\nSteps: 1, Seed: 2, CFG scale: 3"
    path = ImageSaver().save_image(small_image(), tmp_path, seed=1, infotext=infotext, extra_text={"Software": "test"})
    with Image.open(path) as image:
        assert image.text["parameters"].startswith("latin only")
        infotext, items = read_image_info(image)
    assert infotext.endswith("CFG scale: 3")
    assert items == {"Software": "test"}


def test_pnginfo_disabled_writes_no_metadata(tmp_path):
    for fmt in ("png", "jpg"):
        saver = ImageSaver()
        path = saver.save_image(small_image(), tmp_path, seed=1, infotext=INFOTEXT, fmt=fmt, pnginfo_enabled=False)
        with Image.open(path) as image:
            assert read_image_info(image)[0] is None


def test_gif_comment_is_read():
    buffer = io.BytesIO()
    small_image().save(buffer, format="GIF", comment=b"gif params")
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert read_image_info(image)[0] == "gif params"


def test_concurrent_saves_get_unique_numbers(tmp_path):
    saver = ImageSaver()
    paths: list[Path] = []
    lock = threading.Lock()

    def save_some(seed: int) -> None:
        for _ in range(5):
            path = saver.save_image(small_image(), tmp_path, seed=seed, infotext=None)
            with lock:
                paths.append(path)

    threads = [threading.Thread(target=save_some, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    numbers = sorted(int(path.name.split("-")[0]) for path in paths)
    assert numbers == list(range(30))
    assert len(list(tmp_path.iterdir())) == 30


# ---------------------------------------------------------------------------------------------------- grids


def test_make_grid_auto_rows_and_centering():
    images = [Image.new("RGB", (10, 10), (255, 0, 0))] * 3 + [Image.new("RGB", (6, 6), (0, 0, 255))]
    grid = make_grid(images)  # round(sqrt(4)) = 2 rows × 2 cols
    assert grid.size == (20, 20)
    assert grid.getpixel((0, 0)) == (255, 0, 0)
    assert grid.getpixel((10, 10)) == (255, 255, 255)  # smaller image centred: 2 px margin
    assert grid.getpixel((15, 15)) == (0, 0, 255)
    assert make_grid([small_image()] * 3).size == (16 * 2, 12 * 2)  # round(sqrt(3)) = 2 rows, 2 cols
    assert make_grid([small_image()] * 6).size == (16 * 3, 12 * 2)
    assert make_grid([small_image()] * 3, rows=1).size == (48, 12)
    assert make_grid([small_image()]).size == (16, 12)


# ---------------------------------------------------------------------------------------------------- base64


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_base64_round_trip_with_infotext(fmt):
    encoded = encode_image_base64(small_image(), fmt, INFOTEXT)
    assert not encoded.startswith("data:")
    image = decode_image_base64(encoded)
    assert image.size == (16, 12)
    assert read_image_info(image)[0] == INFOTEXT


def test_base64_png_is_pixel_exact_and_data_uri_accepted():
    original = Image.new("RGB", (8, 8))
    original.putpixel((3, 4), (1, 2, 3))
    encoded = encode_image_base64(original)
    for text in (encoded, "data:image/png;base64," + encoded, encoded.rstrip("="), encoded[:40] + "\n" + encoded[40:]):
        assert decode_image_base64(text).tobytes() == original.tobytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("!!!not base64!!!", "not valid base64"),
        (base64.b64encode(b"hello, I am not an image").decode(), "not a supported image"),
        ("", "empty"),
        ("data:text/plain;base64,aGVsbG8=", "image type"),
    ],
)
def test_garbage_raises_image_decode_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image_base64(data)
    assert issubclass(ImageDecodeError, ValueError)


def test_truncated_image_rejected():
    raw = encode_image(Image.effect_noise((64, 64), 50).convert("RGB"), "png")
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image_base64(base64.b64encode(raw[: len(raw) // 2]).decode())


def test_disallowed_format_rejected():
    buffer = io.BytesIO()
    small_image().save(buffer, format="BMP")
    with pytest.raises(ImageDecodeError, match="not a supported image"):
        decode_image_base64(base64.b64encode(buffer.getvalue()).decode())


def test_too_many_bytes_rejected_before_decoding():
    payload = base64.b64encode(b"\0" * 3000).decode()
    with pytest.raises(ImageDecodeError, match="larger than"):
        decode_image_base64(payload, max_bytes=1000)


@pytest.mark.parametrize("side", [5000, 50000])
def test_decompression_bomb_rejected_from_header_without_decoding(side):
    # The IDAT holds 16 bytes: had the pixels been decoded, the error would be "truncated", not the size limit.
    encoded = base64.b64encode(png_header_only(side, side)).decode()
    with pytest.raises(ImageDecodeError, match="too large|the limit is"):
        decode_image_base64(encoded)


def test_ztxt_text_bomb_rejected():
    text_bomb = png_chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (4 * 1024 * 1024)))
    valid = encode_image(small_image(), "png")
    bomb = valid[:33] + text_bomb + valid[33:]  # after the 8-byte signature and the 25-byte IHDR chunk
    with pytest.raises(ImageDecodeError):
        decode_image_base64(base64.b64encode(bomb).decode())


def test_real_large_one_bit_png_rejected_but_allowed_under_a_higher_cap():
    buffer = io.BytesIO()
    Image.new("1", (5000, 4000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000  # tiny file, 20 MP image
    encoded = base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(ImageDecodeError, match="5000x4000"):
        decode_image_base64(encoded)
    assert decode_image_base64(encoded, max_pixels=5000 * 4000).size == (5000, 4000)
