"""Names and places for downloaded model files: URL parsing (Hugging Face "resolve" links, Content-Disposition),
file-name sanitising (no folders, no traversal, model suffixes only), the models/ folder for each kind, and when
downloads are refused. Pure functions, no network.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httpx

if TYPE_CHECKING:
    from modules.options import LaunchOptions
    from modules.paths import Paths

ALLOWED_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
FOLDER_KINDS = ("auto", "checkpoint", "lora", "vae", "controlnet", "esrgan", "embeddings")
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
MAX_NAME_LENGTH = 200
NAME_HINTS = (  # (pattern on the lower-case file name, folder kind), first match wins
    (r"lora|lycoris|locon|loha|lokr", "lora"),
    (r"control|t2i-?adapter", "controlnet"),
    (r"esrgan|swinir|scunet|ultrasharp|(^|[^a-z0-9])[1248]x[^a-z0-9]|_x[1248]", "esrgan"),
    (r"(^|[^a-z])vae([^a-z]|$)", "vae"),
    (r"embed|textual|negative|bad[-_]?hands?|bad[-_]?prompt", "embeddings"),
)
SUFFIX_KINDS = {".safetensors": "checkpoint", ".ckpt": "checkpoint", ".pt": "embeddings", ".pth": "esrgan",
                ".bin": "embeddings"}


class DownloadError(RuntimeError):
    """The download could not be done; the message says why and what to do."""


class OfflineError(DownloadError):
    """The host cannot be reached (no network, DNS failure, firewall)."""


class DownloadCancelled(DownloadError):
    """The user pressed Cancel; the `.part` file is kept so the next attempt resumes."""


def normalize_url(url: str) -> httpx.URL:
    """http(s) only; a Hugging Face `/blob/` page link becomes its `/resolve/` download link."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError) as error:
        raise DownloadError(f"not a valid URL: {url!r} ({error})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DownloadError(f"only http:// and https:// links can be downloaded, got {url!r}")
    if is_huggingface(parsed) and "/blob/" in parsed.path:
        parsed = parsed.copy_with(path=parsed.path.replace("/blob/", "/resolve/", 1))
    return parsed


def is_huggingface(url: httpx.URL) -> bool:
    return url.host in ("huggingface.co", "hf.co", "www.huggingface.co")


def huggingface_file(url: str) -> tuple[str, str, str] | None:
    """(repository, revision, path in the repo) of `https://huggingface.co/<repo>/resolve/<rev>/<path>`, else None."""
    parsed = normalize_url(url)
    match = re.fullmatch(r"/(?:(?:models|datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", parsed.path)
    return (match[1], unquote(match[2]), unquote(match[3])) if is_huggingface(parsed) and match else None


def file_name_from_url(url: str | httpx.URL) -> str | None:
    """The last path segment, percent-decoded once (query strings such as `?download=true` ignored)."""
    parsed = url if isinstance(url, httpx.URL) else normalize_url(url)
    segment = unquote(PurePosixPath(parsed.path).name) if parsed.path not in ("", "/") else ""
    return segment or None


def file_name_from_disposition(header: str | None) -> str | None:
    """`Content-Disposition: attachment; filename*=UTF-8''a%20b.safetensors` or `filename="a.safetensors"`."""
    if not header:
        return None
    if match := re.search(r"filename\*\s*=\s*[\w-]+'[^']*'([^;]+)", header, re.IGNORECASE):
        return unquote(match[1].strip().strip('"'))
    if match := re.search(r'filename\s*=\s*"([^"]+)"|filename\s*=\s*([^;]+)', header, re.IGNORECASE):
        return (match[1] or match[2]).strip()
    return None


def sanitize_file_name(name: str) -> str:
    """A plain model file name or DownloadError: no folders, no traversal, no device names, allowed suffix only."""
    clean = unicodedata.normalize("NFKC", name).strip()
    if not clean or "\x00" in clean or any(ord(c) < 32 for c in clean):
        raise DownloadError(f"bad file name {name!r}")
    if "/" in clean or "\\" in clean or PureWindowsPath(clean).drive or clean in (".", ".."):
        raise DownloadError(f"bad file name {name!r}: it must not contain folders")
    clean = re.sub(r'[:*?"<>|]', "_", clean)
    if clean.startswith(".") or clean.endswith((".", " ")) or len(clean) > MAX_NAME_LENGTH:
        raise DownloadError(f"bad file name {name!r}")
    if clean.split(".")[0].lower() in WINDOWS_RESERVED:
        raise DownloadError(f"bad file name {name!r}: reserved on Windows")
    suffix = Path(clean).suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise DownloadError(f"{clean!r} is not a model file: only .safetensors (preferred), "
                            f"{', '.join(PICKLE_SUFFIXES)} can be downloaded")
    return clean


def contained_path(folder: Path, name: str) -> Path:
    """folder/name, refusing anything that resolves outside the folder (symlinks resolved first)."""
    root = folder.resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise DownloadError(f"{name!r} would be written outside {folder}")
    return target


def pickle_warning(name: str) -> str | None:
    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        return (f"{name} is a pickle file: this app only ever loads it with torch.load(weights_only=True) "
                "(tensors only, no code). Prefer .safetensors when the author offers it.")
    return None


def guess_kind(name: str) -> str:
    """The models/ folder kind a file name suggests (used for "auto" before the content can be checked)."""
    lower = name.lower()
    for pattern, kind in NAME_HINTS:
        if re.search(pattern, lower):
            return kind
    return SUFFIX_KINDS.get(Path(lower).suffix, "checkpoint")


def folder_for_kind(paths: Paths, kind: str) -> Path:
    folders = {"checkpoint": paths.ckpt_dirs[0], "lora": paths.lora_dir, "vae": paths.vae_dir,
               "controlnet": paths.controlnet_dir, "esrgan": paths.esrgan_dir, "embeddings": paths.embeddings_dir}
    if kind not in folders:
        raise DownloadError(f"unknown model folder {kind!r}; choose one of {', '.join(FOLDER_KINDS)}")
    return folders[kind]


def download_refusal(options: LaunchOptions) -> str | None:
    """Why downloads are off (the UI is reachable from the network), or None."""
    if (options.listen or options.share) and not options.enable_insecure_extension_access:
        return ("Downloading models by URL is disabled while the UI is reachable from the network (--listen or "
                "--share); start with --enable-insecure-extension-access to allow it.")
    return None
