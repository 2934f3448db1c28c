"""ControlNet models on disk and in memory: the list users pick from and the cache of loaded networks.

Files: models/ControlNet (and --controlnet-dir), recursive: single files (.safetensors; .pth/.pt/.ckpt/.bin read
weights-only) and diffusers folders (a `config.json` naming a ControlNet class, with its weights). Names follow the
A1111 extension: `"<file stem> [<legacy 8-hex hash>]"`; a request may give the title, the stem (any case), the stem
with another hash, or a part of the stem (the shortest matching stem wins), as the extension accepts.

Loaded networks live in a small LRU (setting `control_net_model_cache_size`) on the device and dtype of the
checkpoints, keyed by file and by the UNet architecture they were built for; evicted ones are freed. The model
manager owns the cache (it is the only owner of weights) and clears it when the checkpoint is unloaded.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from modules.engine.controlnet import ControlNetServices, LoadedControlNet
from modules.models.controlnet_loader import CONFIG_FILE, load_controlnet
from modules.models.scan import walk_model_paths

if TYPE_CHECKING:
    from modules.engine.model import EngineModel
    from modules.models.annotators import Annotators

log = logging.getLogger(__name__)

CONTROLNET_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
CONTROLNET_CLASSES = ("ControlNetModel", "ControlNetUnionModel")
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                  "diffusion_pytorch_model.bin")
LEGACY_HASH_OFFSET, LEGACY_HASH_LENGTH = 0x100000, 0x10000
DEFAULT_CACHE_SIZE = 2


class UnknownControlNetError(ValueError):
    """No ControlNet matches the name; the message lists what exists."""


def legacy_hash(path: Path) -> str:
    """A1111's old model hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex characters."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        file.seek(LEGACY_HASH_OFFSET)
        digest.update(file.read(LEGACY_HASH_LENGTH))
    return digest.hexdigest()[:8]


@dataclass(frozen=True)
class ControlNetEntry:
    path: Path  # weights file, or the diffusers folder
    name: str  # file stem / folder name
    short_hash: str

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()


def is_controlnet_folder(folder: Path) -> bool:
    config = folder / CONFIG_FILE
    if not config.is_file() or not any((folder / name).is_file() for name in FOLDER_WEIGHTS):
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name") in CONTROLNET_CLASSES
    except (OSError, ValueError):
        return False


def folder_weights(folder: Path) -> Path:
    return next(folder / name for name in FOLDER_WEIGHTS if (folder / name).is_file())


def scan_controlnets(roots: tuple[Path, ...]) -> list[ControlNetEntry]:
    """Every ControlNet under the roots, sorted by name (first root wins on a name clash)."""
    found: dict[str, ControlNetEntry | None] = {}
    for path, _root in walk_model_paths(roots, CONTROLNET_SUFFIXES, is_model_folder=is_controlnet_folder):
        name = path.name if path.is_dir() else path.name.rsplit(".", 1)[0]
        if name.lower() not in found:
            found[name.lower()] = _entry(path, name)
    return sorted((entry for entry in found.values() if entry is not None), key=lambda e: e.name.lower())


def _entry(path: Path, name: str) -> ControlNetEntry | None:
    try:
        return ControlNetEntry(path, name, legacy_hash(folder_weights(path) if path.is_dir() else path))
    except OSError as error:
        log.warning("skipping unreadable ControlNet %s: %s", path, error)
        return None


def find_controlnet(entries: list[ControlNetEntry], query: str) -> ControlNetEntry:
    """The A1111 extension's lookup: title, stem (any case, any hash suffix), then the shortest stem containing it."""
    wanted = query.strip()
    bare = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
    for entry in entries:
        if entry.title == wanted or entry.name.lower() in (wanted.lower(), bare.lower()):
            return entry
    partial = sorted((e for e in entries if bare.lower() in e.name.lower()), key=lambda e: len(e.name)) if bare else []
    if partial:
        return partial[0]
    names = ", ".join(e.title for e in entries) or "none (put ControlNet models into models/ControlNet)"
    raise UnknownControlNetError(f"ControlNet model {query!r} not found; available: {names}")


class ControlNetCache:
    """The ControlNet list and the loaded networks (LRU; on the checkpoints' device and dtype)."""

    def __init__(self, roots: tuple[Path, ...], *, device: torch.device, dtype: torch.dtype,
                 limit: int = DEFAULT_CACHE_SIZE) -> None:
        self._roots = roots
        self.device, self.dtype = device, dtype
        self.limit = limit
        self._lock = threading.RLock()
        self._loaded: OrderedDict[tuple, LoadedControlNet] = OrderedDict()
        self.entries: list[ControlNetEntry] = []
        self.refresh()

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._roots

    def refresh(self) -> list[ControlNetEntry]:
        with self._lock:
            self.entries = scan_controlnets(self._roots)
            return self.entries

    def titles(self) -> list[str]:
        return [entry.title for entry in self.entries]

    def find(self, query: str) -> ControlNetEntry:
        return find_controlnet(self.entries, query)

    def load_for(self, query: str, model: EngineModel) -> LoadedControlNet:
        """The network for `query`, built for `model`'s UNet (loaded once; kept while used)."""
        with self._lock:
            entry = self.find(query)
            unet_config = dict(model.components.unet.config)
            key = (entry.path, _mtime(entry.path), json.dumps(unet_config, sort_keys=True, default=str))
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            network = load_controlnet(entry.path, unet_config, self.dtype, model.model_name)
            loaded = LoadedControlNet(network.to(self.device), entry.title)
            self._loaded[key] = loaded
            self._evict_over_limit()
            log.info("ControlNet %s loaded", entry.title)
            return loaded

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self.limit = limit
            self._evict_over_limit()

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
            _free(self.device)

    def loaded_titles(self) -> list[str]:
        return [loaded.title for loaded in self._loaded.values()]

    def _evict_over_limit(self) -> None:
        evicted = False
        while len(self._loaded) > max(self.limit, 1):
            self._loaded.popitem(last=False)
            evicted = True
        if evicted:
            _free(self.device)


def _mtime(path: Path) -> float:
    return (folder_weights(path) if path.is_dir() else path).stat().st_mtime


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def controlnet_services(cache: ControlNetCache, annotators: Annotators) -> ControlNetServices:
    """What the engine calls for ControlNet units: networks from this cache, preprocessors with local weights."""
    return ControlNetServices(load=cache.load_for, title=lambda query: cache.find(query).title,
                              preprocess=annotators.run)
