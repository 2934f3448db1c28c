"""Upscalers the app offers: the built-in resamplers and one per ESRGAN-family model file in models/ESRGAN.

Model files (.pth / .safetensors) are read here as plain state dicts (pickles only with weights_only=True) and
handed to spandrel, which detects the architecture (ESRGAN, Real-ESRGAN compact, SwinIR, ...). At most
`cache_size` loaded models are kept. The engine never sees this registry: it receives `engine.upscale` objects or a
plain `pixel_upscale(image, width, height, name)` callable.
"""
from __future__ import annotations

import logging
import pickle
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import safetensors.torch
import torch
from PIL import Image

from modules.engine.generate import LATENT_UPSCALE_MODES
from modules.engine.upscale import ModelUpscaler, Upscaler, resampler, upscale_image

if TYPE_CHECKING:
    import spandrel

log = logging.getLogger(__name__)

BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")  # A1111 order in /upscalers and the dropdowns
MODEL_SUFFIXES = (".pth", ".safetensors")
DEFAULT_SCALE = 4  # A1111 lists every ESRGAN model (and its built-ins) with scale 4
_SCALE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(\d)x(?:[^a-z0-9]|$)|x(\d)(?:[^0-9]|$)", re.IGNORECASE)

PixelUpscale = Callable[[Image.Image, int, int, str], Image.Image]


class UnknownUpscalerError(ValueError):
    """No upscaler has this name; the message lists the choices."""


class UpscalerLoadError(ValueError):
    """A model file could not be read or is not a supported image upscaler."""


@dataclass(frozen=True)
class UpscalerEntry:
    """One choice. Built-ins have no path; `scale` is the model's (read when loaded, else guessed from the name)."""

    name: str
    path: Path | None = None
    scale: int = DEFAULT_SCALE

    @property
    def is_model(self) -> bool:
        return self.path is not None


def scale_from_name(stem: str) -> int:
    """'4x-UltraSharp' → 4, 'RealESRGAN_x2plus' → 2; A1111's 4 when the name says nothing."""
    match = _SCALE_IN_NAME.search(stem)
    return int(match.group(1) or match.group(2)) if match else DEFAULT_SCALE


def scan_model_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((path for path in folder.rglob("*") if path.suffix.lower() in MODEL_SUFFIXES and path.is_file()),
                  key=lambda path: str(path.relative_to(folder)).lower())


def entry_names(files: list[Path], folder: Path) -> list[str]:
    """File stems (A1111); a stem already taken (a built-in, a latent mode, another file) keeps its extension."""
    taken = {name.lower() for name in (*BUILTIN_UPSCALERS, *LATENT_UPSCALE_MODES)}
    names = []
    for path in files:
        name = path.stem
        if name.lower() in taken:
            name = path.relative_to(folder).as_posix()
        taken.add(name.lower())
        names.append(name)
    return names


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a .safetensors file, or a .pth read with weights_only=True (a pickle with code is refused)."""
    try:
        if path.suffix.lower() == ".safetensors":
            return dict(safetensors.torch.load_file(str(path), device="cpu"))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UpscalerLoadError(
            f"{path.name}: refused, the pickle holds objects other than tensors (only weights-only loading is "
            f"allowed; convert it to .safetensors with a trusted tool). Detail: {str(error).splitlines()[0]}"
        ) from error
    except (OSError, RuntimeError, EOFError, safetensors.SafetensorError, ValueError) as error:
        raise UpscalerLoadError(f"{path.name}: cannot read the model file ({error})") from error
    if not isinstance(loaded, dict):
        raise UpscalerLoadError(f"{path.name}: expected a dict of tensors, found {type(loaded).__name__}")
    return loaded


def load_descriptor(path: Path, device: torch.device) -> spandrel.ImageModelDescriptor:
    """spandrel detects the architecture from the state dict (it unwraps `params_ema`, `params`, ...)."""
    import spandrel  # ~0.4 s to import all its architectures: only when a model is first used

    state_dict = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise UpscalerLoadError(f"{path.name}: not an upscaler architecture spandrel knows") from None
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise UpscalerLoadError(f"{path.name}: the weights do not fit the detected architecture ({error})") from error
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3 \
            or descriptor.output_channels != 3 or descriptor.scale < 1:
        raise UpscalerLoadError(f"{path.name}: {descriptor.architecture.name} is not an RGB image-to-image model")
    if device.type == "cuda" and descriptor.supports_half:
        descriptor.half()
    return descriptor.eval()


class UpscalerRegistry:
    """Scans `folder` for model files; resolves names to engine upscalers, loading models on demand (LRU cache)."""

    def __init__(self, folder: Path, *, device: torch.device | str = "cpu", cache_size: int = 2) -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.cache_size = max(1, cache_size)
        self._lock = threading.RLock()
        self._entries: list[UpscalerEntry] = []
        self._scales: dict[Path, int] = {}  # real scales of models loaded once
        self._loaded: OrderedDict[tuple[Path, int, int], spandrel.ImageModelDescriptor] = OrderedDict()
        self.refresh()

    # --- listing ------------------------------------------------------------------------------------------
    def refresh(self) -> list[UpscalerEntry]:
        """Rescan the folder; models of removed or changed files are dropped from the cache."""
        files = scan_model_files(self.folder)
        with self._lock:
            models = [UpscalerEntry(name, path, self._scales.get(path, scale_from_name(path.stem)))
                      for name, path in zip(entry_names(files, self.folder), files)]
            self._entries = [*(UpscalerEntry(name) for name in BUILTIN_UPSCALERS), *models]
            for key in list(self._loaded):
                if not self._unchanged(key):
                    del self._loaded[key]
            return list(self._entries)

    @property
    def entries(self) -> list[UpscalerEntry]:
        with self._lock:
            return list(self._entries)

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def find(self, name: str) -> UpscalerEntry:
        """Exact name, else case-insensitive; a miss rescans the folder once (a file added since start-up).
        UnknownUpscalerError lists the choices."""
        entry = self._match(name, self.entries)
        if entry is None:
            entry = self._match(name, self.refresh())
        if entry is None:
            raise UnknownUpscalerError(f"upscaler {name!r} not found; choose one of {', '.join(self.names)}")
        return entry

    @staticmethod
    def _match(name: str, entries: list[UpscalerEntry]) -> UpscalerEntry | None:
        exact = [entry for entry in entries if entry.name == name]
        folded = [entry for entry in entries if entry.name.lower() == str(name).lower()]
        return (exact or folded or [None])[0]

    # --- loading ------------------------------------------------------------------------------------------
    def upscaler(self, name: str, *, tile: int = 192, overlap: int = 8) -> Upscaler:
        """The engine object for `name`; a model file is loaded (or taken from the cache) here."""
        entry = self.find(name)
        if entry.path is None:
            return resampler(entry.name)
        descriptor = self._descriptor(entry.path)
        return ModelUpscaler(name=entry.name, scale=int(descriptor.scale), network=descriptor, tile=max(0, tile),
                             overlap=max(0, overlap), device=descriptor.device, dtype=descriptor.dtype)

    def pixel_upscale(self, *, tile: int = 192, overlap: int = 8) -> PixelUpscale:
        """The callable hires fix uses: (image, width, height, upscaler name) → image of exactly width × height."""
        def upscale(image: Image.Image, width: int, height: int, name: str) -> Image.Image:
            return upscale_image(image, self.upscaler(name, tile=tile, overlap=overlap), size=(width, height),
                                 crop=False)
        return upscale

    def _descriptor(self, path: Path) -> spandrel.ImageModelDescriptor:
        with self._lock:
            try:
                key = self._file_key(path)
            except OSError as error:
                raise UpscalerLoadError(f"{path.name}: cannot read the model file ({error})") from error
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            descriptor = load_descriptor(path, self.device)
            log.info("loaded upscaler %s: %s %dx", path.name, descriptor.architecture.name, descriptor.scale)
            self._loaded[key] = descriptor
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
            self._remember_scale(path, int(descriptor.scale))
            return descriptor

    def _remember_scale(self, path: Path, scale: int) -> None:
        self._scales[path] = scale
        self._entries = [UpscalerEntry(e.name, e.path, scale) if e.path == path else e for e in self._entries]

    @classmethod
    def _unchanged(cls, key: tuple[Path, int, int]) -> bool:
        try:
            return cls._file_key(key[0]) == key
        except OSError:
            return False

    @staticmethod
    def _file_key(path: Path) -> tuple[Path, int, int]:
        stat = path.stat()
        return path, stat.st_mtime_ns, stat.st_size


def hires_upscaler_choices(registry: UpscalerRegistry | None) -> list[str]:
    """Hires fix choices: the latent modes (engine), then every pixel upscaler of the registry."""
    pixel = registry.names if registry is not None else list(BUILTIN_UPSCALERS)
    return [*LATENT_UPSCALE_MODES, *pixel]


def resolve_hires_upscaler(registry: UpscalerRegistry | None, name: str) -> str:
    """The canonical hires upscaler name (a latent mode or a registry entry); UnknownUpscalerError lists choices."""
    if name in LATENT_UPSCALE_MODES:
        return name
    if registry is None and name in BUILTIN_UPSCALERS:
        return name
    if registry is not None:
        try:
            return registry.find(name).name
        except UnknownUpscalerError:
            pass
    raise UnknownUpscalerError(f"hr_upscaler {name!r} is not available; choose one of "
                               f"{', '.join(hires_upscaler_choices(registry))}")
