"""The concrete contexts behind modules.extensions.api: the app as scripts see it (AppView), a selectable script's
run as one Job (ScriptJob, so the UI and the API follow it like any job), and the ScriptContext it hands the script.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.engine.images import make_grid
from modules.engine.request import GenerationRequest, RequestError
from modules.engine.result import GenerationResult
from modules.engine.samplers import SAMPLERS, SCHEDULES
from modules.extensions.api import AppView, Script, ScriptContext
from modules.extensions.grids import labelled_grid
from modules.jobs import Job, JobFailed, JobState, ProgressSnapshot
from modules.models.registry import UnknownModelError
from modules.models.upscalers import hires_upscaler_choices
from modules.processing import output_folder
from modules.settings import Settings

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)


class LiveAppView(AppView):
    """AppView over the running App (always the current settings and model lists)."""

    def __init__(self, app: App) -> None:
        self._app = app

    @property
    def settings(self) -> Settings:
        return self._app.settings

    def setting(self, key: str) -> Any:
        return self._app.settings.value(key)

    def checkpoint_titles(self) -> list[str]:
        return [entry.title for entry in self._app.models.checkpoints]

    def find_checkpoint(self, name: str) -> str:
        try:
            return self._app.models.find_checkpoint(name).title
        except UnknownModelError as error:
            raise RequestError(str(error)) from None

    def vae_names(self) -> list[str]:
        return self._app.models.vae_choices()

    def sampler_names(self) -> list[str]:
        return [sampler.name for sampler in SAMPLERS]

    def scheduler_names(self) -> list[str]:
        return [schedule.label for schedule in SCHEDULES]

    def upscaler_names(self) -> list[str]:
        return hires_upscaler_choices(self._app.upscalers)


def empty_result(request: GenerationRequest, *, interrupted: bool) -> GenerationResult:
    return GenerationResult(request=request, images=[], infotexts=[], seeds=[], subseeds=[], prompts=[],
                            negative_prompts=[], interrupted=interrupted)


class ScriptJob(Job):
    """A selectable script running on its own thread, seen as one Job: `wait()` returns the script's result and
    `snapshot()` shows the job it is running now, whose progress already spans all the script's jobs."""

    def __init__(self, app: App, script: Script, request: GenerationRequest, args: Any, tab: str,
                 task_id: str | None = None, *, on_error: Callable[[Script, Exception], None] | None = None) -> None:
        super().__init__(request, task_id)
        self.script = script
        self._on_error = on_error
        self.context = ScriptRunContext(app, self, tab)
        self._args = args
        self._current: Job | None = None

    def start(self) -> ScriptJob:
        self.state = JobState.RUNNING
        self.started = self.created
        threading.Thread(target=self._run, name=f"script-{self.script.name}", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            result = self.script.run(self.context, self.request, self._args)
            if not isinstance(result, GenerationResult):
                raise TypeError(f"script {self.script.title!r} returned {type(result).__name__}, "
                                "not a GenerationResult")
            self._finish(JobState.DONE, result)
        except Exception as error:  # the script's failure is this job's failure, never the app's
            log.exception("script %r failed", self.script.title)
            if self._on_error is not None and not isinstance(error, JobFailed):  # a failed job: not the script's fault
                self._on_error(self.script, error)
            self._finish(JobState.FAILED, error=f"{type(error).__name__}: {error}")

    def follow(self, job: Job) -> None:
        self._current = job

    def interrupt(self) -> None:
        super().interrupt()
        current = self._current
        if current is not None:
            current.interrupt()

    def skip(self) -> None:
        current = self._current
        if current is not None:
            current.skip()

    def snapshot(self) -> ProgressSnapshot:
        current = self._current
        if current is not None and not self.done and current.state is not JobState.QUEUED:
            return current.snapshot()
        return super().snapshot()


class ScriptRunContext(ScriptContext):
    def __init__(self, app: App, job: ScriptJob, tab: str) -> None:
        self._app = app
        self._job = job
        self.tab = tab
        self.app = LiveAppView(app)
        self._job_count = 1
        self._submitted = 0

    def run(self, request: GenerationRequest) -> GenerationResult:
        if self.interrupted():
            return empty_result(request, interrupted=True)
        index = self._submitted
        self._submitted += 1
        job = self._app.submit(request, series=(index, max(self._job_count, index + 1)))
        self._job.follow(job)
        result = job.wait()  # JobFailed propagates: the script fails with the job's message
        if result is None or result.interrupted:  # Interrupt stopped it, or dropped it from the queue
            self._job.interrupt()
        return result if result is not None else empty_result(request, interrupted=True)

    def set_job_count(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"job count must be a positive integer, got {count!r}")
        self._job_count = count

    def interrupted(self) -> bool:
        return self._job.interrupted()

    def save_image(self, image: Image.Image, infotext: str, *, grid: bool = False, seed: int | None = None,
                   suffix: str = "") -> Path | None:
        app, request, settings = self._app, self._job.request, self._app.settings
        wanted = (request.save_grid and settings.grid_save) if grid else (request.save_images and settings.samples_save)
        if not wanted:
            return None
        path = app.saver.save_image(image, output_folder(app, request, grid=grid), seed=seed, infotext=infotext,
                                    fmt=settings.samples_format, basename="grid" if grid else "", suffix=suffix,
                                    pnginfo_enabled=settings.enable_pnginfo)
        app.extensions.image_saved(path, infotext)
        return path

    def make_grid(self, images: Sequence[Image.Image], *, rows: int | None = None,
                  column_labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None) -> Image.Image:
        if column_labels is None and row_labels is None:
            return make_grid(images, rows)
        return labelled_grid(images, rows=rows, column_labels=column_labels, row_labels=row_labels)
