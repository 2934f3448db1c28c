"""The model manager: the only owner of weights.

Checkpoints are read once and kept in RAM as built CPU components (diffusers layout, run dtype) up to
`sd_checkpoints_limit`; exactly one is resident for generation. On the CPU the resident model *is* the cached
one, so a warm switch copies nothing. On an accelerator there is one live copy on the device; a switch between
checkpoints of the same architecture copies the new weights into it in place (no rebuild, compiled modules stay
valid), skipping components whose weights are equal to the resident ones.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from modules.engine.model import EngineModel
from modules.models import loader
from modules.models.annotators import Annotators
from modules.models.controlnets import ControlNetCache
from modules.models.detect import detect_family, with_prediction_type
from modules.models.previews import find_taesd_decoder, load_taesd_decoder
from modules.models.registry import HashCache, ModelFile, UnknownModelError, find_model, scan_checkpoints, scan_vaes

log = logging.getLogger(__name__)

COMPONENT_NAMES = ("unet", "vae", "text_encoder", "text_encoder_2")
SWITCH_HISTORY = 20  # switches remembered for the Models tab


class NoCheckpointError(RuntimeError):
    """Generation was asked for while no checkpoint exists or is loaded."""


@dataclass(frozen=True)
class SwitchRecord:
    """One checkpoint switch: how long it took and whether the weights came from the RAM cache or the disk."""

    title: str
    seconds: float
    source: str  # "ram" or "disk"
    finished_at: float  # time.time()


@dataclass
class CachedCheckpoint:
    """A checkpoint's components held in RAM (on the CPU), ready to become the resident model."""

    entry: ModelFile
    components: loader.ModelComponents
    architecture: tuple  # every tensor's name and shape: equal tuples ⇒ weights can be copied in place

    def modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self.components, name) for name in COMPONENT_NAMES
                if getattr(self.components, name) is not None}


def _architecture(components: loader.ModelComponents) -> tuple:
    return (components.info.family,) + tuple(
        (name, tuple((key, tuple(t.shape)) for key, t in module.state_dict().items()))
        for name in COMPONENT_NAMES if (module := getattr(components, name)) is not None)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Exact equality; stops at the first differing tensor, so distinct weights cost almost nothing."""
    if a is b:
        return True
    left, right = a.state_dict(), b.state_dict()
    if left.keys() != right.keys():
        return False
    return all(x.shape == y.shape and torch.equal(x, y.to(x.device)) for x, y in ((left[k], right[k]) for k in left))


def sidecar_prediction_type(checkpoint: Path) -> str | None:
    """A1111's override: `<checkpoint>.yaml` beside the file; `parameterization: "v"` means v-prediction.

    SD2 768-v and 512-base checkpoints cannot be told apart from their weights, so users state it this way.
    """
    sidecar = checkpoint.with_suffix(".yaml")
    if not sidecar.is_file():
        return None
    try:
        config = OmegaConf.load(sidecar)
    except Exception as error:
        log.warning("ignoring unreadable %s: %s", sidecar, error)
        return None
    parameterization = OmegaConf.select(config, "model.params.parameterization", default=None) or \
        OmegaConf.select(config, "parameterization", default=None)
    return "v_prediction" if parameterization == "v" else "epsilon"


class ModelManager:
    def __init__(
        self,
        *,
        checkpoint_dirs: tuple[Path, ...],
        vae_dir: Path,
        preview_dirs: tuple[Path, ...] = (),
        hash_cache: HashCache,
        device: torch.device,
        dtype: torch.dtype,
        ram_limit: int = 2,
        low_memory: bool = False,
        controlnet_dirs: tuple[Path, ...] = (),
        annotator_dirs: tuple[Path, ...] = (),
        controlnet_cache_size: int = 2,
    ) -> None:
        self._checkpoint_dirs = checkpoint_dirs
        self._vae_dir = vae_dir
        self._preview_dirs = preview_dirs
        self._hashes = hash_cache
        self.device, self.dtype = device, dtype
        self.ram_limit = ram_limit  # checkpoints kept in RAM (the sd_checkpoints_limit setting)
        self.low_memory = low_memory  # --medvram/--lowvram: sliced attention and tiled VAE decode
        self._lock = threading.RLock()
        self._ram: OrderedDict[Path, CachedCheckpoint] = OrderedDict()
        self._resident: CachedCheckpoint | None = None
        self._live: loader.ModelComponents | None = None  # device copy; on the CPU the resident's own components
        self._model: EngineModel | None = None
        self._vae_choice = "Automatic"
        self._vae_cache: dict[Path, nn.Module] = {}
        self._previews: dict[str, nn.Module | None] = {}
        self.checkpoints: list[ModelFile] = []
        self.vaes: list[ModelFile] = []
        self.last_switch_seconds: float | None = None
        # Models tab: checkpoints kept in RAM regardless of the LRU limit (this session only), switch times
        self._pinned: set[Path] = set()
        self._switch_seconds: dict[Path, float] = {}
        self.switch_history: deque[SwitchRecord] = deque(maxlen=SWITCH_HISTORY)
        # ControlNet (issue 6): ControlNet networks and preprocessor weights are owned here too
        self.controlnets = ControlNetCache(controlnet_dirs, device=device, dtype=dtype, limit=controlnet_cache_size)
        self.annotators = Annotators(annotator_dirs, device=device)
        self.refresh()

    # --- listing ------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rescan the folders; hashes come from the cache or are computed once."""
        with self._lock:
            checkpoints = scan_checkpoints(self._checkpoint_dirs)
            for entry in checkpoints:
                try:
                    entry.sha256 = self._hashes.sha256(entry)
                except OSError as error:
                    log.warning("cannot hash %s: %s", entry.path, error)
            self.checkpoints = checkpoints
            self.vaes = scan_vaes(self._vae_dir)

    def find_checkpoint(self, query: str) -> ModelFile:
        return find_model(self.checkpoints, query)

    def find_vae(self, query: str) -> ModelFile:
        return find_model(self.vaes, query)

    def vae_choices(self) -> list[str]:
        return ["Automatic", "None", *(entry.name for entry in self.vaes)]

    @property
    def current(self) -> ModelFile | None:
        return self._resident.entry if self._resident else None

    @property
    def model(self) -> EngineModel:
        """The resident model for generation; raises NoCheckpointError with how to add one."""
        if self._model is None:
            if not self.checkpoints:
                raise NoCheckpointError(
                    "No checkpoint found. Put a .safetensors or .ckpt file (or a diffusers folder) into "
                    f"{self._checkpoint_dirs[0]} and press the refresh button next to the checkpoint list.")
            raise NoCheckpointError("No checkpoint is loaded; choose one in the checkpoint list.")
        return self._model

    def location(self, entry: ModelFile) -> str:
        if self._resident and self._resident.entry.path == entry.path:
            return "device"
        return "ram" if entry.path in self._ram else "disk"

    # --- loading and switching ------------------------------------------------------------------------------
    def load(self, query: str) -> ModelFile:
        """Make `query` the resident checkpoint (a no-op if it already is)."""
        with self._lock:
            entry = self.find_checkpoint(query)
            if self._resident is not None and self._resident.entry.path == entry.path:
                return entry
            started = time.perf_counter()
            source = "ram" if entry.path in self._ram else "disk"
            cached = self._cached(entry)
            if self.device.type == "cpu":
                self._live = cached.components
            elif self._live is not None and self._resident is not None and \
                    self._resident.architecture == cached.architecture:
                self._copy_into_live(cached)
            else:
                self._live = self._model = None
                self._free_memory()
                self._live = self._device_copy(cached)
            self._resident = cached
            self._model = EngineModel(dataclasses.replace(self._live), self._identity(entry),
                                      native_size=cached.components.native_size)
            self._apply_vae()
            self._model.preview_decoder = self._preview_decoder(self._model.kind)
            if self.low_memory:
                self._model.components.unet.set_attention_slice("auto")
                self._model.components.vae.enable_tiling()
            self._evict_over_limit()
            self._record_switch(entry, time.perf_counter() - started, source)
            log.info("checkpoint %s ready in %.2f s", entry.title, self.last_switch_seconds)
            return entry

    def unload(self) -> None:
        """Free the resident model and the RAM cache, as A1111's unload-checkpoint does."""
        with self._lock:
            self._model = self._live = self._resident = None
            self._ram.clear()
            self._vae_cache.clear()
            self.controlnets.clear()
            self.annotators.unload()
            self._free_memory()

    def reload(self) -> ModelFile | None:
        """Read the resident checkpoint from disk again (after the file changed)."""
        with self._lock:
            entry = self.current
            if entry is None:
                return None
            self.unload()
            return self.load(entry.name)

    def set_vae(self, choice: str) -> None:
        """'Automatic', 'None' or a file in models/VAE; changes only the VAE."""
        with self._lock:
            if choice not in ("Automatic", "None"):
                choice = self.find_vae(choice).name
            self._vae_choice = choice
            if self._model is not None:
                self._apply_vae()

    def _cached(self, entry: ModelFile) -> CachedCheckpoint:
        cached = self._ram.get(entry.path)
        if cached is not None:
            self._ram.move_to_end(entry.path)
            return cached
        if entry.is_folder:
            components = loader.load_diffusers_folder(entry.path, dtype=self.dtype)
        else:
            state, metadata = loader.read_checkpoint(entry.path)
            info = detect_family(state, metadata)
            override = sidecar_prediction_type(entry.path)
            if override is not None and override != info.prediction_type:
                info = with_prediction_type(info, override)
            components = loader.load_components(state, info, self.dtype, metadata)
            del state
        cached = CachedCheckpoint(entry, components, _architecture(components))
        self._ram[entry.path] = cached
        return cached

    def _device_copy(self, cached: CachedCheckpoint) -> loader.ModelComponents:
        moved = {name: copy.deepcopy(module).to(self.device) for name, module in cached.modules().items()}
        return dataclasses.replace(cached.components, **moved)

    def _copy_into_live(self, cached: CachedCheckpoint) -> None:
        """Same architecture on an accelerator: copy only the components whose weights differ."""
        assert self._live is not None and self._resident is not None
        previous = self._resident.modules()
        for name, module in cached.modules().items():
            if not _same_weights(previous[name], module):
                getattr(self._live, name).load_state_dict(module.state_dict())

    def _preview_decoder(self, kind: str):
        """TAESD for live previews, loaded once per kind (SD / SDXL) and kept: it is 2.4 M parameters."""
        key = "sdxl" if kind == "sdxl" else "sd"
        if key not in self._previews:
            path = find_taesd_decoder(self._preview_dirs, kind)
            self._previews[key] = load_taesd_decoder(path, self.device, self.dtype) if path else None
        return self._previews[key]

    def _identity(self, entry: ModelFile) -> dict:
        return {"model_name": entry.display_stem, "model_hash": entry.short_hash, "title": entry.title}

    def _apply_vae(self) -> None:
        """Give the engine model the chosen VAE (the checkpoint's own for Automatic without a sidecar, or None)."""
        assert self._model is not None and self._resident is not None and self._live is not None
        vae_file = self._vae_file_for(self._resident.entry)
        source = self._resident.components.vae if vae_file is None else self._vae_module(vae_file)
        if self.device.type == "cpu":
            self._model.components.vae = source  # the engine's view only; the cache keeps the checkpoint's own VAE
        elif not _same_weights(self._live.vae, source):
            self._live.vae.load_state_dict(source.state_dict())
        if vae_file is None:
            self._model.set_vae_identity(None, None)
        else:
            entry = ModelFile(vae_file, vae_file.name)
            entry.sha256 = self._hashes.sha256(entry)
            self._model.set_vae_identity(vae_file.name, entry.short_hash)

    def _vae_file_for(self, checkpoint: ModelFile) -> Path | None:
        if self._vae_choice == "None":
            return None
        if self._vae_choice == "Automatic":
            if checkpoint.is_folder:
                return None
            stem = checkpoint.path.name.rsplit(".", 1)[0]
            for suffix in (".vae.safetensors", ".vae.pt", ".vae.ckpt"):  # A1111: <ckpt>.vae.* beside it
                candidate = checkpoint.path.with_name(stem + suffix)
                if candidate.is_file():
                    return candidate
            return None
        return self.find_vae(self._vae_choice).path

    def _vae_module(self, path: Path) -> nn.Module:
        if path not in self._vae_cache:
            assert self._resident is not None
            self._vae_cache[path] = loader.load_vae_file(path, self._resident.components.info, dtype=self.dtype)
        return self._vae_cache[path]

    def set_ram_limit(self, limit: int) -> None:
        """Apply the sd_checkpoints_limit setting now: evict the least recently used checkpoints over it."""
        with self._lock:
            self.ram_limit = limit
            self._evict_over_limit()

    def _evict_over_limit(self) -> None:
        """Drop least recently used checkpoints over the limit; the resident and pinned ones always stay."""
        limit = max(1, self.ram_limit)
        resident = self._resident.entry.path if self._resident else None
        evictable = [path for path in self._ram if path != resident and path not in self._pinned]  # LRU first
        doomed = evictable[:max(len(self._ram) - limit, 0)]
        for path in doomed:
            del self._ram[path]
        if doomed:
            self._free_memory()

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory_stats(self) -> dict:
        return {"ram_cached": [cached.entry.title for cached in self._ram.values()],
                "resident": self._resident.entry.title if self._resident else None,
                "pinned": sorted(entry.title for entry in self.checkpoints if entry.path in self._pinned),
                "last_switch_seconds": self.last_switch_seconds}

    # --- Models tab: keep in RAM, unload one checkpoint, switch times ---------------------------------------
    def is_pinned(self, entry: ModelFile) -> bool:
        return entry.path in self._pinned

    def keep_in_ram(self, query: str, keep: bool = True) -> ModelFile:
        """Pin a checkpoint in the RAM cache (read now if needed; never evicted) or unpin it (evictable again)."""
        with self._lock:
            entry = self.find_checkpoint(query)
            if keep:
                self._pinned.add(entry.path)
                self._cached(entry)
            else:
                self._pinned.discard(entry.path)
            self._evict_over_limit()
            return entry

    def unload_checkpoint(self, query: str) -> ModelFile:
        """Free one checkpoint from RAM (and from the device when resident); it is unpinned too."""
        with self._lock:
            entry = self.find_checkpoint(query)
            self._pinned.discard(entry.path)
            if self._resident is not None and self._resident.entry.path == entry.path:
                self._model = self._live = self._resident = None
            self._ram.pop(entry.path, None)
            self._free_memory()
            return entry

    def cached_family(self, entry: ModelFile) -> str | None:
        """The family of a checkpoint held in RAM (known without reading the file), else None."""
        cached = self._ram.get(entry.path)
        return cached.components.info.family if cached else None

    def last_switch_for(self, entry: ModelFile) -> float | None:
        """Seconds the most recent switch to this checkpoint took (None if never loaded this session)."""
        return self._switch_seconds.get(entry.path)

    def _record_switch(self, entry: ModelFile, seconds: float, source: str) -> None:
        self.last_switch_seconds = seconds
        self._switch_seconds[entry.path] = seconds
        self.switch_history.append(SwitchRecord(entry.title, seconds, source, time.time()))


__all__ = ["ModelManager", "NoCheckpointError", "SwitchRecord", "UnknownModelError"]
