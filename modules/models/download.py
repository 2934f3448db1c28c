"""Download a model file from a URL into the right models/ folder: resumable, sha256-checked, never executed.

This is the app's only network code path besides --share. Rules it keeps (notes/security.md §2–4):
- only http(s) URLs; only model file names (`.safetensors` preferred; `.ckpt/.pt/.pth/.bin` are pickles and the
  app only ever loads them with `weights_only`); names are sanitised and the target is checked to stay inside its
  folder; an existing file is never overwritten;
- bytes go to `<name>.part` (+ `<name>.part.json`: source URL and ETag/Last-Modified for `If-Range`); a new
  attempt resumes with an HTTP Range request when the server supports it and restarts from zero when it does
  not (a 200 answer to a Range request); the finished file is moved into place with os.replace;
- a given sha256 is checked before the move (mismatch → the partial file is deleted); nothing is ever loaded:
  "auto" classification reads only a safetensors header (JSON);
- refused while the UI is reachable from the network (--listen/--share) unless
  --enable-insecure-extension-access (InvokeAI CVE-2024-12029 was an unauthenticated download route).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
import httpx

from modules.models.download_names import (
    ALLOWED_SUFFIXES, FOLDER_KINDS, DownloadCancelled, DownloadError, OfflineError, contained_path,
    download_refusal, file_name_from_disposition, file_name_from_url, folder_for_kind, guess_kind, normalize_url,
    pickle_warning, sanitize_file_name,
)
from modules.models.file_info import component_kind_of

__all__ = ["DownloadCancelled", "DownloadError", "DownloadProgress", "DownloadResult", "OfflineError",
           "download_file", "move_into"]

CHUNK_BYTES = 1 << 20
PROGRESS_INTERVAL = 0.1  # seconds between progress callbacks
USER_AGENT = "sd-webui-model-downloader"
TIMEOUT = httpx.Timeout(30.0, connect=15.0)
CONTENT_KINDS = {"checkpoint": "checkpoint", "lora": "lora", "vae": "vae", "controlnet": "controlnet",
                 "embedding": "embeddings"}  # detect.detect_component_kind → folder kind


@dataclass(frozen=True)
class DownloadProgress:
    file_name: str
    downloaded: int
    total: int | None
    bytes_per_second: float
    resumed_from: int = 0

    @property
    def fraction(self) -> float | None:
        return min(self.downloaded / self.total, 1.0) if self.total else None


@dataclass
class DownloadResult:
    path: Path
    kind: str
    size: int
    sha256: str
    resumed: bool = False
    warnings: list[str] = field(default_factory=list)


ProgressCallback = Callable[[DownloadProgress], None]


# ------------------------------------------------------------------------------------------------ the transfer


@dataclass
class _Part:
    """`<name>.part` and its sidecar (source URL + validators for If-Range)."""

    final: Path

    @property
    def path(self) -> Path:
        return self.final.with_name(self.final.name + ".part")

    @property
    def sidecar(self) -> Path:
        return self.final.with_name(self.final.name + ".part.json")

    def resumable_size(self, url: str) -> tuple[int, dict]:
        """Bytes already there for this URL (0, and the stale part deleted, if it came from another URL)."""
        try:
            info = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        if not self.path.is_file() or info.get("url") != url:
            self.discard()
            return 0, {}
        return self.path.stat().st_size, info

    def remember(self, url: str, response: httpx.Response) -> None:
        headers = response.headers
        info = {"url": url, "etag": headers.get("etag"), "last_modified": headers.get("last-modified")}
        self.sidecar.write_text(json.dumps(info), encoding="utf-8")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)


def _if_range(info: dict) -> str | None:
    etag = info.get("etag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return info.get("last_modified")


def _content_range(response: httpx.Response) -> tuple[int | None, int | None]:
    """(first byte, total) of `Content-Range: bytes a-b/total` (or `bytes */total`)."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", response.headers.get("content-range", "").strip())
    if not match:
        return None, None
    return (int(match[1]) if match[1] else None), (int(match[2]) if match[2] != "*" else None)


def _raise_for_status(response: httpx.Response, url: httpx.URL) -> None:
    if response.status_code in (401, 403):
        raise DownloadError(f"{url.host} refused the download ({response.status_code}): the file needs a login "
                            "(e.g. a gated Hugging Face repository) or the link expired")
    if response.status_code == 404:
        raise DownloadError(f"{url} was not found (404): check the link")
    if response.status_code >= 400 and response.status_code != 416:
        raise DownloadError(f"{url.host} answered {response.status_code} {response.reason_phrase}")


def _sha256_of(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest


class _Transfer:
    """One download: resolves the name, streams into the part file, verifies and moves it into place."""

    def __init__(self, url: httpx.URL, folder: Callable[[str], Path], *, file_name: str | None, sha256: str | None,
                 on_progress: ProgressCallback | None, cancel: threading.Event | None) -> None:
        self.url, self.folder = url, folder
        self.expected = sha256.strip().lower() if sha256 and sha256.strip() else None
        if self.expected is not None and not re.fullmatch(r"[0-9a-f]{64}", self.expected):
            raise DownloadError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}")
        self.name = sanitize_file_name(file_name) if file_name else self._name_from_url()
        self.on_progress, self.cancel = on_progress, cancel or threading.Event()
        self.resumed_from = 0

    def _name_from_url(self) -> str | None:
        name = file_name_from_url(self.url)
        if name and Path(name).suffix.lower() in ALLOWED_SUFFIXES:
            return sanitize_file_name(name)
        return None  # e.g. https://host/api/download/123: the server names it (Content-Disposition)

    def target(self) -> Path:
        assert self.name is not None
        final = contained_path(self.folder(self.name), self.name)
        if final.exists():
            raise DownloadError(f"{final.name} already exists in {final.parent}; delete it first or choose "
                                "another file name")
        return final

    def run(self, client: httpx.Client) -> tuple[Path, int, str]:
        if self.name is not None:
            self.target()  # fail before any network traffic
        for _attempt in range(3):  # a retry happens after learning the name, or after a 416 on a stale part
            outcome = self._attempt(client)
            if outcome is not None:
                return outcome
        raise DownloadError(f"{self.url.host} kept refusing the byte range; delete the .part file and try again")

    def _attempt(self, client: httpx.Client) -> tuple[Path, int, str] | None:
        part = _Part(self.target()) if self.name else None
        offset, info = part.resumable_size(str(self.url)) if part else (0, {})
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator := _if_range(info):
                headers["If-Range"] = validator
        with client.stream("GET", self.url, headers=headers) as response:
            _raise_for_status(response, self.url)
            if part is None:
                self.name = self._name_from_response(response)
                if _Part(self.target()).path.exists():
                    return None  # reconnect with a Range header to resume the existing part
                part = _Part(self.target())
            if response.status_code == 416:
                _, total = _content_range(response)
                if offset and total == offset:
                    return self._finish(part, offset, _sha256_of(part.path).hexdigest())
                part.discard()
                return None
            resumed = response.status_code == 206
            if resumed and _content_range(response)[0] != offset:  # not the range asked for: start over
                part.discard()
                return None
            if not resumed:
                offset = 0  # the server sent the whole file (no Range support, or the file changed): start over
            part.remember(str(self.url), response)
            total = _content_range(response)[1] if resumed else None
            if total is None and response.headers.get("content-length", "").isdigit():
                total = offset + int(response.headers["content-length"])
            self.resumed_from = offset
            size, digest = self._stream(response, part, offset, total)
        if total is not None and size != total:
            raise DownloadError(f"the connection closed after {size} of {total} bytes; press Download again to resume")
        return self._finish(part, size, digest)

    def _name_from_response(self, response: httpx.Response) -> str:
        for candidate in (file_name_from_disposition(response.headers.get("content-disposition")),
                          file_name_from_url(response.url)):
            if candidate and Path(candidate).suffix.lower() in ALLOWED_SUFFIXES:
                return sanitize_file_name(candidate)
        raise DownloadError("the link does not say the file's name: enter a file name (ending in .safetensors)")

    def _stream(self, response: httpx.Response, part: _Part, offset: int, total: int | None) -> tuple[int, str]:
        digest = _sha256_of(part.path) if offset else hashlib.sha256()
        size, started, last_report = offset, time.monotonic(), 0.0
        try:
            with open(part.path, "ab" if offset else "wb") as file:
                for chunk in response.iter_bytes():  # as received: nothing buffered is lost if the link drops
                    if self.cancel.is_set():
                        raise DownloadCancelled(f"download cancelled; {size} bytes kept in {part.path.name}, "
                                                "press Download again to resume")
                    file.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    now = time.monotonic()
                    if now - last_report >= PROGRESS_INTERVAL:
                        self._report(size, total, (size - offset) / max(now - started, 1e-6))
                        last_report = now
        except httpx.TransportError as error:
            raise DownloadError(f"the connection to {self.url.host} was lost after {size} bytes ({error}); press "
                                "Download again to resume") from None
        self._report(size, total, (size - offset) / max(time.monotonic() - started, 1e-6))
        return size, digest.hexdigest()

    def _report(self, size: int, total: int | None, speed: float) -> None:
        if self.on_progress is not None:
            self.on_progress(DownloadProgress(self.name or "", size, total, speed, self.resumed_from))

    def _finish(self, part: _Part, size: int, digest: str) -> tuple[Path, int, str]:
        if self.expected is not None and digest != self.expected:
            part.discard()
            raise DownloadError(f"sha256 mismatch for {part.final.name}: expected {self.expected}, got {digest}; "
                                "the downloaded data was deleted")
        os.replace(part.path, part.final)
        part.sidecar.unlink(missing_ok=True)
        return part.final, size, digest


def download_file(url: str, folder: Path | Callable[[str], Path], *, file_name: str | None = None,
                  sha256: str | None = None, on_progress: ProgressCallback | None = None,
                  cancel: threading.Event | None = None, client: httpx.Client | None = None) -> DownloadResult:
    """Download `url` into `folder` (or the folder `folder(name)` picks once the name is known)."""
    parsed = normalize_url(url)
    choose = folder if callable(folder) else (lambda _name: folder)
    transfer = _Transfer(parsed, choose, file_name=file_name, sha256=sha256, on_progress=on_progress, cancel=cancel)
    own_client = client is None
    client = client or httpx.Client(timeout=TIMEOUT, follow_redirects=True, headers={"User-Agent": USER_AGENT})
    try:
        path, size, digest = transfer.run(client)
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        raise OfflineError(f"cannot reach {parsed.host}: this machine is offline or the host is blocked "
                           f"({error})") from None
    except httpx.TimeoutException as error:
        raise DownloadError(f"{parsed.host} stopped answering ({error}); press Download again to resume") from None
    except httpx.HTTPError as error:
        raise DownloadError(f"download from {parsed.host} failed: {error}") from None
    finally:
        if own_client:
            client.close()
    warnings = [w for w in (pickle_warning(path.name),) if w]
    return DownloadResult(path, "", size, digest, resumed=transfer.resumed_from > 0, warnings=warnings)


# ------------------------------------------------------------------------------------------- into the models/ tree


def move_into(path: Path, folder: Path) -> Path:
    """Move a finished download to another models/ folder without overwriting (copy + replace across disks)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = contained_path(folder, path.name)
    if target.exists():
        raise DownloadError(f"downloaded {path.name}, but {target} already exists; the file stays in {path.parent}")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        os.replace(path, target)
    except OSError:  # another file system
        shutil.copyfile(path, temporary)
        os.replace(temporary, target)
        path.unlink()
    return target
