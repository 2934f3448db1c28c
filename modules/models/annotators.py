"""Preprocessor weights (models/annotators) and the preprocessor service the engine and the API call.

Weights are only read from local folders: `models/annotators/` itself or any sub-folder of it (so the A1111
extension's `annotator/downloads/<module>/` folders can be copied in as they are). controlnet_aux detectors are
built with `from_pretrained(<that folder>)`, which reads `folder/filename` and never reaches the Hub; their pickles
load with torch's weights-only default. One detector is kept loaded (the last used); `unload()` frees it.
"""
from __future__ import annotations

import gc
import importlib
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.engine.preprocessors import (PREPROCESSORS, PreprocessorError, PreprocessorSpec, find_preprocessor,
                                          run_builtin, run_detector)

log = logging.getLogger(__name__)

ANNOTATOR_SOURCE = "the lllyasviel/Annotators repository"


@dataclass(frozen=True)
class PreprocessorStatus:
    spec: PreprocessorSpec
    folder: Path | None  # where its files are; None when it needs none or they are missing
    missing: tuple[str, ...]  # files not found

    @property
    def available(self) -> bool:
        return not self.missing

    def help_text(self, annotators_dir: Path) -> str:
        """What a user must do to enable it ('' when available)."""
        if self.available:
            return ""
        return (f"{self.spec.label} needs {', '.join(self.missing)} (from {ANNOTATOR_SOURCE}) in {annotators_dir}")


class Annotators:
    """Which preprocessors can run, and running them (built-in ones, or a detector loaded from local files)."""

    def __init__(self, roots: tuple[Path, ...], *, device: torch.device) -> None:
        self.roots = roots
        self.device = device
        self._lock = threading.RLock()
        self._detector: tuple[str, Any] | None = None  # (module name, detector): the last one used

    @property
    def folder(self) -> Path:
        """Where users put annotator files (the first root)."""
        return self.roots[0] if self.roots else Path("models") / "annotators"

    def status(self, spec: PreprocessorSpec) -> PreprocessorStatus:
        if not spec.files:
            return PreprocessorStatus(spec, None, ())
        for folder in self._candidate_folders():
            missing = tuple(name for name in spec.files if not (folder / name).is_file())
            if not missing:
                return PreprocessorStatus(spec, folder, ())
        return PreprocessorStatus(spec, None, spec.files)

    def statuses(self) -> list[PreprocessorStatus]:
        return [self.status(spec) for spec in PREPROCESSORS]

    def available(self) -> list[PreprocessorSpec]:
        return [status.spec for status in self.statuses() if status.available]

    def require(self, module: str) -> PreprocessorSpec:
        """The preprocessor for `module`, or PreprocessorError naming the files it lacks and where they go."""
        spec = find_preprocessor(module)
        status = self.status(spec)
        if not status.available:
            raise PreprocessorError(f"ControlNet preprocessor {status.help_text(self.folder)}")
        return spec

    def run(self, module: str, image: np.ndarray, *, resolution: int, threshold_a: float | None = None,
            threshold_b: float | None = None, seed: int = 0) -> np.ndarray:
        """H×W×3 uint8 RGB → the detected map (same size); failures become PreprocessorError with the reason."""
        spec = self.require(module)
        try:
            if not spec.files:
                return run_builtin(spec, image, resolution=resolution, threshold_a=threshold_a,
                                   threshold_b=threshold_b, seed=seed)
            with self._lock, torch.inference_mode():
                return run_detector(spec, self._load(spec), image, resolution=resolution, threshold_a=threshold_a,
                                    threshold_b=threshold_b)
        except PreprocessorError:
            raise
        except Exception as error:  # a detector's own failure (bad weights, odd image): report, do not crash
            log.exception("preprocessor %s failed", spec.label)
            raise PreprocessorError(f"ControlNet preprocessor {spec.label} failed: {type(error).__name__}: {error}") \
                from error

    def unload(self) -> None:
        with self._lock:
            self._detector = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _candidate_folders(self) -> list[Path]:
        folders = []
        for root in self.roots:
            if root.is_dir():
                folders.append(root)
                folders += sorted(path for path in root.rglob("*") if path.is_dir())
        return folders

    def _load(self, spec: PreprocessorSpec) -> Any:
        if self._detector is not None and self._detector[0] == spec.name:
            return self._detector[1]
        self.unload()
        folder = self.status(spec).folder
        assert folder is not None, "require() checked the files"
        module_name, class_name = spec.detector.split(":")
        with warnings.catch_warnings():  # controlnet_aux imports print many timm deprecation warnings
            warnings.simplefilter("ignore")
            detector_class = getattr(importlib.import_module(module_name), class_name)
            detector = detector_class.from_pretrained(str(folder), **spec.load_kwargs)
        if hasattr(detector, "to"):
            detector = detector.to(self.device)
        self._detector = (spec.name, detector)
        log.info("preprocessor %s loaded from %s", spec.label, folder)
        return detector
