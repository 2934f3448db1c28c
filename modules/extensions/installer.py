"""Installing, updating and uninstalling extensions with git, and installing their requirements — only on request.

Security (shared/notes/security.md §4): the caller refuses all of this while the server listens on the network or
shares a link, unless --enable-insecure-extension-access (`access_refusal`). git and pip run as subprocesses
without a shell, with time limits, no terminal prompts, and arguments that cannot be read as options; only
https://, ssh:// (or git@host:path) and file:// URLs are cloned; the folder name is sanitised and must be new.
A clone lands in a hidden temporary folder first and is renamed into place once complete.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from modules.options import LaunchOptions

GIT_TIMEOUT_SECONDS = 300
PIP_TIMEOUT_SECONDS = 1800
MAX_OUTPUT_LINES = 200  # kept for the error message of a failed command
URL_SCHEMES = ("https", "ssh", "file")
SCP_LIKE_URL = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/-]+$")  # git@github.com:user/repo.git
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PROGRESS_SPLIT = re.compile(r"[\r\n]+")

Progress = Callable[[str], None]


class ExtensionInstallError(RuntimeError):
    """git or pip failed, or the request cannot be carried out; the message is for the user."""


class InsecureAccessRefused(PermissionError):
    """Installing, updating or uninstalling while the server is exposed without --enable-insecure-extension-access."""


@dataclass(frozen=True)
class UpdateResult:
    before: str  # commit before the pull
    after: str  # commit after it

    @property
    def changed(self) -> bool:
        return self.before != self.after


# ---------------------------------------------------------------------------------------------- access rule


def access_refusal(options: LaunchOptions) -> str | None:
    """Why extension changes are refused right now, or None when they are allowed (A1111's rule)."""
    if options.enable_insecure_extension_access or not (options.listen or options.share):
        return None
    exposed = "listens on the network (--listen)" if options.listen else "shares a public link (--share)"
    return (f"Installing, updating and uninstalling extensions is disabled because the server {exposed}: anyone who "
            "can reach it could run code on this machine. Restart without --listen/--share, or add "
            "--enable-insecure-extension-access if you trust everyone who can reach it.")


def require_access(options: LaunchOptions) -> None:
    refusal = access_refusal(options)
    if refusal is not None:
        raise InsecureAccessRefused(refusal)


# -------------------------------------------------------------------------------------------- URLs and names


def checked_url(url: str) -> str:
    """The URL if git may clone it: https://, ssh://, file:// or scp-like git@host:path; ValueError otherwise."""
    url = (url or "").strip()
    if not url:
        raise ValueError("enter the git URL of the extension")
    if url.startswith("-") or any(ord(char) < 32 for char in url):
        raise ValueError(f"not a git URL: {url!r}")
    if SCP_LIKE_URL.match(url):
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES or not (parts.path.strip("/") if scheme == "file" else parts.netloc):
        raise ValueError(f"only https://, ssh:// (or git@host:path) and file:// URLs can be installed, got {url!r}")
    return url


def folder_name_for(url: str, requested: str | None = None) -> str:
    """The folder an extension is cloned into: the requested name, else the URL's last part without ".git";
    letters, digits, '.', '_' and '-' only (others become '-'); never hidden, never '..'."""
    raw = (requested or "").strip() or url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    raw = raw[:-4] if raw.endswith(".git") else raw
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.")
    if not FOLDER_NAME.match(name):
        raise ValueError(f"cannot make a folder name from {raw!r}; give one explicitly")
    return name


def contained_folder(root: Path, name: str) -> Path:
    """root/name for a plain folder name directly inside root (no separators, no '..', no symlink escape)."""
    if not FOLDER_NAME.match(name):
        raise ValueError(f"not an extension folder name: {name!r}")
    folder = root / name
    if folder.is_symlink() or folder.resolve().parent != root.resolve():
        raise ValueError(f"{name!r} is not a folder inside {root}")
    return folder


# ------------------------------------------------------------------------------------------- subprocesses


def _environment(ceiling: Path | None = None) -> dict[str, str]:
    """No prompts (a password prompt would hang the server), stable English output, no parent repository."""
    environment = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="", LC_ALL="C",
                       GIT_SSH_COMMAND="ssh -o BatchMode=yes")
    if ceiling is not None:  # a folder without its own .git must not find the app's repository above it
        environment["GIT_CEILING_DIRECTORIES"] = str(ceiling)
    return environment


def run_streamed(command: Sequence[str], *, cwd: Path | None = None, timeout: float,
                 on_progress: Progress | None = None, environment: dict[str, str] | None = None) -> str:
    """Run without a shell, passing each output line (git's \\r progress lines too) to `on_progress`; kill it
    after `timeout` seconds. Returns the output; ExtensionInstallError (with its last lines) when it fails."""
    try:
        process = subprocess.Popen(list(command), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=environment)
    except OSError as error:
        raise ExtensionInstallError(f"could not run {command[0]}: {error}") from None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        pending = ""
        for chunk in iter(lambda: process.stdout.read1(4096), b""):  # type: ignore[union-attr]
            pending += chunk.decode("utf-8", errors="replace")
            *complete, pending = PROGRESS_SPLIT.split(pending)
            for line in filter(None, (text.strip() for text in complete)):
                lines = (lines + [line])[-MAX_OUTPUT_LINES:]
                if on_progress is not None:
                    on_progress(line)
        if pending.strip():
            lines.append(pending.strip())
        code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
    if code != 0:
        timed_out = f" (timed out after {timeout:.0f} s)" if expired.is_set() else ""
        tail = "\n".join(lines[-8:])
        raise ExtensionInstallError(f"{Path(command[0]).name} {command[1]} failed{timed_out}:\n{tail}")
    return "\n".join(lines)


def git(*arguments: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT_SECONDS,
        on_progress: Progress | None = None, ceiling: Path | None = None) -> str:
    return run_streamed(["git", *arguments], cwd=cwd, timeout=timeout, on_progress=on_progress,
                        environment=_environment(ceiling))


def head_commit(folder: Path) -> str:
    return git("rev-parse", "HEAD", cwd=folder, ceiling=folder.parent).strip()


def is_own_checkout(folder: Path) -> bool:
    """A folder that is a git checkout itself (not a folder inside the app's own repository)."""
    return (folder / ".git").exists()


# -------------------------------------------------------------------------------------------------- actions


def install(root: Path, url: str, *, name: str | None = None, on_progress: Progress | None = None,
            timeout: float = GIT_TIMEOUT_SECONDS) -> Path:
    """`git clone` the URL into root/<name>; returns the new folder. Never runs anything from the clone."""
    url = checked_url(url)
    root.mkdir(parents=True, exist_ok=True)
    target = contained_folder(root, folder_name_for(url, name))
    if target.exists():
        raise ExtensionInstallError(f"{target.name} is already installed (uninstall it first, or choose another "
                                    "folder name)")
    staging = root / f".installing-{target.name}-{uuid.uuid4().hex[:8]}"  # hidden: never loaded as an extension
    try:
        git("clone", "--progress", "--", url, str(staging), cwd=root, timeout=timeout, on_progress=on_progress,
            ceiling=root)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def update(folder: Path, *, on_progress: Progress | None = None, timeout: float = GIT_TIMEOUT_SECONDS) -> UpdateResult:
    """`git pull --ff-only` in the extension's own checkout (local changes are never overwritten)."""
    if not is_own_checkout(folder):
        raise ExtensionInstallError(f"{folder.name} was not installed from git (it has no .git folder of its own); "
                                    "it cannot be updated here")
    before = head_commit(folder)
    git("pull", "--ff-only", "--progress", cwd=folder, timeout=timeout, on_progress=on_progress,
        ceiling=folder.parent)
    return UpdateResult(before, head_commit(folder))


def uninstall(root: Path, name: str) -> Path:
    """Delete root/<name> (a symlink is removed, never followed); returns the path removed."""
    folder = root / name
    if folder.is_symlink():
        folder.unlink()
        return folder
    folder = contained_folder(root, name)
    if not folder.is_dir():
        raise ExtensionInstallError(f"{name} is not installed")
    shutil.rmtree(folder)
    return folder


def requirements_file(folder: Path) -> Path | None:
    path = folder / "requirements.txt"
    return path if path.is_file() else None


def pip_install_command(folder: Path, declared: Sequence[str], python: str = sys.executable) -> list[str] | None:
    """`python -m pip install -r requirements.txt`, or the manifest's requirements after `--`; None: nothing to do.

    Declared requirements cannot smuggle pip options (`--index-url ...`): each must not start with '-'."""
    file = requirements_file(folder)
    if file is not None:
        return [python, "-m", "pip", "install", "-r", str(file)]
    packages = [item.strip() for item in declared if item.strip()]
    if not packages:
        return None
    bad = [item for item in packages if item.startswith("-")]
    if bad:
        raise ExtensionInstallError(f"requirements may not be pip options: {', '.join(bad)}")
    return [python, "-m", "pip", "install", "--", *packages]


def install_requirements(folder: Path, declared: Sequence[str], *, on_progress: Progress | None = None,
                         timeout: float = PIP_TIMEOUT_SECONDS) -> bool:
    """Install what the extension declares (only when the user asks); False when it declares nothing."""
    command = pip_install_command(folder, declared)
    if command is None:
        return False
    run_streamed(command, cwd=folder, timeout=timeout, on_progress=on_progress,
                 environment=dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1"))
    return True
