"""Checkpoint merger (A1111's "Checkpoint Merger" tab) on A1111/LDM single-file state dicts.

Methods, per tensor (A = primary, B = secondary, C = tertiary, M = multiplier):
    Weighted sum:     A·(1 − M) + B·M
    Add difference:   A + (B − C)·M
    No interpolation: A (to bake a VAE or convert to fp16 / safetensors)
Arithmetic in float32 on the CPU, one tensor at a time: inputs are read lazily (safetensors `get_tensor`,
weights-only memory-mapped pickles) and the output is streamed to disk (`safetensors_stream.StreamingWriter`),
so memory stays near one tensor, not three models. Output keeps the primary's dtype, or float16 with `fp16`.
Keys missing from B (or C) keep A's value and `position_ids` are copied from A, as A1111 does; `model_ema.*`
copies are dropped (unused for inference). An inpainting A (9 input channels) with a normal B/C merges the
first 4 channels of the UNet's input convolution (A1111's inpainting recipe); every other shape must match.
Metadata: A1111's `sd_merge_recipe` and `sd_merge_models`, plus the primary's `modelspec.*` /
`sd_native_size` / `prediction_type` so the result is detected as the same family.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors
import torch
from torch import Tensor

from modules.models import loader
from modules.models.detect import UNET_PREFIX, VAE_PREFIX, ModelFamilyInfo, UnsupportedModelError, detect_family
from modules.models.detect import detect_component_kind, strip_vae_prefix
from modules.models.download_names import DownloadError, contained_path, sanitize_file_name
from modules.models.file_info import BASE_LABELS
from modules.models.ldm_export import vae_key_to_ldm
from modules.models.registry import sha256_of_file
from modules.models.safetensors_stream import SafetensorsHeaderError, StreamingWriter, read_header

if TYPE_CHECKING:
    from modules.models.registry import ModelFile

WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION = "Weighted sum", "Add difference", "No interpolation"
MERGE_METHODS = (WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION)
DROPPED_PREFIXES = ("model_ema.",)
INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"
KEPT_METADATA_PREFIXES = ("modelspec.",)
KEPT_METADATA_KEYS = ("sd_native_size", "prediction_type")
ProgressCallback = Callable[[int, int], None]  # (tensors done, tensors in all)


class MergeError(ValueError):
    """The merge cannot be done as asked; the message says why."""


@dataclass
class MergeResult:
    path: Path
    metadata: dict[str, str]
    family: str
    entry: ModelFile | None = None  # the registry entry once listed
    notes: list[str] = field(default_factory=list)


class _Source:
    """A checkpoint's tensors, read one at a time; names/shapes come from the header for safetensors."""

    def __init__(self, path: Path, stack: contextlib.ExitStack) -> None:
        self.path, self.name = path, path.name
        try:
            if path.suffix.lower() == ".safetensors":
                self.tensors, self.metadata = read_header(path)
                handle = stack.enter_context(safetensors.safe_open(str(path), framework="pt", device="cpu"))
                self._get: Callable[[str], Tensor] = handle.get_tensor
            else:
                state, self.metadata = loader.read_checkpoint(path)  # weights-only, memory-mapped
                self.tensors, self._get = state, state.__getitem__
        except (SafetensorsHeaderError, loader.CheckpointLoadError, OSError, safetensors.SafetensorError) as error:
            raise MergeError(f"{path.name}: cannot be read ({error})") from None

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def shape(self, key: str) -> torch.Size:
        return self.tensors[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype

    def get(self, key: str) -> Tensor:
        return self._get(key)

    def family(self) -> ModelFamilyInfo:
        try:
            return detect_family(self.tensors, self.metadata)
        except UnsupportedModelError as error:
            raise MergeError(f"{self.name}: {error}") from None


def check_same_family(sources: list[_Source]) -> ModelFamilyInfo:
    """The primary's family; all inputs must share its base (SD1, SD2, SDXL, refiner). Only A may be inpainting."""
    infos = [source.family() for source in sources]
    primary = infos[0]
    for source, info in zip(sources[1:], infos[1:]):
        if info.base != primary.base:
            raise MergeError(f"cannot merge {BASE_LABELS[primary.base]} ({sources[0].name}) with "
                             f"{BASE_LABELS[info.base]} ({source.name}): checkpoints must be of the same family")
        if info.is_inpaint and not primary.is_inpaint:
            raise MergeError(f"{source.name} is an inpainting model: when merging an inpainting model with a normal "
                             "one, the primary (A) must be the inpainting model")
    return primary


def _channel_split(key: str, a: torch.Size, other: torch.Size) -> bool:
    """A's UNet input conv has 9 channels (inpainting), the other 4: merge the first 4 channels only."""
    return key == INPUT_CONV and len(a) == 4 and a[1] == 9 and other[1] == 4 and a[:1] + a[2:] == other[:1] + other[2:]


def check_shapes(primary: _Source, others: Iterable[_Source], keys: Iterable[str]) -> None:
    for other in others:
        for key in keys:
            if key in other and other.shape(key) != primary.shape(key) and \
                    not _channel_split(key, primary.shape(key), other.shape(key)):
                raise MergeError(f"{primary.name} and {other.name} have different architectures: {key} is "
                                 f"{tuple(primary.shape(key))} in one and {tuple(other.shape(key))} in the other")


def read_vae_weights(path: Path, primary: _Source) -> dict[str, Tensor]:
    """A VAE file as `first_stage_model.*` tensors shaped like the primary's (LDM or diffusers keys)."""
    try:
        state, _ = loader.read_checkpoint(path)
    except loader.CheckpointLoadError as error:
        raise MergeError(str(error)) from None
    if detect_component_kind(state) != "vae":
        raise MergeError(f"{path.name} is not a VAE file (looks like: {detect_component_kind(state)})")
    weights = strip_vae_prefix(state)
    if any(key.startswith("encoder.down_blocks.") for key in weights):  # diffusers-keyed → LDM names
        levels = 1 + max(int(key.split(".")[2]) for key in weights if key.startswith("encoder.down_blocks."))
        weights = {vae_key_to_ldm(key, levels): tensor for key, tensor in weights.items()}
    baked: dict[str, Tensor] = {}
    for key in (k for k in primary.tensors if k.startswith(VAE_PREFIX)):
        tensor = weights.get(key.removeprefix(VAE_PREFIX))
        if tensor is None or tensor.numel() != primary.shape(key).numel():
            raise MergeError(f"the VAE {path.name} does not fit {primary.name} (at {key})")
        baked[key] = tensor.reshape(primary.shape(key))  # LDM 1×1 conv vs linear attention weights
    return baked


def merged_tensor(key: str, sources: list[_Source], method: str, multiplier: float) -> Tensor:
    """One output tensor in float32 (or A's own tensor when it is not merged)."""
    a_source = sources[0]
    a = a_source.get(key)
    if not a.is_floating_point() or key.endswith("position_ids") or method == NO_INTERPOLATION:
        return a
    others = sources[1:3] if method == ADD_DIFFERENCE else sources[1:2]
    if any(key not in other for other in others):
        return a  # A1111 keeps the primary's value for keys the others lack
    if method == WEIGHTED_SUM:
        def combine(x: Tensor) -> Tensor:
            b = sources[1].get(key).float()
            return (1.0 - multiplier) * x + multiplier * b  # A·(1 − M) + B·M
    else:
        def combine(x: Tensor) -> Tensor:
            difference = sources[1].get(key).float() - sources[2].get(key).float()
            return x + multiplier * difference  # A + (B − C)·M
    a = a.float()
    if _channel_split(key, a.shape, others[0].shape(key)):
        result = a.clone()
        result[:, :4] = combine(a[:, :4])
        return result
    return combine(a)


def output_name(primary: Path, secondary: Path | None, method: str, multiplier: float, custom: str = "") -> str:
    """The custom name (+ .safetensors), or A1111's `<A>_<1-M>-<B>_<M>-<method>-merged.safetensors`."""
    name = custom.strip()
    if not name:
        name = f"{primary.stem}_{round(1 - multiplier, 2)}"
        if secondary is not None and method != NO_INTERPOLATION:
            name += f"-{secondary.stem}_{round(multiplier, 2)}"
        name += f"-{method.replace(' ', '_')}-merged"
    for suffix in (".safetensors", ".ckpt"):
        name = name[:-len(suffix)] if name.lower().endswith(suffix) else name
    try:
        return sanitize_file_name(name + ".safetensors")
    except DownloadError as error:
        raise MergeError(str(error)) from None


def legacy_hash(path: Path) -> str:
    """A1111's old 8-hex model hash: sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as file:
        file.seek(0x100000)
        return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]


def merge_metadata(sources: list[_Source], method: str, multiplier: float, *, fp16: bool, vae: Path | None,
                   output: Path, info: ModelFamilyInfo, hashes: Mapping[Path, str]) -> dict[str, str]:
    """A1111's recipe keys plus the primary's family metadata."""
    primary = sources[0]
    metadata = {key: value for key, value in primary.metadata.items()
                if key.startswith(KEPT_METADATA_PREFIXES) or key in KEPT_METADATA_KEYS}
    if any(key.startswith("modelspec.") for key in metadata):
        metadata["modelspec.title"] = output.stem
    metadata["format"] = "pt"

    def sha(source: _Source) -> str:
        return hashes.get(source.path) or sha256_of_file(source.path)

    recipe = {"type": "webui", "primary_model_hash": sha(primary),
              "secondary_model_hash": sha(sources[1]) if len(sources) > 1 else None,
              "tertiary_model_hash": sha(sources[2]) if len(sources) > 2 else None,
              "interp_method": method, "multiplier": multiplier, "save_as_half": fp16, "custom_name": output.stem,
              "config_source": 0, "bake_in_vae": vae.name if vae else "None", "discard_weights": "",
              "is_inpainting": info.is_inpaint, "is_instruct_pix2pix": False}
    models: dict[str, object] = {}
    for source in sources:
        models[sha(source)] = {"name": source.name, "legacy_hash": legacy_hash(source.path),
                               "sd_merge_recipe": _json_or_none(source.metadata.get("sd_merge_recipe"))}
        models.update(_json_or_none(source.metadata.get("sd_merge_models")) or {})
    metadata["sd_merge_recipe"] = json.dumps(recipe)
    metadata["sd_merge_models"] = json.dumps(models)
    return metadata


def _json_or_none(text: str | None) -> object:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def merge_checkpoints(primary: Path, secondary: Path | None, output: Path, *, tertiary: Path | None = None,
                      method: str = WEIGHTED_SUM, multiplier: float = 0.5, vae: Path | None = None,
                      fp16: bool = False, overwrite: bool = False, hashes: Mapping[Path, str] | None = None,
                      on_progress: ProgressCallback | None = None) -> MergeResult:
    """Merge checkpoint files into `output` (a `.safetensors` path); see the module docstring for the formulas."""
    inputs = check_request(primary, secondary, tertiary, output, method, multiplier, overwrite)
    with contextlib.ExitStack() as stack:
        sources = [_Source(path, stack) for path in inputs]
        info = check_same_family(sources)
        keys = [key for key in sources[0].tensors if not key.startswith(DROPPED_PREFIXES)]
        check_shapes(sources[0], sources[1:], keys)
        baked = read_vae_weights(vae, sources[0]) if vae is not None else {}
        metadata = merge_metadata(sources, method, multiplier, fp16=fp16, vae=vae, output=output, info=info,
                                  hashes=hashes or {})

        def out_dtype(key: str) -> torch.dtype:
            dtype = sources[0].dtype(key)
            return torch.float16 if fp16 and dtype.is_floating_point else dtype

        layout = {key: (out_dtype(key), sources[0].shape(key)) for key in keys}
        with StreamingWriter(output, layout, metadata) as writer:
            for done, key in enumerate(writer.order, 1):
                tensor = baked[key] if key in baked else merged_tensor(key, sources, method, multiplier)
                writer.write(key, tensor.to(out_dtype(key)).contiguous())
                if on_progress is not None:
                    on_progress(done, len(writer.order))
    return MergeResult(output, metadata, info.family)


def check_request(primary: Path, secondary: Path | None, tertiary: Path | None, output: Path, method: str,
                  multiplier: float, overwrite: bool) -> list[Path]:
    """The input files the method needs, in order; refuses bad combinations before anything is read."""
    if method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(MERGE_METHODS)}")
    if not (0.0 <= multiplier <= 1.0) or multiplier != multiplier:
        raise MergeError(f"multiplier must be between 0 and 1, got {multiplier}")
    if method != NO_INTERPOLATION and secondary is None:
        raise MergeError(f"{method} needs a secondary model (B)")
    if method == ADD_DIFFERENCE and tertiary is None:
        raise MergeError("Add difference needs a tertiary model (C): the result is A + (B − C)·M")
    inputs = [primary] + ([secondary] if method != NO_INTERPOLATION else []) + \
        ([tertiary] if method == ADD_DIFFERENCE else [])
    for path in inputs:
        if path.is_dir():
            raise MergeError(f"{path.name} is a diffusers folder: the merger works on single-file checkpoints")
    if output.suffix.lower() != ".safetensors":
        raise MergeError("the merged model is always saved as .safetensors")
    if output.exists() and not overwrite:
        raise MergeError(f"{output.name} already exists; choose another name or allow overwriting")
    if any(output.resolve() == path.resolve() for path in inputs):
        raise MergeError(f"{output.name} is one of the inputs: choose another output name")
    return inputs
