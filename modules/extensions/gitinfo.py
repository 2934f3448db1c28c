"""Where an extension came from, for /sdapi/v1/extensions (A1111 shape): read from its own git checkout, if any."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class GitInfo:
    remote: str | None = None
    branch: str | None = None
    commit_hash: str | None = None
    commit_date: int | None = None  # unix time of the checked-out commit


def _git(folder: Path, *args: str) -> str | None:
    try:
        completed = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                   timeout=GIT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None


def read_git_info(folder: Path) -> GitInfo:
    """Only for a folder that is its own checkout (a built-in extension inside the app's repository has none)."""
    if not (folder / ".git").exists():
        return GitInfo()
    head = _git(folder, "log", "-1", "--format=%H %ct")
    commit_hash, commit_date = head.split() if head else (None, None)
    return GitInfo(remote=_git(folder, "config", "--get", "remote.origin.url"),
                   branch=_git(folder, "rev-parse", "--abbrev-ref", "HEAD"), commit_hash=commit_hash,
                   commit_date=int(commit_date) if commit_date else None)
