"""Finds checkpoints and VAEs on disk and hashes them (A1111 titles and short hashes), caching hashes on disk."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from modules.models.scan import walk_model_paths

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
HASH_BLOCK = 1 << 20


class UnknownModelError(ValueError):
    """No checkpoint or VAE matches the given name; the message lists what exists."""


@dataclass
class ModelFile:
    """A checkpoint file or diffusers folder. `name` is relative to its root folder, with '/' separators."""

    path: Path
    name: str
    is_folder: bool = False
    sha256: str | None = None

    @property
    def stem(self) -> str:
        return self.name if self.is_folder else self.name.rsplit(".", 1)[0]

    @property
    def model_name(self) -> str:
        """A1111 `model_name`: name without extension, '/' replaced by '_'."""
        return self.stem.replace("/", "_")

    @property
    def display_stem(self) -> str:
        """Infotext `Model:` value: the file stem without folders."""
        return self.stem.rsplit("/", 1)[-1]

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "unet").is_dir()


def scan_checkpoints(roots: tuple[Path, ...]) -> list[ModelFile]:
    """Checkpoint files (recursive; `*.vae.*` excluded as A1111 does) and diffusers folders, sorted by name."""
    found: dict[str, ModelFile] = {}
    for path, root in walk_model_paths(roots, CHECKPOINT_SUFFIXES, is_model_folder=_is_diffusers_folder):
        if path.is_dir() or ".vae." not in path.name.lower():
            name = path.relative_to(root).as_posix()
            found.setdefault(name, ModelFile(path, name, is_folder=path.is_dir()))
    return sorted(found.values(), key=lambda entry: entry.name.lower())


def scan_vaes(vae_dir: Path) -> list[ModelFile]:
    if not vae_dir.is_dir():
        return []
    files = [p for p in vae_dir.rglob("*") if p.is_file() and p.suffix.lower() in VAE_SUFFIXES]
    return sorted((ModelFile(p, p.relative_to(vae_dir).as_posix()) for p in files), key=lambda e: e.name.lower())


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_folder(path: Path) -> str:
    """A stable hash of a diffusers folder: the sha256 of its weight files' hashes in name order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(sha256_of_file(file).encode())
    return digest.hexdigest()


class HashCache:
    """sha256 per file, keyed by path + mtime + size, persisted as JSON (A1111 keeps cache.json the same way)."""

    def __init__(self, file: Path) -> None:
        self._file = file
        self._lock = threading.Lock()
        try:
            self._entries: dict[str, dict] = json.loads(file.read_text()) if file.exists() else {}
        except (OSError, ValueError):
            log.warning("hash cache %s unreadable; starting empty", file)
            self._entries = {}

    def sha256(self, entry: ModelFile) -> str:
        stat = entry.path.stat()
        key = str(entry.path.resolve())
        with self._lock:
            cached = self._entries.get(key)
        if cached and cached["mtime"] == stat.st_mtime and cached["size"] == stat.st_size:
            return cached["sha256"]
        value = sha256_of_folder(entry.path) if entry.is_folder else sha256_of_file(entry.path)
        with self._lock:
            self._entries[key] = {"mtime": stat.st_mtime, "size": stat.st_size, "sha256": value}
            self._save()
        return value

    def _save(self) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".tmp", dir=self._file.parent)
        with os.fdopen(handle, "w") as file:
            json.dump(self._entries, file)
        os.replace(tmp, self._file)


def find_model(entries: list[ModelFile], query: str) -> ModelFile:
    """Resolve any id users and clients send: title, relative name, model_name, stem, short hash or full sha256."""
    query = query.strip()
    for matches in (
        lambda e: e.title == query or e.name == query,
        lambda e: e.model_name == query or e.stem == query or e.display_stem == query,
        lambda e: e.sha256 is not None and (e.sha256 == query.lower() or e.short_hash == query.lower()),
        lambda e: query.endswith("]") and e.name == query.rsplit(" [", 1)[0],  # title with an old/other hash
    ):
        for entry in entries:
            if matches(entry):
                return entry
    names = ", ".join(e.title for e in entries) or "none (put .safetensors files into models/Stable-diffusion)"
    raise UnknownModelError(f"no model matches {query!r}; available: {names}")
