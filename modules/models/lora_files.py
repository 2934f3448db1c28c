"""The LoRA files on disk (`app.loras`): scanning, names and aliases, A1111 hashes, metadata, parsed-network cache.

Folders: models/Lora, --lora-dir and A1111's legacy models/LyCORIS, recursively; `.safetensors`, `.pt`, `.ckpt`
(pickles only through the weights-only loader). A file is found by its stem or by its training alias
(`ss_output_name`), as in A1111; an alias shared by two files matches neither. Parsed networks stay in RAM (LRU of
`cache_size` files, keyed by path + mtime + size), so a LoRA used again is not read from disk again.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.models import loader
from modules.models.lora_format import LoraFormatError, LoraNetwork, guess_family, parse_network
from modules.models.scan import walk_model_paths

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
HASH_BLOCK = 1 << 20
SHORT_HASH_LENGTH = 12  # A1111 "Lora hashes" use 12 hex characters


def file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header (tensor names, shapes, `__metadata__`) without reading any tensor data."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise LoraFormatError(f"{path.name}: not a safetensors file (header length {length}, file size {size})")
        try:
            header = json.loads(file.read(length))
        except ValueError as error:
            raise LoraFormatError(f"{path.name}: unreadable safetensors header ({error})") from error
    if not isinstance(header, dict):
        raise LoraFormatError(f"{path.name}: unreadable safetensors header")
    return header


def addnet_hash(path: Path) -> str:
    """A1111's LoRA hash of a safetensors file: sha256 of everything after the 8-byte length and the header."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        file.seek(8 + length)
        for block in iter(lambda: file.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def parsed_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """A1111 /loras metadata: values that hold a JSON object (ss_tag_frequency, ...) are decoded."""
    result: dict[str, Any] = {}
    for key, value in raw.items():
        result[key] = value
        if isinstance(value, str) and value.startswith("{"):
            try:
                result[key] = json.loads(value)
            except ValueError:
                pass
    return result


@dataclass
class LoraFile:
    """One LoRA file. `name` is the file stem (what `<lora:name:w>` uses); `alias` its ss_output_name or the stem."""

    path: Path
    name: str
    relative_name: str  # path below its root folder, '/' separators
    alias: str
    family: str | None  # "sd1" / "sd2" / "sdxl" guessed from the header; None when unknown (or a pickle)
    raw_metadata: dict[str, str] = field(default_factory=dict, repr=False)
    _hash_of: Callable[[LoraFile], str] | None = field(default=None, repr=False, compare=False)

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"

    def metadata(self) -> dict[str, Any]:
        """The safetensors `__metadata__`, JSON-object values decoded (A1111's /loras shape); {} for pickles."""
        return parsed_metadata(self.raw_metadata)

    def sha256(self) -> str:
        """A1111's LoRA hash: `sshs_model_hash` from the metadata, else the addnet hash (safetensors) or file sha256."""
        return (self._hash_of or compute_lora_hash)(self)

    def short_hash(self) -> str:
        return self.sha256()[:SHORT_HASH_LENGTH]


def compute_lora_hash(entry: LoraFile) -> str:
    declared = entry.raw_metadata.get("sshs_model_hash")
    if declared:
        return declared
    return addnet_hash(entry.path) if entry.is_safetensors else file_sha256(entry.path)


def describe_file(path: Path, root: Path) -> LoraFile:
    """Header-only read: alias and family guess; a broken header leaves them empty (errors come on use)."""
    raw: dict[str, str] = {}
    family = None
    if path.suffix.lower() == ".safetensors":
        try:
            header = read_safetensors_header(path)
            raw = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
            shapes = {key: tuple(value.get("shape", ())) for key, value in header.items() if isinstance(value, dict)}
            family = guess_family(shapes, raw)
        except (OSError, LoraFormatError) as error:
            log.warning("LoRA %s: %s", path, error)
    stem = path.name.rsplit(".", 1)[0]
    return LoraFile(path=path, name=stem, relative_name=path.relative_to(root).as_posix(),
                    alias=raw.get("ss_output_name") or stem, family=family, raw_metadata=raw)


def scan_lora_files(roots: tuple[Path, ...]) -> list[tuple[Path, Path]]:
    """(file, its root) for every LoRA file below the roots, each file once, sorted by relative path."""
    found: dict[Path, tuple[Path, Path]] = {}
    for path, root in walk_model_paths(roots, LORA_SUFFIXES):
        found.setdefault(path.resolve(), (path, root))
    return sorted(found.values(), key=lambda pair: pair[0].relative_to(pair[1]).as_posix().lower())


class LoraRegistry:
    """`app.loras`: the listed files, lookups by name/alias, and the RAM cache of parsed networks."""

    def __init__(self, roots: tuple[Path, ...], *, cache_size: int = 8) -> None:
        self.roots = roots
        self.cache_size = cache_size
        self.disk_reads = 0  # how many times a network was read from disk (the cache's effect, for tests/stats)
        self._lock = threading.RLock()
        self._networks: OrderedDict[Path, tuple[tuple[int, int], LoraNetwork]] = OrderedDict()
        self._hashes: dict[tuple[Path, int, int], str] = {}
        self._by_name: dict[str, LoraFile] = {}
        self._by_alias: dict[str, LoraFile] = {}
        self.entries: list[LoraFile] = []
        self.refresh()

    # --- listing --------------------------------------------------------------------------------------------
    def refresh(self) -> list[LoraFile]:
        """Rescan the folders (headers only); cached networks and hashes of unchanged files are kept."""
        entries = [describe_file(path, root) for path, root in scan_lora_files(self.roots)]
        by_name: dict[str, LoraFile] = {}
        for entry in entries:
            entry._hash_of = self._cached_hash
            if entry.name in by_name:
                log.warning("LoRA name %r is used by %s and %s; the first one is used", entry.name,
                            by_name[entry.name].path, entry.path)
            by_name.setdefault(entry.name, entry)
        by_alias: dict[str, LoraFile] = {}
        shared: set[str] = set()
        for entry in entries:
            if entry.alias == entry.name:
                continue
            if entry.alias in by_alias or entry.alias in by_name:
                shared.add(entry.alias)  # A1111: an alias used twice (or shadowing a name) is disabled
            by_alias.setdefault(entry.alias, entry)
        with self._lock:
            self.entries = entries
            self._by_name = by_name
            self._by_alias = {alias: entry for alias, entry in by_alias.items() if alias not in shared}
            live = {entry.path for entry in entries}
            for path in [path for path in self._networks if path not in live]:
                del self._networks[path]
        return entries

    def find(self, name: str) -> LoraFile | None:
        """By file stem, then by alias (A1111 order); None when nothing matches."""
        with self._lock:
            return self._by_name.get(name) or self._by_alias.get(name)

    def similar_names(self, name: str, count: int = 3) -> list[str]:
        with self._lock:
            names = list(self._by_name) + list(self._by_alias)
        exact = [candidate for candidate in names if candidate.lower() == name.lower()]
        close = difflib.get_close_matches(name, names, n=count, cutoff=0.5)
        return list(dict.fromkeys(exact + close))[:count]

    # --- parsed networks --------------------------------------------------------------------------------------
    def network(self, entry: LoraFile) -> LoraNetwork:
        """The parsed network, from RAM when the file is unchanged; raises LoraFormatError naming the file."""
        try:
            stamp = file_stamp(entry.path)
        except OSError as error:
            raise LoraFormatError(f"{entry.relative_name}: cannot read the LoRA file ({error}); refresh the list") \
                from error
        with self._lock:
            cached = self._networks.get(entry.path)
            if cached is not None and cached[0] == stamp:
                self._networks.move_to_end(entry.path)
                return cached[1]
            network = self._read(entry)
            self._networks[entry.path] = (stamp, network)
            while len(self._networks) > max(self.cache_size, 1):
                self._networks.popitem(last=False)
            return network

    def _read(self, entry: LoraFile) -> LoraNetwork:
        self.disk_reads += 1
        try:
            state_dict, metadata = loader.read_checkpoint(entry.path)
        except loader.CheckpointLoadError as error:
            raise LoraFormatError(f"LoRA {error}") from error
        # The loader's tensors may be memory-mapped views of the file: own copies keep the cache valid (and the
        # process alive) if the file is overwritten or truncated later.
        owned = {key: tensor.clone() for key, tensor in state_dict.items()}
        del state_dict
        network = parse_network(owned, metadata, entry.relative_name)
        if network.ignored_keys:  # e.g. bundled embeddings (bundle_emb.*), which are not used
            log.info("LoRA %s: %d keys ignored (e.g. %s)", entry.relative_name, len(network.ignored_keys),
                     network.ignored_keys[0])
        return network

    def cached_names(self) -> list[str]:
        with self._lock:
            return [path.name for path in self._networks]

    def _cached_hash(self, entry: LoraFile) -> str:
        stamp = file_stamp(entry.path)
        key = (entry.path, *stamp)
        with self._lock:
            if key not in self._hashes:
                self._hashes[key] = compute_lora_hash(entry)
            return self._hashes[key]


def lora_roots(models_dir: Path, lora_dir: Path) -> tuple[Path, ...]:
    """models/Lora, --lora-dir (when given) and A1111's legacy models/LyCORIS, each once."""
    roots = [models_dir / "Lora", lora_dir, models_dir / "LyCORIS"]
    return tuple(dict.fromkeys(root.resolve() if root.exists() else root for root in roots))
