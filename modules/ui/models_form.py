"""The Models tab without gradio: the checkpoint table, load / unload / keep in RAM, the RAM cache limit, switch
times, and downloads and merges run in a background thread whose progress the tab streams.

Every function takes the App and plain values and returns text (or raises ValueError/RuntimeError/OSError with a
message for the UI to show); tests call them directly.
"""
from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modules.model_actions import download_model, merge_into_models
from modules.models.download import DownloadProgress, DownloadResult
from modules.models.download_names import FOLDER_KINDS
from modules.models.file_info import FAMILY_LABELS, family_of
from modules.models.merge import MERGE_METHODS, MergeResult
from modules.models.registry import ModelFile
from modules.ui.results import error_html

if TYPE_CHECKING:
    from modules.app import App

CHECKPOINT_COLUMNS = ["Checkpoint", "Family", "Hash", "Size", "Location", "Keep in RAM", "Last switch"]
FOLDER_LABELS = {"auto": "Auto (from the file)", "checkpoint": "Stable-diffusion (checkpoint)", "lora": "Lora",
                 "vae": "VAE", "controlnet": "ControlNet", "esrgan": "ESRGAN (upscaler)", "embeddings": "embeddings"}
NO_VAE = "None"
POLL_SECONDS = 0.25


# ------------------------------------------------------------------------------------------------- the table


def format_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def file_size(entry: ModelFile) -> int:
    if entry.is_folder:
        return sum(path.stat().st_size for path in entry.path.rglob("*") if path.is_file())
    return entry.path.stat().st_size


def family_label(app: App, entry: ModelFile) -> str:
    """From the RAM cache, else from the safetensors header or diffusers configs; "?" for unopened pickles."""
    family = app.models.cached_family(entry)
    if family is None:
        info = family_of(entry.path)
        family = info.family if info else None
    return FAMILY_LABELS.get(family, family) if family else "?"


def location_label(app: App, entry: ModelFile) -> str:
    location = app.models.location(entry)
    if location == "device":
        return f"loaded ({app.models.device.type})"
    return "RAM" if location == "ram" else "disk"


def checkpoint_rows(app: App) -> list[list[str]]:
    rows = []
    for entry in app.models.checkpoints:
        seconds = app.models.last_switch_for(entry)
        rows.append([entry.name, family_label(app, entry), entry.short_hash or "", format_size(file_size(entry)),
                     location_label(app, entry), "yes" if app.models.is_pinned(entry) else "",
                     f"{seconds:.2f} s" if seconds is not None else ""])
    return rows


def checkpoint_names(app: App) -> list[str]:
    return [entry.name for entry in app.models.checkpoints]


def vae_names(app: App) -> list[str]:
    return [NO_VAE, *(entry.name for entry in app.models.vaes)]


def ram_summary(app: App) -> str:
    stats = app.models.memory_stats()
    pinned = ", ".join(stats["pinned"]) or "none"
    return (f"{len(stats['ram_cached'])} checkpoint(s) in RAM, limit {app.settings.sd_checkpoints_limit} "
            f"(kept in RAM regardless of the limit: {pinned}).")


def switch_history_markdown(app: App) -> str:
    """The recent switches, newest first: when, which, how long, and whether it came from RAM or the disk."""
    records = list(app.models.switch_history)[::-1]
    if not records:
        return "No checkpoint switch yet."
    lines = ["| time | checkpoint | seconds | from |", "|---|---|---|---|"]
    for record in records:
        when = time.strftime("%H:%M:%S", time.localtime(record.finished_at))
        lines.append(f"| {when} | {record.title} | {record.seconds:.2f} | {record.source} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- table actions


def _entry(app: App, name: str | None) -> ModelFile:
    if not name:
        raise ValueError("choose a checkpoint in the list first")
    return app.models.find_checkpoint(name)


def load_checkpoint(app: App, name: str | None) -> str:
    """Make it the loaded checkpoint (saved as the setting, like the top bar); says how long it took."""
    entry = _entry(app, name)
    if app.models.current is not None and app.models.current.path == entry.path:
        return f"{entry.title} is already loaded."
    app.update_settings({"sd_model_checkpoint": entry.title})
    record = app.models.switch_history[-1]
    return f"Loaded {record.title} in {record.seconds:.2f} s (from {record.source})."


def unload_checkpoint(app: App, name: str | None) -> str:
    entry = _entry(app, name)
    was_loaded = app.models.current is not None and app.models.current.path == entry.path
    app.jobs.run_exclusive(lambda: app.models.unload_checkpoint(entry.name))
    if was_loaded:
        return f"Unloaded {entry.title}; choose a checkpoint before generating."
    return f"Freed {entry.title} from RAM."


def toggle_keep_in_ram(app: App, name: str | None) -> str:
    """Pin (read into RAM now, never evicted by the limit) or unpin."""
    entry = _entry(app, name)
    keep = not app.models.is_pinned(entry)
    app.jobs.run_exclusive(lambda: app.models.keep_in_ram(entry.name, keep))
    if keep:
        return f"{entry.title} is kept in RAM (this session); switching to it is fast."
    return f"{entry.title} is no longer kept in RAM; the cache limit applies to it again."


def set_ram_limit(app: App, value: Any) -> str:
    if value is None or isinstance(value, bool) or float(value) != int(value) or int(value) < 1:
        raise ValueError(f"the RAM cache limit must be a whole number of checkpoints, at least 1 (got {value!r})")
    app.update_settings({"sd_checkpoints_limit": int(value)})
    return ram_summary(app)


def refresh(app: App) -> str:
    app.models.refresh()
    return f"Found {len(app.models.checkpoints)} checkpoint(s) and {len(app.models.vaes)} VAE(s)."


# ----------------------------------------------------------------------------------------- background tasks


@dataclass
class BackgroundTask:
    """Work on a thread of its own so the UI can stream its progress; `cancel` is passed to work that can stop."""

    thread: threading.Thread | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: Any = None
    result: Any = None
    error: Exception | None = None

    @classmethod
    def start(cls, work: Callable[[BackgroundTask], Any]) -> BackgroundTask:
        task = cls()

        def run() -> None:
            try:
                task.result = work(task)
            except Exception as error:  # shown to the user; the thread must end cleanly
                task.error = error

        task.thread = threading.Thread(target=run, name="models-tab-task", daemon=True)
        task.thread.start()
        return task

    def report(self, progress: Any) -> None:
        self.progress = progress

    @property
    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def updates(self, interval: float = POLL_SECONDS) -> Iterator[Any]:
        """The latest progress every `interval` seconds while the task runs."""
        while not self.done:
            yield self.progress
            time.sleep(interval)


@dataclass(frozen=True)
class TaskUpdate:
    html: str
    finished: bool = False
    error: str | None = None  # shown as a warning too


def stream_task(task: BackgroundTask, render_progress: Callable[[Any], str],
                render_result: Callable[[Any], str]) -> Iterator[TaskUpdate]:
    for progress in task.updates():
        yield TaskUpdate(render_progress(progress))
    if task.error is not None:
        message = str(task.error)
        yield TaskUpdate(error_html(message), finished=True, error=message)
    else:
        yield TaskUpdate(render_result(task.result), finished=True)


def progress_bar_html(fraction: float | None, label: str) -> str:
    percent = int((fraction or 0.0) * 100)
    return ('<div class="sd-progress" style="border:1px solid #888;border-radius:4px;position:relative;height:1.6em">'
            f'<div style="background:#f97316;height:100%;width:{percent}%;border-radius:3px"></div>'
            '<span style="position:absolute;inset:0;padding:0 .5em;line-height:1.6em;font-size:.9em">'
            f"{html.escape(label)}</span></div>")


# ------------------------------------------------------------------------------------------------- download


def download_folder_choices() -> list[tuple[str, str]]:
    return [(FOLDER_LABELS[kind], kind) for kind in FOLDER_KINDS]


def start_download(app: App, url: str, kind: str, sha256: str = "", file_name: str = "") -> BackgroundTask:
    if not (url or "").strip():
        raise ValueError("enter the URL of a model file")
    return BackgroundTask.start(lambda task: download_model(
        app, url.strip(), kind or "auto", file_name=file_name.strip() or None, sha256=sha256.strip() or None,
        on_progress=task.report, cancel=task.cancel))


def download_progress_html(progress: DownloadProgress | None) -> str:
    if progress is None:
        return progress_bar_html(0.0, "Connecting...")
    done_mb, speed = progress.downloaded / 2**20, progress.bytes_per_second / 2**20
    total = f" of {progress.total / 2**20:.1f}" if progress.total else ""
    resumed = f", resumed at {progress.resumed_from / 2**20:.1f} MB" if progress.resumed_from else ""
    return progress_bar_html(progress.fraction, f"{progress.file_name}: {done_mb:.1f}{total} MB at {speed:.1f} MB/s"
                                                f"{resumed}")


def download_result_html(result: DownloadResult) -> str:
    summary = (f"Saved {result.path.name} ({format_size(result.size)}) in {result.path.parent} as {result.kind}; "
               f"sha256 {result.sha256}." + (" Resumed a partial download." if result.resumed else ""))
    warnings = [f'<span style="color:#b45309">{html.escape(warning)}</span>' for warning in result.warnings]
    return "<br>".join([html.escape(summary), *warnings])


# ---------------------------------------------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeForm:
    primary: str | None
    secondary: str | None
    tertiary: str | None
    method: str = MERGE_METHODS[0]
    multiplier: float = 0.3
    vae: str | None = NO_VAE
    fp16: bool = False
    custom_name: str = ""
    overwrite: bool = False


def start_merge(app: App, form: MergeForm) -> BackgroundTask:
    if not form.primary:
        raise ValueError("choose a primary model (A)")
    return BackgroundTask.start(lambda task: merge_into_models(
        app, form.primary, form.secondary or None, form.tertiary or None, method=form.method,
        multiplier=float(form.multiplier), vae=form.vae, fp16=bool(form.fp16), custom_name=form.custom_name or "",
        overwrite=bool(form.overwrite), on_progress=lambda done, total: task.report((done, total))))


def merge_progress_html(progress: tuple[int, int] | None) -> str:
    if progress is None:
        return progress_bar_html(0.0, "Waiting for the worker (a generation may be running)...")
    done, total = progress
    return progress_bar_html(done / max(total, 1), f"Merging: tensor {done} of {total}")


def merge_result_html(result: MergeResult) -> str:
    title = result.entry.title if result.entry else result.path.name
    family = FAMILY_LABELS.get(result.family, result.family)
    return html.escape(f"Saved {title} ({family}) in {result.path.parent}; it is in the checkpoint list now.")
