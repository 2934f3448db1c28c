"""Textual-inversion embedding files (A1111's ``embeddings/`` folder): scan, read safely, check the fit per model.

Formats (as A1111 ``textual_inversion.create_embedding_from_data``):
- A1111 / original TI ``.pt``: ``{"string_to_param": {"*": [n, w]}, "step", "sd_checkpoint", "sd_checkpoint_name",
  "name", ...}`` (old files pickle ``string_to_param`` as a ``torch.nn.ParameterDict``: read through an inert
  stand-in, never the real class);
- diffusers / concept ``.bin`` and single-tensor ``.safetensors`` (``{"emb_params": [n, w]}``, ``{"<token>": [w]}``);
- SDXL: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``.
Pickles go only through the app's weights-only loader: one holding code or other objects is refused and listed as
skipped with the reason. The name is the file stem (A1111); the short hash is the file's sha256, first 12 hex.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from modules.engine.prompt_chunks import CHUNK_LENGTH, embeddings_used
from modules.engine.prompt_parser import extract_extra_networks
from modules.engine.request import GenerationRequest
from modules.engine.textual_inversion import CLIP_G, CLIP_L, SINGLE, Embedding, EmbeddingLookup
from modules.models.loader import CheckpointLoadError, load_weights_only, read_safetensors
from modules.models.registry import sha256_of_file

if TYPE_CHECKING:
    from modules.engine.model import EngineModel

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
SHORT_HASH_LENGTH = 12  # A1111 "TI hashes"
MAX_FILE_BYTES = 64 << 20  # real embeddings are kilobytes; a bigger file is something else put in the wrong folder
PARAMETER_DICT = "torch.nn.modules.container.ParameterDict"
TI_HASHES = "TI hashes"  # infotext key


class EmbeddingFileError(ValueError):
    """A file in the embeddings folder is not a usable textual-inversion embedding; the message says why."""


class _InertParameterDict:
    """Stand-in for ``torch.nn.ParameterDict`` in old TI files: keeps the pickled state (plain data), runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(eq=False)
class EmbeddingFile:
    """One readable embedding file. ``vectors``: encoder key (SINGLE, or CLIP_L + CLIP_G) → [n, width] float32."""

    name: str
    path: Path
    vectors: dict[str, Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    sha256: str = ""  # of the file's bytes, read with it: the prompt caches key on it
    _embedding: Embedding | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        """Vectors = prompt tokens it takes (A1111 ``vectors``)."""
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        return {key: tensor.shape[1] for key, tensor in self.vectors.items()}

    @property
    def shape(self) -> int:
        """A1111 ``shape``: the vector width, summed over encoders for SDXL (768 + 1280 = 2048)."""
        return sum(self.widths.values())

    def short_hash(self) -> str:
        return self.sha256[:SHORT_HASH_LENGTH]

    def embedding(self) -> Embedding:
        """The engine's view: name + vectors, keyed by the file's content for the prompt caches."""
        if self._embedding is None:
            self._embedding = Embedding(self.name, self.vectors, (str(self.path), self.sha256))
        return self._embedding

    def api_item(self) -> dict[str, Any]:
        """A1111 /sdapi/v1/embeddings item."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint,
                "sd_checkpoint_name": self.sd_checkpoint_name, "shape": self.shape, "vectors": self.count}


# --- reading one file -----------------------------------------------------------------------------------------


def read_embedding_file(path: Path) -> EmbeddingFile:
    """Read and validate one file; raises EmbeddingFileError (refused pickle, unknown layout, bad tensors)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise EmbeddingFileError(f"{path.name}: {size} bytes is too large for an embedding "
                                 f"(a checkpoint or LoRA in the wrong folder?)")
    data = _read_data(path)
    vectors = vectors_from_data(data, path.name)
    return EmbeddingFile(
        name=path.stem, path=path, vectors=vectors, step=_int_or_none(data.get("step")),
        sd_checkpoint=_str_or_none(data.get("sd_checkpoint")),
        sd_checkpoint_name=_str_or_none(data.get("sd_checkpoint_name")), sha256=sha256_of_file(path))


def _read_data(path: Path) -> dict[str, Any]:
    try:
        if path.suffix.lower() == ".safetensors":
            data, _metadata = read_safetensors(path)
        else:
            data = load_weights_only(path, stand_ins=[(_InertParameterDict, PARAMETER_DICT)])
    except CheckpointLoadError as error:
        raise EmbeddingFileError(str(error)) from error
    if not isinstance(data, dict):
        raise EmbeddingFileError(f"{path.name}: expected a dict, found {type(data).__name__}")
    return data


def vectors_from_data(data: dict[str, Any], filename: str) -> dict[str, Tensor]:
    """The layouts A1111 accepts → {key: [n, width] float32}; validated (2-D, floating, finite, same n)."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if isinstance(params, _InertParameterDict):
            params = params.state.get("_parameters", {}) if isinstance(params.state, dict) else {}
        tensors = _single_term(params, filename)
        return {SINGLE: _checked_vectors(tensors, filename, SINGLE)}
    if CLIP_L in data and CLIP_G in data:
        vectors = {key: _checked_vectors(data[key], filename, key) for key in (CLIP_L, CLIP_G)}
        if vectors[CLIP_L].shape[0] != vectors[CLIP_G].shape[0]:
            raise EmbeddingFileError(f"{filename}: clip_l has {vectors[CLIP_L].shape[0]} vectors but clip_g "
                                     f"{vectors[CLIP_G].shape[0]}")
        return vectors
    if len(data) == 1 and isinstance(next(iter(data.values())), Tensor):  # diffusers concept / emb_params
        return {SINGLE: _checked_vectors(next(iter(data.values())), filename, SINGLE)}
    keys = ", ".join(sorted(map(str, data))[:8])
    raise EmbeddingFileError(f"{filename}: not a textual inversion embedding (keys: {keys})")


def _single_term(params: Any, filename: str) -> Any:
    if not isinstance(params, dict) or len(params) != 1:
        count = len(params) if isinstance(params, dict) else 0
        raise EmbeddingFileError(f"{filename}: string_to_param must hold exactly one term, found {count}")
    return next(iter(params.values()))


def _checked_vectors(value: Any, filename: str, key: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise EmbeddingFileError(f"{filename}: {key} is a {type(value).__name__}, not a tensor")
    tensor = value.detach()
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)  # diffusers concepts store one vector as [width]
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise EmbeddingFileError(f"{filename}: {key} has shape {list(value.shape)}; expected [vectors, width]")
    if not tensor.is_floating_point():
        raise EmbeddingFileError(f"{filename}: {key} holds {tensor.dtype} values, not floats")
    tensor = tensor.to(torch.float32, copy=True).contiguous()  # a copy: never a view into a mapped file
    if not torch.isfinite(tensor).all():
        raise EmbeddingFileError(f"{filename}: {key} contains NaN or infinite values")
    return tensor


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# --- fit to a model -------------------------------------------------------------------------------------------


def fit_problem(entry: EmbeddingFile, needed: dict[str, int]) -> str | None:
    """Why the embedding cannot be used with encoders needing ``needed`` ({key: width}), or None if it fits.

    SD1.x/SD2.x need one tensor as wide as the text encoder (768 / 1024); SDXL needs clip_l and clip_g at the two
    encoders' widths (768 + 1280); A1111 compares the same (summed) width and skips the rest.
    """
    if entry.widths != needed:
        return f"{_describe(entry.widths)} do not fit this model, which needs {_describe(needed)}"
    if entry.count > CHUNK_LENGTH:
        return f"{entry.count} vectors: at most {CHUNK_LENGTH} fit in a prompt chunk"
    return None


def _describe(widths: dict[str, int]) -> str:
    if set(widths) == {SINGLE}:
        return f"vectors of width {widths[SINGLE]}"
    return "SDXL vectors " + " + ".join(f"{key} {width}" for key, width in widths.items())


def model_vector_widths(model: EngineModel) -> dict[str, int]:
    return model.prompt_encoder.encoders.vector_widths()


# --- the folder -----------------------------------------------------------------------------------------------


class EmbeddingRegistry:
    """``app.embeddings``: the embeddings folder (recursive), read on first use and on ``refresh()``.

    ``entries`` are the readable files; ``errors`` the unreadable ones (and duplicate names) with reasons.
    ``loaded_for(model)`` / ``skipped_for(model)`` split them by whether they fit a model's text encoders.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._entries: list[EmbeddingFile] | None = None
        self._errors: dict[str, str] = {}
        self._generation = 0  # bumped by every refresh; lookups built for an older one are stale
        self._lookups: weakref.WeakKeyDictionary[Any, tuple[int, EmbeddingLookup]] = weakref.WeakKeyDictionary()

    # listing

    def refresh(self) -> list[EmbeddingFile]:
        entries: list[EmbeddingFile] = []
        errors: dict[str, str] = {}
        by_name: dict[str, EmbeddingFile] = {}
        for path in self._scan():
            try:
                entry = read_embedding_file(path)
            except EmbeddingFileError as error:
                errors[path.stem] = str(error)
                log.warning("embedding skipped: %s", error)
                continue
            except Exception as error:  # noqa: BLE001 -- one odd file must not break the listing
                errors[path.stem] = f"{path.name}: cannot read it ({type(error).__name__}: {error})"
                log.warning("embedding skipped: %s", errors[path.stem])
                continue
            if entry.name in by_name:  # A1111 keeps one embedding per name; we keep the first and say so
                first = self._relative(by_name[entry.name].path)
                errors[self._relative(path)] = f"the name {entry.name!r} is already taken by {first}"
                continue
            by_name[entry.name] = entry
            entries.append(entry)
        with self._lock:
            self._entries, self._errors = entries, errors
            self._generation += 1
        return entries

    @property
    def entries(self) -> list[EmbeddingFile]:
        return self._snapshot()[0]

    def _snapshot(self) -> tuple[list[EmbeddingFile], int]:
        """(entries, generation) read together; the folder is read on first use."""
        with self._lock:
            if self._entries is not None:
                return self._entries, self._generation
        self.refresh()
        with self._lock:
            return self._entries or [], self._generation

    @property
    def errors(self) -> dict[str, str]:
        self.entries  # noqa: B018 -- reads the folder on first use
        return dict(self._errors)

    def find(self, name: str) -> EmbeddingFile | None:
        return next((entry for entry in self.entries if entry.name == name), None)

    def _scan(self) -> list[Path]:
        """Files with an embedding suffix, recursive, hidden and empty ones left out (A1111), sorted."""
        if not self.folder.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(self.folder, followlinks=True):
            dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
            for filename in filenames:
                path = Path(dirpath) / filename
                if filename.startswith(".") or not filename.lower().endswith(EMBEDDING_SUFFIXES):
                    continue
                try:
                    if path.is_file() and path.stat().st_size > 0:
                        found.append(path)
                except OSError:  # removed while scanning
                    continue
        return sorted(found, key=lambda path: self._relative(path).lower())

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    # per model

    def loaded_for(self, model: EngineModel | None) -> dict[str, EmbeddingFile]:
        """Embeddings that fit the model (all readable ones when no model is loaded)."""
        if model is None:
            return {entry.name: entry for entry in self.entries}
        needed = model_vector_widths(model)
        return {entry.name: entry for entry in self.entries if fit_problem(entry, needed) is None}

    def skipped_for(self, model: EngineModel | None) -> dict[str, str]:
        """{name: reason} for unreadable files and, given a model, embeddings that do not fit it."""
        skipped = self.errors
        if model is not None:
            needed = model_vector_widths(model)
            for entry in self.entries:
                problem = fit_problem(entry, needed)
                if problem is not None:
                    skipped[entry.name] = problem
        return skipped

    def lookup_for(self, model: EngineModel) -> EmbeddingLookup:
        """The fitting embeddings indexed by their names' tokens (for the prompt encoder and the token counter);
        cached per model until the next refresh."""
        entries, generation = self._snapshot()
        with self._lock:
            cached = self._lookups.get(model)
        if cached is not None and cached[0] == generation:
            return cached[1]
        needed = model_vector_widths(model)
        fitting = [entry.embedding() for entry in entries if fit_problem(entry, needed) is None]
        lookup = EmbeddingLookup(fitting, model.prompt_encoder.encoders.chunk_tokenizer)
        with self._lock:
            self._lookups[model] = (generation, lookup)
        return lookup

    def api_listing(self, model: EngineModel | None) -> dict[str, dict[str, Any]]:
        """A1111 ``GET /sdapi/v1/embeddings``: {loaded: {name: item}, skipped: {name: item + reason}}."""
        loaded = {name: entry.api_item() for name, entry in self.loaded_for(model).items()}
        skipped: dict[str, Any] = {}
        for name, reason in self.skipped_for(model).items():
            entry = self.find(name)
            item = entry.api_item() if entry is not None else {"step": None, "sd_checkpoint": None,
                                                               "sd_checkpoint_name": None, "shape": None,
                                                               "vectors": None}
            skipped[name] = {**item, "reason": reason}
        return {"loaded": loaded, "skipped": skipped}

    # per job

    def prepare(self, model: EngineModel, request: GenerationRequest, *,
                emphasis: str = "Original") -> GenerationRequest:
        """Before a job: give the model's prompt encoder the embeddings that fit it, and return the request with
        ``TI hashes`` in its infotext parameters when the prompts use any."""
        lookup = self.lookup_for(model)
        model.prompt_encoder.set_embeddings(lookup)
        hashes = self.ti_hashes(model, request, emphasis=emphasis)
        if hashes is None:
            return request
        return request.replace(extra_params={**request.extra_params, TI_HASHES: hashes})

    def ti_hashes(self, model: EngineModel, request: GenerationRequest, *, emphasis: str = "Original") -> str | None:
        """A1111 ``TI hashes``: "name: short hash, ..." for the embeddings the positive and negative prompts use
        (every prompt-editing step and the hires pass), names without ':' and ','; None when none is used."""
        lookup = self.lookup_for(model)
        if not lookup:
            return None
        positive, _tags = extract_extra_networks(request.prompt)
        hires_steps = (request.hires.steps or request.steps) if request.hires is not None else None
        used = embeddings_used([positive, request.negative_prompt], model.prompt_encoder.encoders.chunk_tokenizer,
                               lookup, request.steps, emphasis=emphasis, hires_steps=hires_steps)
        files = {entry.name: entry for entry in self.entries}
        hashes = [f"{_infotext_name(embedding.name)}: {files[embedding.name].short_hash()}"
                  for embedding in used if embedding.name in files]
        return ", ".join(hashes) or None


def _infotext_name(name: str) -> str:
    return name.replace(":", "").replace(",", "")
