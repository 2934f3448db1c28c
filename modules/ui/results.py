"""What the UI shows while and after a job runs: progress bar HTML, the gallery and its infotexts. Pure (no gradio)."""
from __future__ import annotations

import html
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

from modules.engine.result import GenerationResult
from modules.jobs import Job, JobState, ProgressSnapshot

POLL_SECONDS = 0.3


@dataclass
class GalleryInfo:
    """Per gallery item (grid first when there is one): its infotext and seeds, for the info box and ♻️."""

    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    selected: int = 0

    def infotext(self, index: int | None = None) -> str:
        index = self.selected if index is None else index
        return self.infotexts[index] if 0 <= index < len(self.infotexts) else ""

    def seed(self) -> int:
        return self.seeds[self.selected] if 0 <= self.selected < len(self.seeds) else -1

    def subseed(self) -> int:
        return self.subseeds[self.selected] if 0 <= self.selected < len(self.subseeds) else -1


def poll_job(job: Job, interval: float = POLL_SECONDS) -> Iterator[ProgressSnapshot]:
    """A snapshot every `interval` seconds until the job ends."""
    while not job.done:
        yield job.snapshot()
        time.sleep(interval)


def format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def progress_html(snapshot: ProgressSnapshot) -> str:
    """A1111-style bar: percent, ETA, and the job's text (batch and step)."""
    if snapshot.state is JobState.QUEUED:
        label = "Waiting in queue..."
        percent = 0
    else:
        percent = int(snapshot.fraction * 100)
        eta = f" ETA: {format_eta(snapshot.eta_seconds)}" if snapshot.fraction > 0 else ""
        steps = f": step {snapshot.step}/{snapshot.steps}" if snapshot.steps else ""
        passes = f" ({snapshot.job_no + 1}/{snapshot.job_count})" if snapshot.job_count > 1 else ""
        label = f"{percent}%{eta} — {html.escape(snapshot.textinfo)}{steps}{passes}"
    return (
        '<div class="sd-progress" style="border:1px solid #888;border-radius:4px;position:relative;height:1.6em">'
        f'<div style="background:#f97316;height:100%;width:{percent}%;border-radius:3px"></div>'
        '<span style="position:absolute;inset:0;padding:0 .5em;line-height:1.6em;font-size:.9em">'
        f"{label}</span></div>"
    )


def gallery_from_result(result: GenerationResult) -> tuple[list[Image.Image], GalleryInfo]:
    """Images for the gallery (grid first, as A1111 shows it) with their infotexts embedded for downloads, then the
    ControlNet units' detected maps, as the extension appends them (the control_net_no_detectmap setting empties
    result.detected_maps)."""
    for image, text in zip(result.images, result.infotexts):
        image.info["parameters"] = text  # the gallery writes PNG text chunks from image.info
    images = list(result.images)
    info = GalleryInfo(list(result.infotexts), list(result.seeds), list(result.subseeds))
    if result.grid is not None:
        result.grid.info["parameters"] = result.first_infotext
        images.insert(0, result.grid)
        info.infotexts.insert(0, result.first_infotext)
        info.seeds.insert(0, result.seeds[0] if result.seeds else -1)
        info.subseeds.insert(0, result.subseeds[0] if result.subseeds else -1)
    maps = [image for image in result.detected_maps if image is not None]  # ControlNet units' maps last (issue 6)
    images += maps
    info.infotexts += [""] * len(maps)  # a map has no parameters of its own (nothing to paste or send)
    info.seeds += [-1] * len(maps)
    info.subseeds += [-1] * len(maps)
    return images, info


def infotext_html(text: str, *, seconds: float | None = None, notes: list[str] | None = None) -> str:
    """The infotext below the gallery: prompt lines, then the parameters, then time taken and notes."""
    parts = [f'<p style="white-space:pre-wrap;word-break:break-word">{html.escape(text)}</p>'] if text else []
    if seconds is not None:
        parts.append(f"<p><small>Time taken: {seconds:.2f} s</small></p>")
    for note in notes or ():
        parts.append(f'<p style="color:#b45309"><small>{html.escape(note)}</small></p>')
    return "".join(parts)


def error_html(message: str) -> str:
    return f'<p style="color:#dc2626;white-space:pre-wrap"><b>Error:</b> {html.escape(message)}</p>'
