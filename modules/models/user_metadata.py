"""What users and trainers wrote about a model file, read from beside and inside it (A1111-compatible).

- Sidecar `<stem>.json` next to the file: the user fields A1111's card editor saves ("activation text",
  "preferred weight", "negative text", "notes", "description", "sd version"); unknown keys are kept.
- Preview `<stem>.preview.png` / `<stem>.png` (also .jpg/.jpeg/.webp), A1111's lookup order.
- A safetensors file's `__metadata__` (header only, no tensor is read) and the kohya `ss_*` training summary.
"""
from __future__ import annotations

import datetime
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from modules.engine.image_codec import encode_image, read_image_info
from modules.engine.images import write_atomically

USER_FIELDS = ("activation text", "preferred weight", "negative text", "notes", "description", "sd version")
SD_VERSIONS = ("Unknown", "SD1", "SD2", "SDXL")  # A1111's "sd version" choices
SIDECAR_SUFFIX = ".json"
PREVIEW_SUFFIX = ".preview.png"  # what "use this image as preview" writes
# A1111 `find_preview`: for each extension in this order, `<stem>.<ext>` then `<stem>.preview.<ext>`
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own header limit
MAX_SIDECAR_BYTES = 4 * 1024 * 1024


class UserMetadataError(ValueError):
    """A sidecar or header could not be read or written; the message names the file and why."""


# ------------------------------------------------------------------------------------------------ sidecar


def sidecar_base(model_path: Path) -> Path:
    """`models/Lora/x.safetensors` → `models/Lora/x`; a diffusers folder `models/.../x` → itself."""
    return model_path if model_path.is_dir() else model_path.with_suffix("")


def sidecar_path(model_path: Path) -> Path:
    base = sidecar_base(model_path)
    return base.with_name(base.name + SIDECAR_SUFFIX)


def _load_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise UserMetadataError(f"{path.name} is larger than {MAX_SIDECAR_BYTES // 1024 // 1024} MB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserMetadataError(f"{path.name} is not valid JSON ({error}); fix or delete it") from None
    if not isinstance(data, dict):
        raise UserMetadataError(f"{path.name} holds a {type(data).__name__}, not a JSON object; fix or delete it")
    return data


def read_user_metadata(model_path: Path) -> dict[str, Any]:
    """The sidecar's contents ({} when there is none); UserMetadataError when it exists but is unreadable."""
    return _load_sidecar(sidecar_path(model_path))


def write_user_metadata(model_path: Path, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `changes` into the sidecar and write it atomically (temp file + rename); returns what was written.

    Keys other tools stored are kept. A value of None removes the key. An existing sidecar that is not valid JSON
    is never overwritten (UserMetadataError), so nothing a user wrote by hand is lost.
    """
    path = sidecar_path(model_path)
    data = _load_sidecar(path)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    try:
        text = json.dumps(data, indent=4, ensure_ascii=False)  # A1111 writes indent=4, ensure_ascii=False
    except (TypeError, ValueError) as error:
        raise UserMetadataError(f"cannot save {path.name}: {error}") from None
    try:
        write_atomically(path, text.encode("utf-8"))
    except OSError as error:
        raise UserMetadataError(f"cannot save {path.name}: {error}") from None
    return data


def preferred_weight(user: Mapping[str, Any], default: float = 1.0) -> float:
    """A1111: a missing, empty or zero "preferred weight" means the default multiplier."""
    try:
        weight = float(user.get("preferred weight") or 0)
    except (TypeError, ValueError):
        return default
    return weight or default


# ------------------------------------------------------------------------------------------------ previews


def preview_candidates(model_path: Path) -> list[Path]:
    """Where a thumbnail may be, in lookup order: `<stem>.png`, `<stem>.preview.png`, then .jpg, .jpeg, .webp."""
    base = sidecar_base(model_path)
    return [base.with_name(f"{base.name}{middle}.{ext}") for ext in PREVIEW_EXTENSIONS for middle in ("", ".preview")]


def find_preview(model_path: Path) -> Path | None:
    return next((path for path in preview_candidates(model_path) if path.is_file()), None)


def save_preview(model_path: Path, image: Image.Image) -> Path:
    """Write `image` as the file's preview (atomically), its infotext kept as A1111 does; returns the path.

    The target is `<stem>.preview.png`, or `<stem>.png` when that exists (it comes first in the lookup), so the
    saved image is always the one `find_preview` returns.
    """
    base = sidecar_base(model_path)
    plain = base.with_name(base.name + ".png")
    target = plain if plain.is_file() else base.with_name(base.name + PREVIEW_SUFFIX)
    infotext = read_image_info(image)[0]
    try:
        write_atomically(target, encode_image(image, "png", infotext))
    except OSError as error:
        raise UserMetadataError(f"cannot save {target.name}: {error}") from None
    return target


# --------------------------------------------------------------------------------------- safetensors header


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """`__metadata__` of a .safetensors file: 8-byte little-endian header length, then the JSON header; no tensor
    data is read. {} for other file types or a header without metadata."""
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise UserMetadataError(f"{path.name} is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise UserMetadataError(f"{path.name}: safetensors header length {length} is invalid")
            header = json.loads(file.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, UserMetadataError):
            raise
        raise UserMetadataError(f"{path.name}: unreadable safetensors header ({error})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


# ----------------------------------------------------------------------------------------- kohya summary


def _json_value(metadata: Mapping[str, Any], key: str) -> Any:
    """kohya stores nested values as JSON strings (some readers decode them already); None when absent or not JSON."""
    value = metadata.get(key)
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return None


def tag_counts(metadata: Mapping[str, Any]) -> list[tuple[str, int]]:
    """`ss_tag_frequency` ({dataset: {tag: count}}) summed over datasets, most frequent first, then by name."""
    totals: dict[str, int] = {}
    frequency = _json_value(metadata, "ss_tag_frequency")
    for tags in (frequency.values() if isinstance(frequency, dict) else ()):
        for tag, count in (tags.items() if isinstance(tags, dict) else ()):
            name = str(tag).strip()
            if name and isinstance(count, (int, float)):
                totals[name] = totals.get(name, 0) + int(count)
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


def _resolution(metadata: Mapping[str, str]) -> str | None:
    """`ss_resolution` "(512, 512)" → "512x512"; dataset-config runs keep it per dataset in `ss_datasets`."""
    raw = metadata.get("ss_resolution")
    if raw is None:
        datasets = _json_value(metadata, "ss_datasets")
        sizes = [d.get("resolution") for d in datasets if isinstance(d, dict)] if isinstance(datasets, list) else []
        raw = next((str(size) for size in sizes if size), None)
    if raw is None:
        return None
    numbers = [part for part in raw.strip("()[] ").replace(" ", "").split(",") if part]
    return "x".join(numbers) if numbers and all(n.isdigit() for n in numbers) else raw


def _buckets(metadata: Mapping[str, str]) -> list[tuple[str, int]]:
    """`ss_bucket_info` {"buckets": {i: {"resolution": [w, h], "count": n}}} → [("wxh", n)], most images first."""
    info = _json_value(metadata, "ss_bucket_info")
    buckets = info.get("buckets") if isinstance(info, dict) else None
    found: dict[str, int] = {}
    for bucket in (buckets.values() if isinstance(buckets, dict) else ()):
        size, count = bucket.get("resolution"), bucket.get("count", 0)
        if isinstance(size, list) and len(size) == 2:
            key = f"{size[0]}x{size[1]}"
            found[key] = found.get(key, 0) + int(count)
    return sorted(found.items(), key=lambda item: (-item[1], item[0]))


def _dataset_dirs(metadata: Mapping[str, str]) -> list[tuple[str, int, int]]:
    """`ss_dataset_dirs` {dir: {"n_repeats": r, "img_count": n}} → [(dir, images, repeats)]."""
    dirs = _json_value(metadata, "ss_dataset_dirs")
    return [(str(name), int(info.get("img_count", 0)), int(info.get("n_repeats", 0)))
            for name, info in (dirs.items() if isinstance(dirs, dict) else ()) if isinstance(info, dict)]


def _training_date(metadata: Mapping[str, str]) -> str | None:
    try:
        started = float(metadata["ss_training_started_at"])
    except (KeyError, ValueError):
        return None
    return datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class TrainingSummary:
    """What a kohya (sd-scripts) run wrote into the file's metadata, as a person reads it."""

    base_model: str | None = None  # ss_sd_model_name
    base_model_version: str | None = None  # ss_base_model_version (sd_v1, sdxl_base_v1-0, ...)
    resolution: str | None = None
    epochs: str | None = None  # "10", or "5 of 10" for an intermediate save
    steps: str | None = None
    network_module: str | None = None
    network_dim: str | None = None
    network_alpha: str | None = None
    learning_rate: str | None = None
    train_images: str | None = None
    output_name: str | None = None
    training_started: str | None = None
    tags: list[tuple[str, int]] = field(default_factory=list)  # (tag, count), most frequent first
    buckets: list[tuple[str, int]] = field(default_factory=list)  # (resolution, images)
    dataset_dirs: list[tuple[str, int, int]] = field(default_factory=list)  # (folder, images, repeats)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) for every known field, in reading order."""
        labels = (("Base model", self.base_model), ("Base model version", self.base_model_version),
                  ("Resolution", self.resolution), ("Epochs", self.epochs), ("Steps", self.steps),
                  ("Network module", self.network_module), ("Network dim", self.network_dim),
                  ("Network alpha", self.network_alpha), ("Learning rate", self.learning_rate),
                  ("Training images", self.train_images), ("Output name", self.output_name),
                  ("Training started", self.training_started))
        return [(label, value) for label, value in labels if value]


def _epochs(metadata: Mapping[str, str]) -> str | None:
    epoch, total = metadata.get("ss_epoch"), metadata.get("ss_num_epochs")
    if epoch and total and epoch != total:
        return f"{epoch} of {total}"
    return total or epoch


def kohya_summary(metadata: Mapping[str, str]) -> TrainingSummary | None:
    """The training summary, or None when the metadata has no kohya `ss_*` keys."""
    if not any(key.startswith("ss_") for key in metadata):
        return None
    get = metadata.get
    return TrainingSummary(
        base_model=get("ss_sd_model_name"), base_model_version=get("ss_base_model_version"),
        resolution=_resolution(metadata), epochs=_epochs(metadata), steps=get("ss_steps") or get("ss_max_train_steps"),
        network_module=get("ss_network_module"), network_dim=get("ss_network_dim"),
        network_alpha=get("ss_network_alpha"), learning_rate=get("ss_learning_rate") or get("ss_unet_lr"),
        train_images=get("ss_num_train_images"), output_name=get("ss_output_name"),
        training_started=_training_date(metadata), tags=tag_counts(metadata), buckets=_buckets(metadata),
        dataset_dirs=_dataset_dirs(metadata))
