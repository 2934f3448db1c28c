"""Walking the model folders: one walker for checkpoints, LoRAs and ControlNets (A1111 scans recursively)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path


def walk_model_paths(roots: tuple[Path, ...], suffixes: tuple[str, ...], *,
                     is_model_folder: Callable[[Path], bool] | None = None) -> Iterator[tuple[Path, Path]]:
    """(path, its root) for every file ending in one of `suffixes` (lower-case) and every folder that
    `is_model_folder` accepts, below each existing root; symlinks are followed, a model folder is not descended
    into (its unet/, vae/ ... are parts of it), and missing roots are skipped."""
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            folder = Path(dirpath)
            if is_model_folder is not None:
                for dirname in list(dirnames):
                    if is_model_folder(folder / dirname):
                        dirnames.remove(dirname)
                        yield folder / dirname, root
                if is_model_folder(folder):  # a root that is itself a model folder: its files are its parts
                    continue
            for filename in filenames:
                if filename.lower().endswith(suffixes):
                    yield folder / filename, root
